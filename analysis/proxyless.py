"""ProxylessNAS search-scope study: Fig. 3, per-block convergence and Table I.

Paper: "Search Space Adaptation for Differentiable Neural Architecture Search in Image
Classification" (shared/seeds/003).  Fig. 3 plots softmax(alpha) of the deepest and third
deepest search blocks over search epochs; we plot every block (one panel each, block numbers
counted from the deepest block as in the paper).  Table I lists params and top-1 per search
scope (baseline, s, m, l, f); we add FLOPs, search time, the search-exit epoch and the epoch
at which the architecture stopped changing, which the paper discusses but does not tabulate.

Convergence epoch of a block: the first per-epoch record from which the block's argmax
candidate never changes again.  Per-epoch records are the trajectory rows whose ``epoch`` is
a whole number (intra-epoch records have fractional epochs); where several record times share
one whole epoch the latest ``step`` is used.  An exact tie for the largest probability (e.g.
the uniform start, alpha = 0) has no argmax, so it never counts as the final choice.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .io import AnalysisError, Run
from .output import Output, format_table, save_csv, save_figure
from .plots import panel_grid, run_title

__all__ = [
    "SCOPE_ORDER",
    "argmax_by_epoch",
    "block_number",
    "block_title",
    "candidate_styles",
    "convergence",
    "epoch_records",
    "is_baseline",
    "plot_scopes",
    "plot_trajectories",
    "report_run",
    "report_study",
    "table1",
]

METHOD = "proxyless"
SCOPE_ORDER = ("s", "m", "l", "f")
BASELINE_SCOPES = frozenset({"none", "baseline"})
ACTIVATIONS = ("relu", "leakyrelu", "mish")
ACT_NAMES = {"relu": "ReLU", "leakyrelu": "LeakyReLU", "mish": "Mish"}
KERNEL_STYLES = ("-", "--", ":", "-.")
CHOICE_RE = re.compile(r"^k(\d+)_(.+)$")
TIE_TOL = 1e-9


# ---- blocks and candidates --------------------------------------------------------------
def block_number(label: str) -> int | None:
    """``block01`` -> 1 (1 = deepest searchable block); None for other label styles."""
    m = re.search(r"(\d+)$", str(label))
    return int(m.group(1)) if m else None


def block_title(label: str) -> str:
    n = block_number(label)
    if n is None:
        return str(label)
    return "block 1 (deepest)" if n == 1 else f"block {n}"


def _block_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: (block_number(s) is None, block_number(s) or 0, s))


def _parse_choice(choice: str) -> tuple[int, str] | None:
    m = CHOICE_RE.match(str(choice))
    return (int(m.group(1)), m.group(2)) if m else None


def choice_name(choice: str) -> str:
    """``k5_mish`` -> ``k5 Mish``."""
    p = _parse_choice(choice)
    return f"k{p[0]} {ACT_NAMES.get(p[1], p[1])}" if p else str(choice)


def candidate_styles(choices) -> dict[str, dict]:
    """Colour by activation, line style by kernel (k3 solid, k5 dashed), in legend order."""
    parsed = {c: _parse_choice(c) for c in set(choices)}
    kernels = sorted({p[0] for p in parsed.values() if p})
    acts = [a for a in ACTIVATIONS if any(p and p[1] == a for p in parsed.values())]
    acts += sorted({p[1] for p in parsed.values() if p and p[1] not in ACTIVATIONS})
    other = sorted(c for c, p in parsed.items() if p is None)
    styles: dict[str, dict] = {}
    for k_i, k in enumerate(kernels):
        for a_i, a in enumerate(acts):
            c = next((c for c, p in parsed.items() if p == (k, a)), None)
            if c is not None:
                styles[c] = {"color": f"C{a_i % 10}", "ls": KERNEL_STYLES[k_i % len(KERNEL_STYLES)],
                             "label": choice_name(c)}
    for i, c in enumerate(other):
        styles[c] = {"color": f"C{(len(acts) + i) % 10}", "ls": "-", "label": c}
    return styles


# ---- convergence --------------------------------------------------------------------------
def _trajectory(x: Run | pd.DataFrame) -> pd.DataFrame:
    traj = x.trajectory if isinstance(x, Run) else x
    if traj is None:
        raise AnalysisError(f"{x.path}: no trajectory.csv" if isinstance(x, Run) else "no trajectory")
    return traj


def epoch_records(traj: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch records: whole-number epochs, the latest ``step`` per epoch.  (When no
    record has a whole epoch, every record is used.)"""
    if traj.empty:
        return traj
    e = traj["epoch"].astype(float)
    whole = np.isclose(e, np.round(e), rtol=0, atol=1e-6)
    sel = traj.loc[whole].assign(epoch=np.round(e[whole])) if whole.any() else traj
    last = sel.groupby("epoch")["step"].transform("max")
    return sel.loc[sel["step"] == last].reset_index(drop=True)


