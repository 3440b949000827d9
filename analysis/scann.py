"""SCANN / DR+SCANN report: the paper's Tables VI and VII, the accuracy-vs-connections front,
the per-iteration architecture state, a drawing of each synthesised graph and, for runs that
chose their size by cross-validation (``select_folds``), the selection curves.

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt``, Sec. 4.2.  Reads run folders only
(``config.json``, ``summary.json``, ``structure.csv``, ``arch.json``, ``cv.csv``); imports nothing from
``experiments``, ``strategies`` or ``search_spaces``.

Tables (one row per data set; columns as in the paper):

* **MLP** -- the fully connected baseline of the runs (the best-validation MLP);
* **DR** -- the DR models (the baseline with every layer shrunk by the feature compression
  ratio, trained on the reduced data), method in parentheses;
* **SCANN** -- runs without DR; **DR+SCANN** -- runs with DR.

Each method has an **H.A.** column (highest accuracy) and an **M.C.** column (most compressed).
Candidates are what runs export: a run's best-validation network (``ha_*``) and its most
compressed network within its tolerance of the baseline's validation accuracy (``mc_*``).
H.A. = highest *validation* accuracy (ties: fewer parameters); M.C. = fewest parameters among the
candidates whose validation accuracy is within ``tolerance`` (0.5 points) of the MLP's; when
none is, the most accurate candidate is shown and marked ``*``.  Choosing on validation, not on
test accuracy, is ours: the paper does not say how its H.A./M.C. were picked.  Test accuracy and
parameters (connections + biases; compression ratio vs the MLP) are reported.  Image-mode runs
(LeNet-5) count whole networks here, convolutions included (their ``summary.json`` also has the
ratio of the fully connected part alone, ``compression_ratio``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .front import pareto_front
from .output import save_csv, save_figure

__all__ = ["METHOD", "load_scann_runs", "candidates", "paper_tables", "pareto_front", "plot_front",
           "plot_structure", "plot_graph", "plot_selection", "report"]

METHOD = "scann"
COLUMNS = ("MLP", "DR (H.A.)", "DR (M.C.)", "SCANN (H.A.)", "SCANN (M.C.)", "DR+SCANN (H.A.)", "DR+SCANN (M.C.)")
SCHEME_MARKERS = {"A": "o", "B": "s", "C": "^"}
KIND_COLORS = {"SCANN": "tab:blue", "DR+SCANN": "tab:green", "DR": "tab:purple", "MLP": "black"}
MAX_GRAPHS = 24  # drawings per report (the best-validation run of each data set/kind first)
MAX_SELECTION = 24  # selection panels per report


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def load_scann_runs(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Finished SCANN runs among ``run_dirs``: ``{path, name, config, summary, structure, arch}``."""
    runs = []
    names: dict[str, int] = {}
    for d in run_dirs:
        d = Path(d)
        config = _read_json(d / "config.json")
        summary = _read_json(d / "summary.json")
        if (config.get("method") or summary.get("method")) != METHOD or "default" not in summary:
            continue
        name = d.name if d.name.lower() not in ("output", "nnioutput", "outputs") else d.parent.name
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}_{names[name]}"
        runs.append({"path": d, "name": name, "config": config.get("config", {}), "summary": summary,
                     "structure": _read_csv(d / "structure.csv"), "arch": _read_json(d / "arch.json"),
                     "cv": _read_csv(d / "cv.csv")})
    return runs


def _kind(summary: dict[str, Any]) -> str:
    return "SCANN" if summary.get("dr_method", "none") == "none" else "DR+SCANN"


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


# --------------------------------------------------------------------------- tables


