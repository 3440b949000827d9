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

__all__ = ["METHOD", "datasets", "survey_table", "plot_survey", "report_study"]

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
        if s.get("source") == "published" and "published_top1" in s:
            # published numbers live under their own keys (the trial measured nothing); the table
            # shows them in the row marked published, judged against the survey's own target
            dev = s["published_target_deviation"]
            row.update(top1=s["published_top1"], params=s["published_params"], flops=s["published_flops"],
                       target_deviation=dev, reached=int(dev <= 0.02),
                       target_flops=s["published_flops"] / (1 + dev) if dev > -1 else None)
        row.update(variant=s.get("variant", cfg.get("variant")), group=s.get("group"), source=s.get("source"),
                   dataset=s.get("dataset"), seed=cfg.get("seed"), notes=s.get("notes", ""),
                   published_setting=s.get("published_setting", ""), run=p.name)
        if row["comparable"] is None:
            row["comparable"] = 1
        rows.append(row)
    return pd.DataFrame(rows)


def survey_table(run_dirs: Sequence[str | Path], dataset: str | None = None) -> pd.DataFrame:
    """The survey's Table 1 over the ``survey`` runs among ``run_dirs`` (empty if none); a study
    mixing data sets must name one (``datasets(run_dirs)`` lists them)."""
    df = _rows(run_dirs)
    if df.empty:
        return df
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    elif df["dataset"].nunique() > 1:
        raise ValueError(f"survey runs of several data sets ({', '.join(sorted(df['dataset'].unique()))}): "
                         "pass dataset=")
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
    """Top-1 against FLOPs with the baseline and the target marked: (a) every row (log FLOPs when
    they span decades), (b) the region around the target on linear axes.  One colour per method;
    marker shape = group (star baseline, squares the survey's baselines, circles ours); hollow =
    published numbers."""
    fig, axes = panel_grid(1, 2, panel=(5.0, 4.0), right=2.3, wspace=0.8)
    shown = t[t["comparable"].fillna(1) > 0].reset_index(drop=True)
    target = t.loc[t["source"] != "published", "target_M"].dropna()
    target = float(target.iloc[0]) if not target.empty else None
    base = shown[shown["variant"] == "baseline"]
    shapes = {"baseline": ("*", 230), "survey": ("s", 70), "ours": ("o", 80)}
    colors = {v: f"C{i % 10}" for i, v in enumerate(ORDER)}
    for k, ax in enumerate(axes[0]):
        if target is not None:
            ax.axvline(target, color="0.3", ls="--", lw=1, label="FLOPs target" if k == 0 else None)
        for _, r in shown.iterrows():
            m, size = shapes.get(r["group"], ("^", 70))
            c = colors.get(r["variant"], "0.5")
            pub = r["source"] == "published"
            ax.scatter([r["flops_M"]], [r["top1_%"]], marker=m, s=size, zorder=3, edgecolors=c,
                       facecolors="none" if pub else c, label=(r["method"] + (" (published)" if pub else "")) if k == 0 else None)
            if k == 1 and "top1_std" in r and r["n"] > 1 and pd.notna(r["top1_std"]):
                ax.errorbar([r["flops_M"]], [r["top1_%"]], yerr=[100 * r["top1_std"]], color=c, lw=1, capsize=3,
                            zorder=2)
        ax.grid(alpha=0.3)
        ax.set_xlabel("FLOPs per sample (M, 2 x MAC)")
    a, b = axes[0]
    if (shown["flops_M"] > 0).all() and shown["flops_M"].max() / max(shown["flops_M"].min(), 1e-12) > 50:
        a.set_xscale("log")
    a.set(ylabel="top-1 (%)", title="(a) every method")
    # (b) around the target: FLOPs up to the baseline, accuracy of the rows in that range
    hi = float(base["flops_M"].iloc[0]) * 1.1 if not base.empty else float(shown["flops_M"].max()) * 1.1
    near = shown[(shown["flops_M"] <= hi) & (shown["flops_M"] >= (target or 0) * 0.05)]
    if not near.empty:
        top = near["top1_%"]
        ref = float(base["top1_%"].iloc[0]) if not base.empty else float(top.max())
        lo_y = max(float(top.min()), ref - 15.0)
        b.set_ylim(lo_y - 1.0, max(float(top.max()), ref) + 1.0)
    b.set_xlim(0, hi)
    clipped = shown[(shown["flops_M"] <= hi) & (shown["top1_%"] < b.get_ylim()[0])]
    for _, r in clipped.iterrows():
        b.annotate(f"{r['method']}: {r['top1_%']:.1f} % (below)", (r["flops_M"], b.get_ylim()[0]),
                   xytext=(0, 8), textcoords="offset points", fontsize=7, ha="center", color="0.3",
                   arrowprops=dict(arrowstyle="->", color="0.5"))
    b.set(title="(b) around the target (mean +- std over seeds)")
    ds = ", ".join(sorted(set(t["dataset"].dropna().astype(str))))
    fig.suptitle(f"Compact search at one FLOPs target ({ds})")
    fig.legend(loc="upper right", fontsize=8, frameon=False)
    return fig


def _text(t: pd.DataFrame) -> str:
    shown = t[["method", "source", "n", "flops_M", "params", "top1_%", "from_target_%", "reached", "search_time_s",
               "total_time_s"]].copy()
    measured = t.loc[t["source"] != "published", "target_M"].dropna()
    head = f"Survey table (FLOPs target = {float(measured.iloc[0]):.3f} M):\n" if not measured.empty else "Survey table:\n"
    return head + format_table(
        shown, {"flops_M": ".3f", "params": ".0f", "top1_%": ".2f", "from_target_%": "+.1f", "reached": ".0f",
                "search_time_s": ".0f", "total_time_s": ".0f"})


def datasets(run_dirs: Sequence[str | Path]) -> list[str]:
    df = _rows(run_dirs)
    return [] if df.empty else sorted(df["dataset"].dropna().unique())


def report_study(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Output:
    """``survey_table.csv`` + ``survey.png``; one pair per data set (``_<dataset>`` suffix) when the
    folder holds runs of several (each has its own baseline and target)."""
    out = Path(out_dir)
    names = datasets(run_dirs)
    res = Output()
    for ds in names:
        t = survey_table(run_dirs, dataset=ds)
        suffix = "" if len(names) == 1 else f"_{ds}"
        res.tables[f"survey{suffix}"] = t
        res.text.append(_text(t) if len(names) == 1 else f"[{ds}] " + _text(t))
        res.files.append(save_csv(t, out / f"survey_table{suffix}.csv"))
        res.files.append(save_figure(plot_survey(t), out / f"survey{suffix}.png"))
    return res
