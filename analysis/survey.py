"""The compact-search survey's table and its accuracy-vs-FLOPs picture, from ``survey`` runs.

Paper: "State of Compact Architecture Search for Deep Neural Networks"
(shared/seeds/000), Table 1: per method FLOPs, #parameters and top-1 at a FLOPs target of one
third of the baseline, and how far each method landed from the target.  Reads run folders only
(``summary.json`` + ``config.json`` of trials of the ``survey`` method):

* ``survey_table.csv`` - one row per method (the mean over seeds when a method ran with several;
  ``n`` counts them): group (baseline / survey / ours), source (measured / published), FLOPs (M),
  params, top-1 %, distance from the target (% of the target; negative = below it), whether the
  target was reached, search and training time and training FLOPs (search + train cost);
* ``survey.png`` - top-1 against FLOPs: the baseline (star), the target (dashed line), the
  survey's baselines and our methods in two marker styles; published numbers of a different
  setting are left out of the plot (their row says so).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from .output import Output, format_table, save_csv, save_figure
from .plots import panel_grid

__all__ = ["METHOD", "survey_table", "plot_survey", "report_study"]

METHOD = "survey"
ORDER = ("baseline", "group_lasso", "morphnet", "variational_dropout", "gensynth", "growth", "proxyless", "epnas",
         "scann")
LABELS = {"baseline": "Baseline", "group_lasso": "Group Lasso", "morphnet": "MorphNet",
          "variational_dropout": "Variational Dropout", "gensynth": "Generative Synthesis",
          "growth": "Continuation growth", "proxyless": "ProxylessNAS (FLOPs term)", "epnas": "EPNAS (FLOPs bound)",
          "scann": "SCANN (MLP)"}
NUMERIC = ("top1", "flops", "params", "target_flops", "target_deviation", "reached", "search_time_s",
           "train_time_s", "total_time_s", "train_flops", "comparable")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _rows(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    rows = []
    for d in run_dirs:
        p = Path(d)
        s = _read(p / "summary.json")
        if not s or s.get("method") != METHOD:
            continue
        cfg = _read(p / "config.json").get("config", {})
        row = {k: s.get(k) for k in NUMERIC}
        row.update(variant=s.get("variant", cfg.get("variant")), group=s.get("group"), source=s.get("source"),
                   dataset=s.get("dataset"), seed=cfg.get("seed"), notes=s.get("notes", ""),
                   published_setting=s.get("published_setting", ""), run=p.name)
        if row["comparable"] is None:
            row["comparable"] = 1
        rows.append(row)
    return pd.DataFrame(rows)


def survey_table(run_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """The survey's Table 1 over the ``survey`` runs among ``run_dirs`` (empty if none)."""
    df = _rows(run_dirs)
    if df.empty:
        return df
    agg = {k: "mean" for k in NUMERIC if k in df}
    agg.update({k: "first" for k in ("group", "source", "dataset", "notes", "published_setting")})
    agg["run"] = "count"
    t = df.groupby("variant", sort=False).agg(agg).rename(columns={"run": "n"}).reset_index()
    t["top1_std"] = df.groupby("variant", sort=False)["top1"].std().reindex(t["variant"]).to_numpy()
    t["method"] = t["variant"].map(lambda v: LABELS.get(v, v))
    t["top1_%"] = 100 * t["top1"]
    t["flops_M"] = t["flops"] / 1e6
    t["target_M"] = t["target_flops"] / 1e6
    t["from_target_%"] = 100 * t["target_deviation"]
    t["order"] = t["variant"].map(lambda v: ORDER.index(v) if v in ORDER else len(ORDER))
    t = t.sort_values("order").drop(columns="order")
    cols = ["method", "variant", "group", "source", "n", "flops_M", "params", "top1_%", "top1_std", "target_M",
            "from_target_%", "reached", "search_time_s", "train_time_s", "total_time_s", "train_flops", "dataset",
            "comparable", "published_setting", "notes"]
    return t[cols].reset_index(drop=True)


def plot_survey(t: pd.DataFrame):
    """Top-1 against FLOPs with the baseline and the target marked."""
    fig, axes = panel_grid(1, 1, panel=(6.4, 4.4), right=2.0)
    ax = axes[0][0]
    shown = t[t["comparable"].fillna(1) > 0]
    target = t["target_M"].dropna()
    if not target.empty:
        ax.axvline(float(target.iloc[0]), color="0.4", ls="--", lw=1, label="FLOPs target")
    style = {"baseline": dict(marker="*", s=220, color="black"), "survey": dict(marker="s", s=60, color="tab:blue"),
             "ours": dict(marker="o", s=70, color="tab:red")}
    seen = set()
    for _, r in shown.iterrows():
        st = style.get(r["group"], dict(marker="^", s=60, color="tab:gray"))
        name = {"baseline": "baseline", "survey": "survey's baselines", "ours": "ours"}.get(r["group"], r["group"])
        pub = r["source"] == "published"
        ax.scatter([r["flops_M"]], [r["top1_%"]], label=None if name in seen else name,
                   facecolors="none" if pub else st["color"], edgecolors=st["color"], marker=st["marker"],
                   s=st["s"], zorder=3)
        seen.add(name)
        ax.annotate(r["method"] + (" (published)" if pub else ""), (r["flops_M"], r["top1_%"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    if (shown["flops_M"] > 0).all() and shown["flops_M"].max() / max(shown["flops_M"].min(), 1e-12) > 50:
        ax.set_xscale("log")
    ds = ", ".join(sorted(set(t["dataset"].dropna().astype(str))))
    ax.set(xlabel="FLOPs per sample (M, 2 x MAC)", ylabel="top-1 (%)",
           title=f"Compact search at one FLOPs target ({ds})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return fig


def _text(t: pd.DataFrame) -> str:
    shown = t[["method", "source", "n", "flops_M", "params", "top1_%", "from_target_%", "reached", "search_time_s",
               "total_time_s"]].copy()
    return "Survey table (FLOPs target = %.3f M):\n" % float(t["target_M"].dropna().iloc[0]) + format_table(
        shown, {"flops_M": ".3f", "params": ".0f", "top1_%": ".2f", "from_target_%": "+.1f", "reached": ".0f",
                "search_time_s": ".0f", "total_time_s": ".0f"})


def report_study(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Output:
    out = Path(out_dir)
    t = survey_table(run_dirs)
    if t.empty:
        return Output()
    res = Output(tables={"survey": t}, text=[_text(t)])
    res.files.append(save_csv(t, out / "survey_table.csv"))
    res.files.append(save_figure(plot_survey(t), out / "survey.png"))
    return res
