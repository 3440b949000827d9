"""EPNAS studies: the search trajectory, the constrained front and the best network, from run folders.

Paper: "EPNAS: Efficient Progressive Neural Architecture Search" (shared/seeds/004).  Reads
run-folder files only (``config.json``, ``summary.json``, ``arch.json`` of the EPNAS trials; each
nnictl trial's ``$NNI_OUTPUT_DIR`` is one):

* ``trials.csv`` - one row per trial: ``trial, episode, step, branch, parent, reward, accuracy,
  params, flops, intensity, layers, feasible`` (``feasible``: no constraint violated, i.e. the
  reward equals the accuracy), plus the constraints the trial was scored against;
* ``episodes.csv`` - per episode: trials, mean / max reward, best accuracy, feasible fraction
  (the paper's Fig. 4 is accuracy against search time; here against episodes);
* ``search.png`` - (a) reward of every trial by trial number, coloured by episode, with the best
  so far; (b) accuracy against params, feasible trials filled, the params bounds dashed; (c)
  accuracy against compute intensity (FLOPs/byte), the intensity bounds dashed;
* ``best_arch.json`` - the best-reward trial's architecture and figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .output import _atomic, save_csv, save_figure
from .plots import panel_grid

__all__ = ["METHOD", "trials_table", "episodes_table", "plot_search", "report_study"]

METHOD = "epnas"
_COLUMNS = ("trial", "episode", "step", "branch", "parent", "reward", "accuracy", "params", "flops", "intensity",
            "layers")
_BOUNDS = ("params_min", "params_max", "flops_min", "flops_max", "intensity_min", "intensity_max")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def trials_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per EPNAS trial among ``run_dirs`` (others and unfinished trials are skipped)."""
    rows = []
    for d in run_dirs:
        d = Path(d)
        config, summary = _read_json(d / "config.json"), _read_json(d / "summary.json")
        if config.get("method", summary.get("method")) != METHOD or "reward" not in summary:
            continue
        cfg = config.get("config", {})
        row = {k: summary.get(k, np.nan) for k in _COLUMNS}
        row.update({k: cfg.get(k) for k in _BOUNDS})
        row["space"] = cfg.get("space")
        row["run_dir"] = str(d)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    t["feasible"] = np.isclose(t["reward"], t["accuracy"], rtol=0, atol=1e-12)
    return t.sort_values(["trial", "run_dir"]).reset_index(drop=True)


def episodes_table(t: pd.DataFrame) -> pd.DataFrame:
    g = t.groupby("episode")
    return pd.DataFrame({
        "trials": g.size(), "mean_reward": g["reward"].mean(), "max_reward": g["reward"].max(),
        "best_accuracy": g["accuracy"].max(), "feasible_fraction": g["feasible"].mean(),
    }).reset_index()


def _bounds(ax, t: pd.DataFrame, name: str, vertical: bool = True) -> None:
    for key in (f"{name}_min", f"{name}_max"):
        values = t[key].dropna().unique() if key in t else []
        for v in values:
            (ax.axvline if vertical else ax.axhline)(float(v), color="k", ls="--", lw=0.8)


def plot_search(t: pd.DataFrame):
    fig, axes = panel_grid(1, 3, panel=(4.0, 3.0), wspace=0.8, top=0.6)
    a, b, c = axes[0]
    sc = a.scatter(t["trial"], t["reward"], c=t["episode"], cmap="viridis", s=14)
    order = t.sort_values("trial")
    a.plot(order["trial"], order["reward"].cummax(), color="crimson", lw=1.2, label="best so far")
    a.set(xlabel="trial", ylabel="reward", title="(a) search trajectory")
    fig.colorbar(sc, ax=a, label="episode")
    a.legend(fontsize="small")
    for ax, col, name, xlabel, title in ((b, "params", "params", "params", "(b) accuracy vs size"),
                                         (c, "intensity", "intensity", "compute intensity (FLOPs/byte)",
                                          "(c) accuracy vs intensity")):
        feas = t[t["feasible"]]
        infeas = t[~t["feasible"]]
        ax.scatter(infeas[col], infeas["accuracy"], facecolors="none", edgecolors="grey", s=14, label="violates")
        ax.scatter(feas[col], feas["accuracy"], color="tab:blue", s=14, label="feasible")
        _bounds(ax, t, name)
        if col == "params" and (t["params"] > 0).all():
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel="accuracy", title=title)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    a.grid(alpha=0.3)
    return fig


def report_study(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """``trials.csv``, ``episodes.csv``, ``search.png`` and ``best_arch.json`` over the EPNAS trials."""
    out = Path(out_dir)
    t = trials_table(run_dirs)
    if t.empty:
        return []
    files = [save_csv(t, out / "trials.csv"), save_csv(episodes_table(t), out / "episodes.csv"),
             save_figure(plot_search(t), out / "search.png")]
    best = t.loc[t["reward"].idxmax()]
    arch = _read_json(Path(best["run_dir"]) / "arch.json").get("arch")
    record = {k: (None if pd.isna(best[k]) else best[k].item() if hasattr(best[k], "item") else best[k])
              for k in (*_COLUMNS, "feasible", "run_dir")}
    text = json.dumps({**record, "arch": arch}, indent=2)
    return files + [_atomic(out / "best_arch.json", lambda tmp: Path(tmp).write_text(text))]
