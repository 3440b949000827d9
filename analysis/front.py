"""One accuracy-vs-cost front across methods: every finished run of any method, one panel row per
data set, three cost axes (FLOPs, parameters, onnxruntime latency), the Pareto points marked.

Compact architecture search is judged on a front, not a single number (the survey, seeds/000:
accuracy against FLOPs and parameters at a target; EPNAS, seeds/004: against latency-like
constraints).  Reads ``summary.json`` only (via :class:`analysis.io.Run`):

* ``front.csv`` - one row per run that measured an accuracy: ``run, method, label, dataset,
  accuracy, accuracy_kind, flops, params, ort_latency_ms, pareto_flops, pareto_params,
  pareto_latency, path``.  ``label`` is what gets one marker: the method, and for ``survey`` trials
  the row's variant (``survey/morphnet``).  ``accuracy``: the test top-1 (``top1``; EPNAS trials:
  ``test_acc``), or for a run that reports no test accuracy its validation accuracy
  (``accuracy_kind: val``).
  Published numbers (the survey's Generative Synthesis row, ``measured: 0``) are no measurement of
  this data set and are left out.  ``pareto_*``: no other run of the same data set has at most that
  cost and a higher accuracy.
* ``front.png`` - accuracy against each cost (log axes where the costs span decades), one marker
  per label, Pareto points ringed and joined by the front's staircase; data sets are never mixed in
  one panel.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .io import Run, _finite
from .plots import panel_grid

__all__ = ["AXES", "front_table", "pareto_front", "plot_front"]

#: (column, axis label, Pareto flag column) of the three cost panels.
AXES = (("flops", "FLOPs per sample (2 x MAC)", "pareto_flops"),
        ("params", "parameters", "pareto_params"),
        ("ort_latency_ms", "onnxruntime latency (ms, CPU, batch 1)", "pareto_latency"))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8")


def pareto_front(points: pd.DataFrame, x: str = "connections", y: str = "test_acc") -> pd.DataFrame:
    """Non-dominated points: no other point has fewer (or equal) ``x`` and higher ``y``."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    best, keep = -math.inf, []
    for i, row in pts.iterrows():
        if row[y] > best:
            keep.append(i)
            best = row[y]
    return pts.loc[keep]


def _label(run: Run) -> str:
    variant = run.summary.get("variant")
    if run.method == "survey" and variant:
        return f"survey/{variant}"
    return run.method


def front_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The ``front.csv`` table (see the module docstring) over ``runs``."""
    rows = []
    for run in runs:
        s = run.summary
        if not s or s.get("measured", 1) == 0 or s.get("source") == "published":
            continue
        acc, kind = _finite(s.get("top1", s.get("test_acc"))), "test"
        if acc is None and _finite(s.get("accuracy")) is not None:
            acc, kind = _finite(s.get("accuracy")), "val"
        if acc is None:
            continue
        latency = _finite(s.get("ort_latency_ms"))
        rows.append({"run": run.name, "method": run.method, "label": _label(run), "dataset": run.dataset or "-",
                     "accuracy": acc, "accuracy_kind": kind, "flops": _finite(s.get("flops")),
                     "params": _finite(s.get("params")), "ort_latency_ms": latency if latency else None,
                     "path": str(run.path)})
    cols = ["run", "method", "label", "dataset", "accuracy", "accuracy_kind", "flops", "params", "ort_latency_ms",
            *(flag for _, _, flag in AXES), "path"]
    if not rows:
        return pd.DataFrame(columns=cols)
    t = pd.DataFrame(rows)
    for col in ("flops", "params", "ort_latency_ms"):
        t[col] = pd.to_numeric(t[col], errors="coerce")
    for col, _, flag in AXES:
        t[flag] = False
        for _, g in t.groupby("dataset"):
            t.loc[pareto_front(g, x=col, y="accuracy").index, flag] = True
    return t[cols].sort_values(["dataset", "label", "run"], kind="stable").reset_index(drop=True)


def plot_front(t: pd.DataFrame) -> Figure:
    """Accuracy (%) against FLOPs, parameters and onnxruntime latency; one row per data set."""
    datasets = sorted(t["dataset"].unique()) or ["-"]
    labels = sorted(t["label"].unique())
    style = {lab: (MARKERS[i % len(MARKERS)], f"C{i % 10}") for i, lab in enumerate(labels)}
    fig, axes = panel_grid(len(datasets), len(AXES), panel=(4.0, 3.0), top=0.75, right=2.6, wspace=0.7,
                           hspace=0.9)
    for r, ds in enumerate(datasets):
        d = t[t["dataset"] == ds]
        for c, (col, xlabel, flag) in enumerate(AXES):
            ax = axes[r][c]
            pts = d.dropna(subset=[col])
            for lab, g in pts.groupby("label"):
                m, colour = style[lab]
                ax.scatter(g[col], 100 * g["accuracy"], marker=m, color=colour, s=36, zorder=3, alpha=0.85)
            front = pts[pts[flag]].sort_values(col)
            if len(front):
                ax.scatter(front[col], 100 * front["accuracy"], s=130, facecolors="none", edgecolors="k",
                           linewidths=1.2, zorder=4)
                ax.step(front[col], 100 * front["accuracy"], where="post", color="k", lw=0.9, alpha=0.6, zorder=2)
            positive = pts[col][pts[col] > 0]
            if len(positive) > 1 and positive.max() / positive.min() > 50 and (pts[col] > 0).all():
                ax.set_xscale("log")
            if pts.empty:
                ax.text(0.5, 0.5, f"no {col}", ha="center", va="center", transform=ax.transAxes, color="0.4")
            kinds = sorted(set(d["accuracy_kind"]))
            ax.set(xlabel=xlabel, ylabel="accuracy (%)" + ("" if kinds == ["test"] else f" ({'/'.join(kinds)})"))
            ax.set_title(f"{ds}: accuracy vs {col.split('_')[0] if col != 'ort_latency_ms' else 'latency'}",
                         fontsize=10)
            ax.grid(alpha=0.3)
            ax.margins(x=0.08, y=0.12)
    handles = [Line2D([], [], marker=style[lab][0], color=style[lab][1], ls="", label=lab) for lab in labels]
    handles.append(Line2D([], [], marker="o", mfc="none", mec="k", ls="-", color="k", lw=0.9, label="Pareto front"))
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    n = len(t)
    fig.suptitle(f"Accuracy against cost, {n} run{'s' if n != 1 else ''} of {len(labels)} method(s)",
                 y=1 - 0.1 / fig.get_figheight(), va="top")
    return fig