def candidates(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Long table of every exported network: MLP baselines, DR models, H.A./M.C. checkpoints."""
    rows = []
    for r in runs:
        s = r["summary"]
        common = {"run": r["name"], "dataset": s.get("dataset"), "scheme": s.get("scheme"),
                  "dr_method": s.get("dr_method", "none"), "dr_ratio": _num(s.get("dr_ratio"))}
        base = {"val_acc": _num(s.get("baseline_val_acc")), "test_acc": _num(s.get("baseline_test_acc")),
                "params": _num(s.get("baseline_params")), "connections": _num(s.get("baseline_connections"))}
        rows.append({**common, "kind": "MLP", "checkpoint": "baseline", **base})
        if common["dr_method"] != "none":
            rows.append({**common, "kind": "DR", "checkpoint": "dr", "val_acc": _num(s.get("dr_val_acc")),
                         "test_acc": _num(s.get("dr_test_acc")), "params": _num(s.get("dr_params")),
                         "connections": _num(s.get("dr_connections"))})
        for ck in ("ha", "mc"):
            rows.append({**common, "kind": _kind(s), "checkpoint": ck, "val_acc": _num(s.get(f"{ck}_val_acc")),
                         "test_acc": _num(s.get(f"{ck}_test_acc")), "params": _num(s.get(f"{ck}_params")),
                         "connections": _num(s.get(f"{ck}_connections")),
                         "iteration": _num(s.get(f"{ck}_iteration"))})
    return pd.DataFrame(rows)


def _pick(df: pd.DataFrame, *, most_compressed: bool, reference: float, tolerance: float) -> tuple[pd.Series | None, bool]:
    df = df.dropna(subset=["val_acc", "params"])
    if df.empty:
        return None, True
    if not most_compressed:
        return df.sort_values(["val_acc", "params"], ascending=[False, True]).iloc[0], True
    ok = df[df["val_acc"] >= reference - tolerance - 1e-12]
    if ok.empty:
        return df.sort_values(["val_acc", "params"], ascending=[False, True]).iloc[0], False
    return ok.sort_values(["params", "val_acc"], ascending=[True, False]).iloc[0], True


def paper_tables(runs: Sequence[dict[str, Any]], tolerance: float = 0.005) -> dict[str, pd.DataFrame]:
    """``{"long": ..., "accuracy": Table VI, "params": Table VII}`` (see the module docstring)."""
    cand = candidates(runs)
    long_rows = []
    if cand.empty:
        empty = pd.DataFrame(columns=["dataset", *COLUMNS])
        return {"long": pd.DataFrame(), "accuracy": empty, "params": empty.copy()}
    for dataset, df in cand.groupby("dataset", sort=True):
        mlp = df[df["kind"] == "MLP"].sort_values(["val_acc", "params"], ascending=[False, True]).iloc[0]
        ref = float(mlp["val_acc"])
        long_rows.append({"dataset": dataset, "column": "MLP", **mlp.to_dict(), "meets_baseline": True})
        for kind in ("DR", "SCANN", "DR+SCANN"):
            sub = df[df["kind"] == kind]
            for label, mc in (("H.A.", False), ("M.C.", True)):
                row, met = _pick(sub, most_compressed=mc, reference=ref, tolerance=tolerance)
                if row is None:
                    continue
                long_rows.append({"dataset": dataset, "column": f"{kind} ({label})", **row.to_dict(),
                                  "meets_baseline": met})
    long = pd.DataFrame(long_rows)
    base = long[long["column"] == "MLP"].set_index("dataset")["params"]
    long["compression_ratio"] = long["params"].rdiv(long["dataset"].map(base))
    long = long[["dataset", "column", "kind", "checkpoint", "run", "scheme", "dr_method", "dr_ratio", "val_acc",
                 "test_acc", "params", "connections", "compression_ratio", "meets_baseline"]]

    def cell_acc(r):
        tag = f" ({r['dr_method']})" if r["kind"] in ("DR", "DR+SCANN") else ""
        tag += "" if r["meets_baseline"] else " *"
        return f"{100 * r['test_acc']:.2f}{tag}"

    def cell_params(r):
        star = "" if r["meets_baseline"] else " *"
        if r["column"] == "MLP":
            return f"{_human(r['params'])}"
        return f"{_human(r['params'])} ({r['compression_ratio']:.1f}x){star}"

    tables = {}
    for name, fmt in (("accuracy", cell_acc), ("params", cell_params)):
        wide = long.assign(cell=long.apply(fmt, axis=1)).pivot(index="dataset", columns="column", values="cell")
        tables[name] = wide.reindex(columns=[c for c in COLUMNS if c in wide.columns]).reset_index()
    tables["long"] = long
    return tables


def _human(n: float) -> str:
    if not math.isfinite(n):
        return "-"
    return f"{n / 1000:.1f}k" if n >= 10_000 else f"{int(n)}"


# --------------------------------------------------------------------------- plots


def _iteration_points(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in runs:
        st = r["structure"]
        if st.empty or "connections" not in st:
            continue
        s = r["summary"]
        for _, row in st.iterrows():
            rows.append({"dataset": s.get("dataset"), "kind": _kind(s), "scheme": s.get("scheme"), "run": r["name"],
                         "iteration": row.get("iteration"), "connections": _num(row.get("connections")),
                         "test_acc": _num(row.get("test_acc")), "val_acc": _num(row.get("val_acc"))})
    return pd.DataFrame(rows)


def plot_front(runs: Sequence[dict[str, Any]], tolerance: float = 0.005) -> Figure | None:
    """Test accuracy vs connections per data set: every SCANN iteration, DR models, the MLP, the front."""
    pts = _iteration_points(runs)
    cand = candidates(runs)
    if cand.empty:
        return None
    datasets = sorted(cand["dataset"].dropna().unique())
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, ds in zip(axes, datasets):
        c = cand[cand["dataset"] == ds]
        p = pts[pts["dataset"] == ds] if not pts.empty else pts
        for (kind, scheme), grp in (p.groupby(["kind", "scheme"]) if not p.empty else []):
            ax.scatter(grp["connections"], 100 * grp["test_acc"], s=14, alpha=0.45, color=KIND_COLORS[kind],
                       marker=SCHEME_MARKERS.get(scheme, "o"), linewidths=0)
        dr = c[c["kind"] == "DR"]
        ax.scatter(dr["connections"], 100 * dr["test_acc"], s=40, color=KIND_COLORS["DR"], marker="D")
        mlp = c[c["kind"] == "MLP"].sort_values(["val_acc", "params"], ascending=[False, True]).iloc[:1]
        ax.scatter(mlp["connections"], 100 * mlp["test_acc"], s=120, color="black", marker="*", zorder=5)
        if len(mlp):
            ax.axhline(100 * (float(mlp["test_acc"].iloc[0]) - tolerance), color="grey", ls=":", lw=1)
        chosen = c[c["kind"].isin(["SCANN", "DR+SCANN"])]
        ax.scatter(chosen["connections"], 100 * chosen["test_acc"], s=60, facecolors="none", edgecolors="red",
                   linewidths=1.2, zorder=4)
        allpts = pd.concat([p[["connections", "test_acc"]] if not p.empty else pd.DataFrame(),
                            c[["connections", "test_acc"]]], ignore_index=True)
        front = pareto_front(allpts)
        ax.step(front["connections"], 100 * front["test_acc"], where="post", color="red", lw=1, alpha=0.7)
        ax.set_xscale("log")
        ax.set_title(str(ds))
        ax.set_xlabel("connections (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=KIND_COLORS[k], marker="o", ls="", label=f"{k} iterations") for k in ("SCANN", "DR+SCANN")]
    handles += [Line2D([], [], color="grey", marker=m, ls="", label=f"scheme {s}") for s, m in SCHEME_MARKERS.items()]
    handles += [Line2D([], [], color=KIND_COLORS["DR"], marker="D", ls="", label="DR model"),
                Line2D([], [], color="black", marker="*", ls="", markersize=12, label="MLP baseline"),
                Line2D([], [], color="red", marker="o", mfc="none", ls="", label="exported (H.A./M.C.)"),
                Line2D([], [], color="red", label="front"),
                Line2D([], [], color="grey", ls=":", label="baseline - 0.5 pt")]
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8)
    return fig


def plot_structure(runs: Sequence[dict[str, Any]]) -> Figure | None:
    """Neurons, connections and depth per iteration, one line per run."""
    usable = [r for r in runs if not r["structure"].empty and "iteration" in r["structure"]]
    if not usable:
        return None
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    axes = fig.subplots(1, 4)
    for r in usable:
        st = r["structure"]
        s = r["summary"]
        label = f"{s.get('dataset')} {_kind(s)} {s.get('scheme')}" + (
            f" {s.get('dr_method')}@{s.get('dr_ratio')}" if _kind(s) == "DR+SCANN" else "")
        for ax, col in zip(axes, ("neurons", "connections", "depth", "val_acc")):
            if col in st:
                ax.plot(st["iteration"], st[col], marker=".", lw=1, label=label)
    for ax, title in zip(axes, ("hidden neurons", "connections", "depth (hidden layers)", "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    if len(usable) <= 12:
        axes[3].legend(fontsize=7)
    return fig


def plot_selection(runs: Sequence[dict[str, Any]]) -> Figure | None:
    """Why each cross-validated run (``cv.csv``) exported the size it did: per run, the pooled
    accuracy of every iteration against its compression ratio (shaded: +- the standard error of
    its gap to the baseline, from the k runs), the baseline's pooled accuracy and
    the tolerance line below it, the chosen size (red ring); the test accuracy change is drawn too,
    grey, for reading only (it never chose anything)."""
    usable = [r for r in runs if not r["cv"].empty and {"iteration", "cv_acc", "cv_baseline_acc"} <= set(r["cv"])]
    usable = usable[:MAX_SELECTION]
    if not usable:
        return None
    ncols = min(3, len(usable))
    nrows = math.ceil(len(usable) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, r in zip(axes, usable):
        s, cv, st = r["summary"], r["cv"].sort_values("iteration"), r["structure"]
        base_params = _num(s.get("baseline_params"))
        ratio = base_params / cv["params"].astype(float)
        base = float(cv["cv_baseline_acc"].iloc[0])
        tol = _num(r["config"].get("tolerance", 0.005))
        gap = 100 * (cv["cv_acc"] - base)
        ax.plot(ratio, gap, marker="o", ms=3, color="tab:blue",
                label=f"pooled (n={int(cv['pooled_n'].iloc[0])})" if "pooled_n" in cv else "pooled")
        if "cv_gap_se" in cv:  # the k runs' standard error of the pooled gap (not used by the choice)
            se = 100 * cv["cv_gap_se"].astype(float)
            ax.fill_between(ratio, gap - se, gap + se, color="tab:blue", alpha=0.15, lw=0, label="pooled +- 1 SE")
        if not st.empty and {"iteration", "test_acc"} <= set(st):
            test = st.set_index("iteration")["test_acc"].reindex(cv["iteration"]).to_numpy(dtype=float)
            ax.plot(ratio, 100 * (test - _num(s.get("baseline_test_acc"))), ls="--", lw=1, color="grey",
                    label="test (not used)")
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(-100 * tol, color="tab:red", ls=":", lw=1, label=f"-{100 * tol:g} pt")
        sel = cv[cv["iteration"] == s.get("selected_iteration")]
        if len(sel):
            ax.scatter(base_params / float(sel["params"].iloc[0]), 100 * (float(sel["cv_acc"].iloc[0]) - base),
                       s=90, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5, label="chosen")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -4.0), hi)  # the region around the tolerance; the smallest sizes may fall far below
        ax.set_title(f"{r['name']}: {s.get('dataset')} {_kind(s)}", fontsize=9)
        ax.set_xlabel("compression ratio vs baseline (log)")
        ax.set_ylabel("accuracy - baseline (pt)")
        ax.grid(alpha=0.3)
    for ax in axes[len(usable):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    return fig


def plot_graph(arch: dict[str, Any], title: str = "") -> Figure | None:
    """The synthesised graph: nodes by emerged depth, skip connections highlighted."""
    if arch.get("space") != "feedforward" or "edges" not in arch:
        return None
    D, H, K = int(arch["num_inputs"]), int(arch["num_hidden"]), int(arch["num_outputs"])
    depths = [int(d) for d in arch.get("neuron_depths", [])]
    L = max(depths, default=0)
    used = list(arch.get("used_inputs", []))
    node_depth = {i: 0 for i in used}
    node_depth.update({D + h: depths[h] for h in range(H)})
    node_depth.update({D + H + k: L + 1 for k in range(K)})
    columns: dict[int, list[int]] = {}
    for node, d in sorted(node_depth.items()):
        columns.setdefault(d, []).append(node)
    pos = {}
    for d, nodes in columns.items():
        n = len(nodes)
        for j, node in enumerate(nodes):
            pos[node] = (d, (j + 0.5) / n)
    edges = [(int(a), int(b)) for a, b in arch["edges"] if int(a) in pos and int(b) in pos]
    fig = Figure(figsize=(2.2 + 1.8 * (L + 2), 5.5), layout="constrained")
    ax = fig.subplots()
    alpha = 0.6 if len(edges) < 300 else max(0.05, 150 / len(edges))
    skips = 0
    for a, b in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        skip = x1 - x0 > 1
        skips += skip
        ax.plot([x0, x1], [y0, y1], color="tab:orange" if skip else "0.55", lw=0.9 if skip else 0.6,
                alpha=alpha, zorder=1)
    small = len(pos) < 400
    for node, (x, y) in pos.items():
        kind = "input" if node < D else ("output" if node >= D + H else "hidden")
        color = {"input": "tab:blue", "hidden": "tab:green", "output": "tab:red"}[kind]
        ax.scatter([x], [y], s=30 if small else 6, color=color, zorder=3)
    names = arch.get("feature_names") or []
    if used and len(used) <= 30:
        for i in used:
            label = names[i] if i < len(names) else f"x{i}"
            ax.annotate(str(label), pos[i], xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                        fontsize=7)
    ax.set_xticks(range(L + 2), ["inputs"] + [f"layer {d}" for d in range(1, L + 1)] + ["outputs"])
    ax.set_yticks([])
    ax.set_xlim(-0.8, L + 1.4)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{title}\n{H} hidden neurons, {len(arch['edges'])} connections, depth {L}, "
                 f"{skips} skip connections (orange), {len(used)}/{D} inputs used", fontsize=9)
    return fig


# --------------------------------------------------------------------------- entry point


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def report(run_dirs: list[Path], out: Path, *, tolerance: float = 0.005) -> list[Path]:
    """Write the SCANN tables (CSV), the front and structure plots and graph drawings (PNG) to
    ``out``; returns the paths written (none when ``run_dirs`` holds no finished SCANN run)."""
    runs = load_scann_runs(run_dirs)
    if not runs:
        return []
    out = Path(out)
    written: list[Path] = []
    rows = []
    for r in runs:
        s = r["summary"]
        rows.append({"run": r["name"], **{k: v for k, v in s.items() if isinstance(v, (int, float, str))},
                     "path": str(r["path"])})
    written.append(save_csv(pd.DataFrame(rows), out / "scann_runs.csv"))
    tables = paper_tables(runs, tolerance)
    written.append(save_csv(tables["long"], out / "scann_tables_long.csv"))
    written.append(save_csv(tables["accuracy"], out / "scann_table_vi_accuracy.csv"))
    written.append(save_csv(tables["params"], out / "scann_table_vii_params.csv"))
    fig = plot_front(runs, tolerance)
    if fig is not None:
        written.append(save_figure(fig, out / "scann_front.png"))
    fig = plot_structure(runs)
    if fig is not None:
        written.append(save_figure(fig, out / "scann_structure.png"))
    fig = plot_selection(runs)
    if fig is not None:
        written.append(save_figure(fig, out / "scann_selection.png"))
    # graphs: the runs behind the table cells first, then the rest, at most MAX_GRAPHS
    featured = list(dict.fromkeys(tables["long"]["run"].dropna())) if not tables["long"].empty else []
    order = featured + [r["name"] for r in runs if r["name"] not in featured]
    by_name = {r["name"]: r for r in runs}
    for name in order[:MAX_GRAPHS]:
        r = by_name.get(name)
        if r is None:
            continue
        s = r["summary"]
        title = f"{name}: {s.get('dataset')} {_kind(s)} scheme {s.get('scheme')}"
        fig = plot_graph(r["arch"], title)
        if fig is not None:
            written.append(save_figure(fig, out / f"scann_graph_{_safe(name)}.png"))
    return written
