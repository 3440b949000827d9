"""Growth runs (structured continuous sparsification): the paper's growth pictures and Table 1.

Paper: "Growing Efficient Deep Networks by Structured Continuous Sparsification"
(shared/seeds/001).  Reads run-folder files only (``metrics.csv``, ``structure.csv``,
``arch.json``, ``summary.json``, ``config.json``):

* ``growth.png`` - (a) active-channel ratio per stage over epochs (Figs. 8-10: fraction of the
  stage's channel indicators with ``s > 0``, counting only channels of attached units, since
  layer indicators take precedence); (b) active units (layer count) and validation accuracy over
  epochs (Fig. 6); (c) mean temperature per layer (channel group) at four points of the run
  (Fig. 12); (d) training FLOPs of every epoch, growth against the full seed network (Fig. 1c).
* ``widths.png`` - the final per-layer widths (kept filters against the maximum) as bars.
* ``table1.csv`` (study) - a table like the paper's Table 1: val/test accuracy, params (and %
  of the full seed network), FLOPs %, train-cost savings (full network's training FLOPs over
  the FLOPs growth really spent), per run; ``budgets.png`` - accuracy and savings per budget.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .output import save_csv, save_figure
from .plots import panel_grid

__all__ = ["METHOD", "load_growth_run", "stage_channel_ratio", "plot_growth", "plot_widths", "table1",
           "report_run", "report_study"]

METHOD = "growth"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def load_growth_run(run_dir: str | Path) -> dict:
    """The files of one growth run folder as pandas/dicts (missing files: empty)."""
    p = Path(run_dir)
    metrics = pd.read_csv(p / "metrics.csv") if (p / "metrics.csv").exists() else pd.DataFrame()
    structure = pd.read_csv(p / "structure.csv") if (p / "structure.csv").exists() else pd.DataFrame()
    cfg = _read_json(p / "config.json")
    return {"path": p, "name": p.name, "metrics": metrics, "structure": structure, "arch": _read_json(p / "arch.json"),
            "summary": _read_json(p / "summary.json"), "config": cfg.get("config", {}), "method": cfg.get("method")}


def _title(run: dict) -> str:
    c = run["config"]
    return f"{run['name']}: {c.get('family', '?')}, budget {c.get('budget', '?')} ({c.get('budget_type', 'params')}), " \
           f"{c.get('dataset', '?')}, seed {c.get('seed', '?')}"


def stage_channel_ratio(structure: pd.DataFrame) -> pd.DataFrame:
    """epoch x stage table of the active-channel ratio (channels of detached units count as off)."""
    if structure.empty:
        return pd.DataFrame()
    ch = structure[structure["kind"] == "channel"].copy()
    units = structure[structure["kind"] == "unit"][["epoch", "unit", "active"]].rename(columns={"active": "unit_on"})
    ch = ch.merge(units, on=["epoch", "unit"], how="left")
    ch["unit_on"] = ch["unit_on"].fillna(1)
    # the stage groups (shared by tied residual filters) live as long as the stage does
    ch.loc[ch["group"].astype(str).str.startswith(("stage", "stem")), "unit_on"] = 1
    ch["on"] = ch["active"] * ch["unit_on"]
    return ch.pivot_table(index="epoch", columns="stage", values="on", aggfunc="mean").sort_index()


def _grow_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    if metrics.empty or "phase" not in metrics:
        return metrics
    return metrics[metrics["phase"] == "grow"]


def plot_growth(run: dict):
    fig, axes = panel_grid(2, 2, panel=(4.6, 2.9), top=0.75, bottom=0.6, right=0.8, wspace=1.5, hspace=0.85)
    (a, b), (c, d) = axes
    ratio = stage_channel_ratio(run["structure"])
    if not ratio.empty:
        for s in ratio.columns:
            a.plot(ratio.index, 100 * ratio[s], marker="o" if len(ratio) <= 30 else None, ms=3, label=f"stage {s}")
        a.legend(fontsize="small")
    a.set(title="(a) active channels per stage", xlabel="epoch", ylabel="active channels (%)", ylim=(0, 105))
    m = _grow_rows(run["metrics"])
    if not m.empty:
        unit_cols = [col for col in m.columns if col.startswith("units_stage")]
        layers = m[unit_cols].sum(axis=1)
        b.step(m["epoch"], layers, where="post", color="tab:blue", label="active units")
        b.set_ylabel("active units (layers)", color="tab:blue")
        b2 = b.twinx()
        b2.plot(m["epoch"], 100 * m["val_acc"], color="tab:red", marker="o" if len(m) <= 30 else None, ms=3)
        b2.set_ylabel("val accuracy (%)", color="tab:red")
        d.plot(m["epoch"], m["train_flops"] / 1e9, marker="o" if len(m) <= 30 else None, ms=3, label="growth")
        d.plot(m["epoch"], m["full_train_flops"] / 1e9, ls="--", color="grey", label="full network")
        total = m["train_flops"].sum() / max(m["full_train_flops"].sum(), 1)
        d.set_title(f"(d) training FLOPs per epoch (total {100 * total:.0f}% of full)")
        d.legend(fontsize="small")
    b.set(title="(b) layer count and val accuracy", xlabel="epoch")
    d.set(xlabel="epoch", ylabel="training GFLOPs")
    st = run["structure"]
    if not st.empty:
        ch = st[st["kind"] == "channel"]
        order = list(dict.fromkeys(ch["group"]))
        epochs = sorted(ch["epoch"].unique())
        picks = sorted({epochs[int(round(q * (len(epochs) - 1)))] for q in (0.25, 0.5, 0.75, 1.0)})
        for e in picks:
            mt = ch[ch["epoch"] == e].groupby("group")["temperature"].mean().reindex(order)
            c.plot(range(len(order)), mt.values, marker=".", label=f"epoch {e}")
        c.set_yscale("log")
        c.legend(fontsize="small")
        c.set_xlabel(f"layer (channel group, input to output; {len(order)})")
    c.set(title="(c) mean temperature per layer", ylabel="mean beta")
    for ax in (a, b, c, d):
        ax.grid(alpha=0.3)
    fig.suptitle(_title(run), y=1 - 0.1 / fig.get_figheight(), va="top")
    return fig


def plot_widths(run: dict):
    layers = run["arch"].get("layers", [])
    n = max(1, len(layers))
    fig, axes = panel_grid(1, 1, panel=(max(4.0, 0.22 * n), 3.0), bottom=1.3, top=0.6)
    ax = axes[0][0]
    x = np.arange(len(layers))
    ax.bar(x, [lyr["max_out"] for lyr in layers], color="lightgrey", label="maximum")
    ax.bar(x, [lyr["out"] for lyr in layers], color="tab:blue", label="grown")
    ax.set_xticks(x, [lyr["conv"] for lyr in layers], rotation=90, fontsize=7)
    ax.set_ylabel("filters")
    units = run["arch"].get("stage_units", [])
    ax.set_title(f"final widths per layer; units per stage {'-'.join(map(str, units))}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return fig


def report_run(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """``growth.png``, ``widths.png`` and ``stage_channels.csv`` for one growth run."""
    run = load_growth_run(run_dir)
    out = Path(out_dir)
    files = [save_figure(plot_growth(run), out / "growth.png")]
    if run["arch"].get("layers"):
        files.append(save_figure(plot_widths(run), out / "widths.png"))
    ratio = stage_channel_ratio(run["structure"])
    if not ratio.empty:
        files.append(save_csv(ratio.rename(columns=lambda s: f"stage{s}").reset_index(), out / "stage_channels.csv"))
    return files


def table1(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Paper Table 1 per growth run: accuracy, params (% of full), FLOPs %, train-cost savings."""
    rows = []
    for d in run_dirs:
        run = load_growth_run(d)
        s, c = run["summary"], run["config"]
        if run["method"] not in (None, METHOD) or not s:
            continue
        m = _grow_rows(run["metrics"])
        rows.append({
            "run": run["name"], "family": c.get("family"), "budget": c.get("budget"),
            "budget_type": c.get("budget_type"), "seed": c.get("seed"),
            "val_acc_%": 100 * s.get("grown_val_acc", float("nan")), "top1_%": 100 * s.get("top1", float("nan")),
            "params_M": s.get("params", float("nan")) / 1e6, "params_%": 100 * s.get("params_ratio", float("nan")),
            "flops_%": 100 * s.get("flops_ratio", float("nan")),
            "train_cost_savings_x": s.get("train_cost_savings", float("nan")),
            "units_per_stage": "-".join(str(s[k]) for k in sorted(s) if k.startswith("units_stage")),
            "epochs": int(m["epoch"].max() + 1) if not m.empty else 0,
        })
    return pd.DataFrame(rows).sort_values(["family", "budget", "seed"]).reset_index(drop=True) if rows else \
        pd.DataFrame()


def plot_budgets(t: pd.DataFrame):
    fig, axes = panel_grid(1, 2, panel=(4.2, 3.0), wspace=0.9, top=0.6)
    a, b = axes[0]
    for fam, g in t.groupby("family"):
        g = g.groupby("params_%", as_index=False)[["top1_%", "train_cost_savings_x"]].mean()
        a.plot(g["params_%"], g["top1_%"], marker="o", label=fam)
        b.plot(g["params_%"], g["train_cost_savings_x"], marker="o", label=fam)
    a.set(xlabel="params (% of full seed network)", ylabel="test top-1 (%)", title="accuracy vs size")
    b.set(xlabel="params (% of full seed network)", ylabel="train-cost savings (x)", title="training savings")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def report_study(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """``table1.csv`` and ``budgets.png`` over the growth runs among ``run_dirs``."""
    out = Path(out_dir)
    t = table1(run_dirs)
    if t.empty:
        return []
    return [save_csv(t, out / "table1.csv"), save_figure(plot_budgets(t), out / "budgets.png")]