def argmax_by_epoch(traj: pd.DataFrame) -> pd.DataFrame:
    """One row per (block, per-epoch record): ``label, epoch, choice, prob, margin``; ``choice``
    is None where the top probability is tied."""
    rec = epoch_records(traj)
    if rec.empty:
        return pd.DataFrame(columns=["label", "epoch", "choice", "prob", "margin"])
    wide = rec.pivot_table(index=["label", "epoch"], columns="choice", values="prob", aggfunc="last")
    wide = wide.fillna(-np.inf)
    vals = np.sort(wide.to_numpy(), axis=1)
    top = vals[:, -1]
    second = vals[:, -2] if vals.shape[1] > 1 else np.full_like(top, -np.inf)
    tied = (top - second) <= TIE_TOL
    choice = wide.idxmax(axis=1).astype(object)
    choice[tied] = None
    out = pd.DataFrame({"choice": choice, "prob": top,
                        "margin": np.where(np.isfinite(second), top - second, np.nan)}).reset_index()
    return out.sort_values(["label", "epoch"], kind="stable").reset_index(drop=True)


def _as_int_if_whole(s: pd.Series) -> pd.Series:
    v = pd.to_numeric(s, errors="coerce").astype(float)
    ok = v.dropna()
    if len(ok) and np.allclose(ok, np.round(ok)):
        return v.round().astype("Int64")
    return v


def convergence(x: Run | pd.DataFrame, arch: dict[str, str] | None = None) -> pd.DataFrame:
    """Per block: ``block, block_no, final_choice, final_prob, margin, convergence_epoch,
    n_switches, last_epoch`` (+ ``arch_choice`` from ``arch.json`` when known), ordered from
    the deepest block.  ``n_switches`` counts argmax changes between per-epoch records."""
    traj = _trajectory(x)
    if arch is None and isinstance(x, Run):
        arch = x.choices()
    am = argmax_by_epoch(traj)
    rows = []
    for label in _block_order(am["label"]):
        g = am[am["label"] == label]
        seq, epochs = list(g["choice"]), list(g["epoch"])
        final = seq[-1]
        conv = None
        if final is not None:
            i = len(seq) - 1
            while i > 0 and seq[i - 1] == final:
                i -= 1
            conv = epochs[i]
        row = {
            "block": label,
            "block_no": block_number(label),
            "final_choice": final,
            "final_prob": float(g["prob"].iloc[-1]),
            "margin": float(g["margin"].iloc[-1]),
            "convergence_epoch": conv,
            "n_switches": sum(a != b for a, b in zip(seq, seq[1:])),
            "last_epoch": epochs[-1],
        }
        if arch:
            row["arch_choice"] = arch.get(label)
        rows.append(row)
    cols = ["block", "block_no", "final_choice", "final_prob", "margin", "convergence_epoch",
            "n_switches", "last_epoch"] + (["arch_choice"] if arch else [])
    df = pd.DataFrame(rows, columns=cols)
    for c in ("convergence_epoch", "last_epoch", "block_no"):
        df[c] = _as_int_if_whole(df[c])
    return df


def max_convergence_epoch(conv: pd.DataFrame) -> float:
    """Epoch at which the whole architecture stopped changing (NaN if some block never
    settled on a unique argmax)."""
    c = conv["convergence_epoch"]
    if c.empty or c.isna().any():
        return math.nan
    return float(c.max())


# ---- Fig. 3 -------------------------------------------------------------------------------
def plot_trajectories(x: Run | pd.DataFrame, *, blocks: Sequence[str] | None = None, ncols: int = 4,
                      title: str | None = None) -> Figure:
    """softmax(alpha) per block over epochs (paper Fig. 3), one panel per block from the
    deepest, all candidates in each panel.  Dotted grey line: convergence epoch; red
    dash-dot: the search-exit epoch when the run exited early."""
    traj = _trajectory(x)
    if traj.empty:
        raise AnalysisError("empty trajectory")
    run = x if isinstance(x, Run) else None
    labels = _block_order(traj["label"]) if blocks is None else list(blocks)
    conv = convergence(traj).set_index("block")
    styles = candidate_styles(traj["choice"])
    n = len(labels)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    exit_epoch = run.exit_epoch if run is not None else None
    n_handles = len(styles) + 1 + (exit_epoch is not None)
    panel_w = {1: 5.2, 2: 4.2}.get(ncols, 3.4)  # wide enough for the title with few panels
    left, right, wspace = 0.75, 0.25, 0.2
    width = left + ncols * panel_w + (ncols - 1) * wspace + right
    legend_cols = max(1, min(n_handles, int(width // 1.55)))
    legend_rows = math.ceil(n_handles / legend_cols)
    fig, axes = panel_grid(nrows, ncols, panel=(panel_w, 2.2), left=left, right=right, wspace=wspace,
                           top=0.85, bottom=0.6 + 0.28 * legend_rows, hspace=0.55, sharex=True, sharey=True)
    axes = axes.ravel()
    by_label = dict(tuple(traj.groupby("label", sort=False)))
    for ax, label in zip(axes, labels):
        g = by_label.get(label, traj.iloc[:0])
        by_choice = dict(tuple(g.groupby("choice", sort=False)))
        n_cand = len(by_choice)
        for choice, st in styles.items():
            if choice in by_choice:
                r = by_choice[choice]
                ax.plot(r["epoch"].astype(float), r["prob"], color=st["color"], ls=st["ls"], lw=1.5)
        if n_cand:
            ax.axhline(1 / n_cand, color="0.75", lw=0.8, zorder=0)
        head = block_title(label)
        if label in conv.index:
            c = conv.loc[label]
            if pd.notna(c["convergence_epoch"]):
                ax.axvline(float(c["convergence_epoch"]), color="0.35", ls=":", lw=1.2)
            if c["final_choice"] is not None:
                head += f" \u2192 {choice_name(c['final_choice'])}"
        if exit_epoch is not None:
            ax.axvline(exit_epoch, color="tab:red", ls="-.", lw=1.2)
        ax.set_title(head, fontsize=10)
        ax.grid(alpha=0.25)
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[:n]):
        if i % ncols == 0:
            ax.set_ylabel("softmax(\u03b1)")
        if i + ncols >= n:  # bottom panel of its column
            ax.set_xlabel("search epoch")
            ax.tick_params(labelbottom=True)
    # zoom to the data (shared y): early in a search softmax(alpha) moves by a few 1e-3 around 1/N,
    # which a 0..1 axis would flatten; a floor on the span keeps noise from looking like a trend
    lo, hi = float(traj["prob"].min()), float(traj["prob"].max())
    span = max(hi - lo, 0.02)
    mid = (lo + hi) / 2
    axes[0].set_ylim(max(0.0, mid - 0.55 * span), min(1.0, mid + 0.55 * span))
    handles = [Line2D([], [], color=s["color"], ls=s["ls"], lw=1.8, label=s["label"]) for s in styles.values()]
    handles.append(Line2D([], [], color="0.35", ls=":", lw=1.2, label="convergence epoch"))
    if exit_epoch is not None:
        handles.append(Line2D([], [], color="tab:red", ls="-.", lw=1.2, label="search exit"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04 / fig.get_figheight()),
               frameon=False, ncol=legend_cols)
    if title is None:
        title = "Architecture parameters, softmax(\u03b1) per search block"
        if run is not None:
            title += f"\n{run_title(run)}"
    fig.suptitle(title, y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


# ---- Table I ------------------------------------------------------------------------------
def is_baseline(run: Run) -> bool:
    return run.method == "baseline" or (run.scope or "").lower() in BASELINE_SCOPES


def _scope_rank(scope: str) -> tuple[int, str]:
    if scope == "baseline":
        return (0, "")
    if scope in SCOPE_ORDER:
        return (1 + SCOPE_ORDER.index(scope), "")
    return (1 + len(SCOPE_ORDER), scope)


def table1_runs(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per finished (``summary.json`` written) proxyless or baseline run: the
    numbers Table I averages.  Unfinished runs are left out (they still get Fig. 3)."""
    rows = []
    for run in runs:
        if run.method not in (METHOD, "baseline") or not run.summary:
            continue
        conv_max = math.nan
        if run.trajectory is not None and not run.trajectory.empty:
            conv_max = max_convergence_epoch(convergence(run))
        rows.append({
            "dataset": run.dataset or "-",
            "scope": "baseline" if is_baseline(run) else (run.scope or "?"),
            "run": run.name,
            "seed": run.seed,
            "params": run.params,
            "flops": run.flops,
            "top1": run.top1,
            "search_time_s": run.search_time_s,
            "search_train_flops": run.summary.get("search_train_flops"),
            "search_cpu_time_s": run.summary.get("search_cpu_time_s"),
            "search_epochs": run.summary.get("search_epochs"),
            "exit_epoch": run.exit_epoch,
            "convergence_epoch": conv_max,
        })
    df = pd.DataFrame(rows, columns=["dataset", "scope", "run", "seed", "params", "flops", "top1",
                                     "search_time_s", "search_train_flops", "search_cpu_time_s", "search_epochs",
                                     "exit_epoch", "convergence_epoch"])
    for c in df.columns[4:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def table1(runs: Sequence[Run]) -> pd.DataFrame:
    """Paper Table I: one row per (dataset, scope), baseline first, then s, m, l, f.

    Columns: ``dataset, model, scope, n_runs, params_M`` (2 decimals, as the paper),
    ``flops_M, top1`` (%, mean over seeds), ``top1_std`` (blank for one seed),
    ``search_time_s`` (wall), ``search_gflops`` (counted training FLOPs of the search, G),
    ``search_cpu_s`` (process CPU seconds of the search), ``search_epochs, exit_epoch`` (mean over
    the runs that exited early; blank when none did), ``convergence_epoch`` (max over blocks, mean
    over seeds).  Wall time depends on what else ran on the machine (trials sharing cores take
    longer); counted FLOPs and CPU seconds do not.
    """
    per_run = table1_runs(runs)
    cols = ["dataset", "model", "scope", "n_runs", "params_M", "flops_M", "top1", "top1_std",
            "search_time_s", "search_gflops", "search_cpu_s", "search_epochs", "exit_epoch", "convergence_epoch"]
    if per_run.empty:
        return pd.DataFrame(columns=cols)
    g = per_run.groupby(["dataset", "scope"], sort=False)
    t = g.agg(n_runs=("run", "size"), params=("params", "mean"), flops=("flops", "mean"),
              top1=("top1", "mean"), top1_std=("top1", "std"), search_time_s=("search_time_s", "mean"),
              search_train_flops=("search_train_flops", "mean"), search_cpu_s=("search_cpu_time_s", "mean"),
              search_epochs=("search_epochs", "mean"), exit_epoch=("exit_epoch", "mean"),
              convergence_epoch=("convergence_epoch", "mean")).reset_index()
    t["model"] = [("baseline" if s == "baseline" else f"{METHOD}-{s}") for s in t["scope"]]
    t["params_M"] = (t["params"] / 1e6).round(2)
    t["flops_M"] = (t["flops"] / 1e6).round(1)
    t["top1"] = (100 * t["top1"]).round(2)
    t["top1_std"] = (100 * t["top1_std"]).round(2)
    t["search_time_s"] = t["search_time_s"].round(1)
    t["search_gflops"] = t["search_train_flops"] / 1e9
    t["search_cpu_s"] = t["search_cpu_s"].round(1)
    for c in ("n_runs", "search_epochs", "exit_epoch", "convergence_epoch"):
        t[c] = _as_int_if_whole(t[c])
    t["_rank"] = [_scope_rank(s) for s in t["scope"]]
    t = t.sort_values(["dataset", "_rank"], kind="stable")
    return t[cols].reset_index(drop=True)


TABLE1_FORMATS = {"params_M": ".2f", "flops_M": ".1f", "top1": ".2f", "top1_std": ".2f", "search_time_s": ".1f",
                  "search_gflops": ".3g", "search_cpu_s": ".1f"}
#: The search-cost measures of ``scopes.png``, first available first: (column, axis label, unit).
SEARCH_COSTS = (("search_gflops", "search cost: counted training GFLOPs", "GFLOPs"),
                ("search_cpu_s", "search cost: process CPU seconds", "CPU s"),
                ("search_time_s", "search wall time (s; grows with what ran beside it)", "s"))


def search_cost_measure(t: pd.DataFrame) -> tuple[str, str, str]:
    """The search-cost column ``scopes.png`` shows: counted training FLOPs where every searched
    scope has them, else process CPU seconds, else wall time (older runs)."""
    searched = t[t["scope"] != "baseline"]
    for col, label, unit in SEARCH_COSTS:
        if col in searched and len(searched) and searched[col].notna().all() and (searched[col] > 0).all():
            return col, label, unit
    return SEARCH_COSTS[-1]


def format_table1(t: pd.DataFrame) -> str:
    return format_table(t, TABLE1_FORMATS)


def plot_scopes(t: pd.DataFrame) -> Figure:
    """Left: top-1 (%) vs params (M) per scope (error bar: std over seeds; dashed line: the
    baseline); right: search cost per scope (:func:`search_cost_measure`: counted training FLOPs,
    which do not depend on what ran beside the trial; the axis says which), annotated with the
    convergence epoch."""
    fig, axes = panel_grid(1, 2, panel=(4.8, 3.2), top=0.55, bottom=0.65, wspace=0.9)
    ax1, ax2 = axes[0]
    datasets = list(t["dataset"].unique())
    multi = len(datasets) > 1
    colour = {d: f"C{i % 10}" for i, d in enumerate(datasets)}
    is_base = t["scope"] == "baseline"
    searched = t[~is_base].reset_index(drop=True)
    names = [f"{d}:{s}" if multi else f"scope {s}" for d, s in zip(searched["dataset"], searched["scope"])]
    has_params = searched["params_M"].notna().any() or t["params_M"].notna().any()
    xs = searched["params_M"] if has_params else pd.Series(np.arange(len(searched)), dtype=float)
    for ds in datasets:
        m = searched["dataset"] == ds
        if m.any():
            ax1.errorbar(xs[m], searched.loc[m, "top1"], yerr=searched.loc[m, "top1_std"].fillna(0), fmt="o",
                         color=colour[ds], ms=7, capsize=3, label=ds if multi else "searched (mean ± std)")
    for x, y, name in zip(xs, searched["top1"], names):
        if pd.notna(x) and pd.notna(y):
            ax1.annotate(name, (x, y), textcoords="offset points", xytext=(7, 4), fontsize=9)
    for _, row in t[is_base].iterrows():
        if pd.notna(row["top1"]):
            ax1.axhline(row["top1"], color=colour[row["dataset"]] if multi else "0.4", ls="--", lw=1.2,
                        label=(f"{row['dataset']} " if multi else "") + f"baseline {row['top1']:.2f}%"
                        + (f" ({row['params_M']:.2f}M)" if pd.notna(row["params_M"]) else ""))
    ax1.set_xlabel("params (M)" if has_params else "scope")
    if not has_params:
        ax1.set_xticks(np.arange(len(searched)), names)
    ax1.set_ylabel("top-1 accuracy (%)")
    ax1.set_title("top-1 vs model size per search scope")
    ax1.grid(alpha=0.3)
    ax1.margins(x=0.2, y=0.25)
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize="small", loc="lower right")
    pos = np.arange(len(searched))
    col, cost_label, unit = search_cost_measure(t)
    ax2.bar(pos, searched[col].fillna(0), color=[colour[d] for d in searched["dataset"]])
    for p, st, ce in zip(pos, searched[col], searched["convergence_epoch"]):
        if pd.notna(st):
            txt = f"{st:.3g} {unit}" + (f"\nconv. ep {ce}" if pd.notna(ce) else "")
            ax2.annotate(txt, (p, st), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax2.set_xticks(pos, [n.replace("scope ", "") for n in names])
    ax2.set_xlabel("search scope")
    ax2.set_ylabel(cost_label, fontsize=9)
    ax2.set_title("search cost per scope")
    ax2.margins(y=0.25)
    ax2.grid(alpha=0.3, axis="y")
    fig.suptitle("ProxylessNAS search scopes (paper Table I)", y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


# ---- reports ------------------------------------------------------------------------------
def report_run(run: Run, out: Path) -> Output:
    """``convergence.csv`` and ``trajectories.png`` for one run with a trajectory."""
    res = Output()
    if run.trajectory is None or run.trajectory.empty:
        res.text.append(f"{run.name}: no trajectory.csv, no Fig. 3")
        return res
    conv = convergence(run)
    res.files.append(save_csv(conv, out / "convergence.csv"))
    res.tables[f"convergence:{run.name}"] = conv
    res.files.append(save_figure(plot_trajectories(run), out / "trajectories.png"))
    shown = conv.drop(columns=["margin"]).copy()
    res.text.append(f"convergence per block ({run.name}); architecture fixed from epoch "
                    f"{_fmt_num(max_convergence_epoch(conv))}:\n"
                    + format_table(shown, {"final_prob": ".3f"}))
    return res


def _fmt_num(x: float) -> str:
    return "-" if x is None or x != x else f"{x:g}"


def report_study(runs: Sequence[Run], out: Path) -> Output:
    """``table1.csv`` (+ per-run ``table1_runs.csv``), ``scopes.png`` and the study's
    ``convergence.csv`` (all proxyless runs, long format)."""
    res = Output()
    t = table1(runs)
    if t.empty:
        return res
    res.files.append(save_csv(t, out / "table1.csv"))
    res.files.append(save_csv(table1_runs(runs), out / "table1_runs.csv"))
    res.tables["table1"] = t
    res.files.append(save_figure(plot_scopes(t), out / "scopes.png"))
    frames = []
    for run in runs:
        if run.method == METHOD and run.trajectory is not None and not run.trajectory.empty:
            c = convergence(run)
            c.insert(0, "run", run.name)
            c.insert(1, "scope", run.scope)
            c.insert(2, "seed", run.seed)
            frames.append(c)
    if frames:
        allc = pd.concat(frames, ignore_index=True)
        res.files.append(save_csv(allc, out / "convergence.csv"))
        res.tables["convergence"] = allc
    res.text.append("Table I (ProxylessNAS search scopes):\n" + format_table1(t))
    return res
