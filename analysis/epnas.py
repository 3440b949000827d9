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
* ``best_arch.json`` - the best-reward trial's architecture and figures;
* ``curves.csv`` / ``curves.png`` - best reward so far against the number of trained models and
  against the total training epochs, one line per study (run folders of one experiment, i.e.
  one parent folder), coloured by search algorithm (the trial's ``algorithm``: ``epnas`` or a
  baseline ``random | evolution | morph``), so EPNAS and its baselines compare side by side;
* ``episodes.png`` - per episode and algorithm: the fraction of feasible networks and the mean
  policy entropy of the morphs (EPNAS trials carry ``entropy``, nats per decision);
* ``lineage.png`` - which network each came from (``parent``) and by which morph (``action``),
  for the study that holds the best EPNAS trial: one node per trial at (episode/step, branch),
  coloured by reward, the best trial's ancestry drawn thick;
* ``final.csv`` - the results table of the fully trained networks (the tuner's last trials,
  ``final = 1``), like the paper's Tables 4-5: test accuracy / error, params, FLOPs, and the search
  cost in trained models, CPU hours and GPU hours (:func:`final_table`); the other files
  describe the search trials only;
* ``best_arch.png`` - the best *feasible* architecture (best reward if none is feasible) as a
  diagram: a box per layer (branch) with op / filter / channels, Src1 / Src2 skips as arrows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .output import _atomic, save_csv, save_figure
from .plots import panel_grid

__all__ = ["METHOD", "trials_table", "final_table", "study_output", "episodes_table", "curves_table", "plot_search", "plot_curves", "plot_episodes",
           "plot_lineage", "plot_arch", "report_study"]

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
        row["algorithm"] = summary.get("algorithm") or cfg.get("algorithm") or "epnas"
        entropy = summary.get("entropy", cfg.get("entropy"))
        row["entropy"] = np.nan if entropy is None else float(entropy)
        row["action"] = summary.get("action", cfg.get("action")) or ""
        row["epochs"] = summary.get("epochs_trained", cfg.get("stop_epoch", np.nan))
        row["final"] = int(summary.get("final", cfg.get("final", 0)) or 0)
        row["test_acc"] = summary.get("test_acc", np.nan)
        row["cpu_time_s"] = summary.get("cpu_time_s", np.nan)
        row["wall_time_s"] = summary.get("wall_time_s", summary.get("train_time_s", np.nan))
        row["device"] = summary.get("device") or ("cuda" if str(cfg.get("device", "")).startswith("cuda") else "cpu")
        for k in ("final_rank", "final_asked", "final_found", "final_epochs"):
            row[k] = cfg.get(k, np.nan)
        row["study"] = str(d.parent)
        row["run_dir"] = str(d)
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    t["feasible"] = np.isclose(t["reward"], t["accuracy"], rtol=0, atol=1e-12)
    return t.sort_values(["trial", "run_dir"]).reset_index(drop=True)


def final_table(t: pd.DataFrame) -> pd.DataFrame:
    """The paper-style results table (EPNAS Tables 4-5): one row per fully trained network of each
    study (experiment), best first, with the search that found it.

    Columns: ``study, algorithm, final_rank, trial, source_trial, test_acc, test_error_pct, params,
    params_m, flops, mflops, intensity, feasible, final_epochs`` and the search cost of the study -
    ``search_models`` (networks trained by the search), ``search_epochs`` (their training epochs),
    ``search_cpu_hours`` (their process CPU hours) and ``search_gpu_hours`` (wall hours of those
    that ran on a GPU; the paper's GPU days x 24) - plus ``note`` when fewer networks were trained
    than ``final_top_k`` asked (the search found fewer feasible ones)."""
    if t.empty or "final" not in t or not (t["final"] == 1).any():
        return pd.DataFrame()
    rows = []
    for study, g in t.groupby("study", sort=True):
        search, final = g[g["final"] != 1], g[g["final"] == 1]
        if final.empty:
            continue
        gpu = search["device"].astype(str).str.startswith("cuda")
        cost = {"search_models": len(search), "search_epochs": float(search["epochs"].fillna(0).sum()),
                "search_cpu_hours": float(search["cpu_time_s"].fillna(0).sum()) / 3600,
                "search_gpu_hours": float(search.loc[gpu, "wall_time_s"].fillna(0).sum()) / 3600}
        asked, found = final["final_asked"].max(), final["final_found"].max()
        note = ""
        if pd.notna(asked) and pd.notna(found) and found < asked:
            note = f"final_top_k={int(asked)} asked; the search found {int(found)} feasible network(s)"
        for _, r in final.sort_values(["final_rank", "trial"]).iterrows():
            rows.append({"study": study, "algorithm": r["algorithm"], "final_rank": r["final_rank"],
                         "trial": r["trial"], "source_trial": r["parent"], "test_acc": r["test_acc"],
                         "test_error_pct": 100 * (1 - r["test_acc"]), "params": r["params"],
                         "params_m": r["params"] / 1e6, "flops": r["flops"], "mflops": r["flops"] / 1e6,
                         "intensity": r["intensity"], "feasible": bool(r["feasible"]),
                         "final_epochs": r["epochs"], **cost, "note": note})
    return pd.DataFrame(rows)


def episodes_table(t: pd.DataFrame) -> pd.DataFrame:
    """Per algorithm and episode: trials, rewards, feasible fraction, mean policy entropy."""
    g = t.groupby(["algorithm", "episode"])
    return pd.DataFrame({
        "trials": g.size(), "mean_reward": g["reward"].mean(), "max_reward": g["reward"].max(),
        "best_accuracy": g["accuracy"].max(), "feasible_fraction": g["feasible"].mean(),
        "mean_entropy": g["entropy"].mean(),
    }).reset_index()


def curves_table(t: pd.DataFrame) -> pd.DataFrame:
    """Best reward so far per study, by trained models (trial order) and total training epochs."""
    parts = []
    for (algo, study), g in t.groupby(["algorithm", "study"], sort=True):
        g = g.sort_values("trial")
        epochs = g["epochs"].fillna(1).astype(float)
        parts.append(pd.DataFrame({
            "algorithm": algo, "study": study, "trial": g["trial"].to_numpy(),
            "models": np.arange(1, len(g) + 1), "epochs": epochs.cumsum().to_numpy(),
            "reward": g["reward"].to_numpy(), "best_so_far": g["reward"].cummax().to_numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _colours(algorithms) -> dict[str, str]:
    fixed = {"epnas": "crimson", "random": "tab:grey", "evolution": "tab:green", "morph": "tab:purple"}
    other = iter(("tab:blue", "tab:orange", "tab:brown", "tab:olive", "tab:cyan"))
    return {a: fixed.get(a) or next(other, "k") for a in algorithms}


def plot_curves(c: pd.DataFrame):
    fig, axes = panel_grid(1, 2, panel=(4.2, 3.0), wspace=0.8, top=0.6, right=1.6)
    colours = _colours(sorted(c["algorithm"].unique()))
    for ax, x, xlabel, title in ((axes[0][0], "models", "trained models", "(a) best reward vs models"),
                                 (axes[0][1], "epochs", "total training epochs", "(b) best reward vs epochs")):
        seen = set()
        for (algo, _study), g in c.groupby(["algorithm", "study"], sort=True):
            ax.step(g[x], g["best_so_far"], where="post", color=colours[algo], alpha=0.85, lw=1.3,
                    label=None if algo in seen else algo)
            seen.add(algo)
        ax.set(xlabel=xlabel, ylabel="best reward so far", title=title)
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def plot_episodes(e: pd.DataFrame):
    fig, axes = panel_grid(1, 2, panel=(4.0, 3.0), wspace=0.8, top=0.6, right=1.6)
    a, b = axes[0]
    colours = _colours(sorted(e["algorithm"].unique()))
    for algo, g in e.groupby("algorithm", sort=True):
        a.plot(g["episode"], g["feasible_fraction"], marker="o", color=colours[algo], label=algo)
        if g["mean_entropy"].notna().any():
            b.plot(g["episode"], g["mean_entropy"], marker="o", color=colours[algo], label=algo)
    a.set(xlabel="episode", ylabel="feasible fraction", title="(a) feasible networks per episode", ylim=(-0.05, 1.05))
    b.set(xlabel="episode", ylabel="mean entropy (nats / decision)", title="(b) policy entropy per episode")
    if not e["mean_entropy"].notna().any():
        b.text(0.5, 0.5, "no policy entropy recorded", ha="center", va="center", transform=b.transAxes)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.legend(*a.get_legend_handles_labels(), fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def lineage_study(t: pd.DataFrame) -> pd.DataFrame:
    """The trials of the study holding the best EPNAS trial (the best trial at all if no EPNAS)."""
    pool = t[t["algorithm"] == METHOD] if (t["algorithm"] == METHOD).any() else t
    study = pool.loc[pool["reward"].idxmax(), "study"]
    s = pool[pool["study"] == study].sort_values("trial").copy()
    s["parent"] = s["parent"].fillna(-1)
    s[["episode", "step", "branch"]] = s[["episode", "step", "branch"]].fillna(0)
    s["action"] = s["action"].fillna("")
    return s


def plot_lineage(s: pd.DataFrame):
    """Lineage graph: nodes at (episode x steps + step, branch), edges parent -> child labelled
    with the morph; the best trial's ancestry thick."""
    import matplotlib as mpl

    steps = int(s["step"].max()) + 1 if s["step"].notna().any() else 1
    pos = {int(r.trial): (float(r.episode * (steps + 1) + r.step), float(r.branch)) for r in s.itertuples()}
    by_trial = {int(r.trial): r for r in s.itertuples()}
    best = int(s.loc[s["reward"].idxmax(), "trial"])
    path, cur = set(), best
    while cur in by_trial and cur not in path:
        path.add(cur)
        cur = int(by_trial[cur].parent)
    width = max(5.0, 0.9 * (max(p[0] for p in pos.values()) + 2))
    height = max(3.0, 0.7 * (max(p[1] for p in pos.values()) + 2))
    fig, axes = panel_grid(1, 1, panel=(width, height), top=0.6, right=1.2)
    ax = axes[0][0]
    norm = mpl.colors.Normalize(vmin=float(s["reward"].min()), vmax=float(s["reward"].max()) + 1e-12)
    cmap = mpl.colormaps["viridis"]
    for r in s.itertuples():
        child, parent = int(r.trial), int(r.parent)
        if parent not in pos:
            continue
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        on_path = child in path and parent in path
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", lw=2.2 if on_path else 0.7,
                                    color="crimson" if on_path else "0.55", shrinkA=7, shrinkB=7))
        if r.action:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, str(r.action), fontsize=5, ha="center", color="0.25")
    for r in s.itertuples():
        x, y = pos[int(r.trial)]
        ax.scatter([x], [y], s=120, color=cmap(norm(r.reward)) if r.feasible else "white",
                   edgecolors=cmap(norm(r.reward)) if not r.feasible else "k", linewidths=1.5, zorder=3)
        ax.text(x, y - 0.3, str(int(r.trial)), fontsize=6, ha="center")
    for e in sorted(s["episode"].unique())[1:]:
        ax.axvline(e * (steps + 1) - 1, color="k", lw=0.5, ls=":")
    ax.set(xlabel=f"episode x {steps + 1} + step", ylabel="branch",
           title=f"lineage ({s['algorithm'].iloc[0]}; best trial {best} path in red; hollow = violates)")
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.8, max(p[1] for p in pos.values()) + 0.8)
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="reward")
    return fig


def _unit_text(u: dict, kind: str) -> str:
    if kind == "layer":
        if u["type"] in ("maxpool2d", "avgpool2d"):
            return f"{u['type']}\npool {u['pool']}"
        if u["type"] == "add":
            return "add"
        return f"{u['type']}\n{u['filter']}x{u['filter']}, {u['channels']} ch\n{u['act']}"
    return (f"{u['type']}\nfilter {u['filter']}, pool {u['pool']}\n{u['channels']} ch"
            f"{', out' if u['propagate'] else ''}")


def plot_arch(arch: dict, title: str = ""):
    """A box per layer (branch) with op / width / channels; Src1 / Src2 as curved arrows."""
    kind = arch.get("space", "layer")
    units = arch.get("layers" if kind == "layer" else "branches", [])
    n = len(units)
    fig, axes = panel_grid(1, 1, panel=(max(4.0, 1.7 * (n + 2)), 3.2), top=0.6, left=0.2, right=0.2, bottom=0.2)
    ax = axes[0][0]
    ax.set_axis_off()
    ax.set_xlim(-1.0, 1.7 * (n + 1) + 0.2)
    ax.set_ylim(-2.2, 2.2)
    xs = [1.7 * (i + 1) for i in range(n)]
    inp_x = 0.0
    ax.text(inp_x, 0, "input" if kind == "layer" else "cell\ninput", ha="center", va="center", fontsize=7,
            bbox=dict(boxstyle="round", fc="0.9"))
    for i, u in enumerate(units):
        fc = {"conv2d": "#cfe2ff", "dep-sep-conv2d": "#d1f0d1", "maxpool2d": "#ffe5b4", "avgpool2d": "#ffe5b4",
              "add": "#f8d7da"}.get(u["type"], "#e8e8f8")
        ax.text(xs[i], 0, f"{i}: {_unit_text(u, kind)}", ha="center", va="center", fontsize=6.5,
                bbox=dict(boxstyle="square,pad=0.4", fc=fc, ec="k"))
        if kind == "layer":  # sequential data path
            ax.annotate("", xy=(xs[i] - 0.62, 0), xytext=((xs[i - 1] if i else inp_x) + 0.62, 0),
                        arrowprops=dict(arrowstyle="->", lw=1.0))
        for j, (name, colour) in enumerate((("src1", "tab:blue"), ("src2", "tab:orange"))):
            src = u[name]
            if kind == "layer":
                if src < 0:
                    continue
                x0 = xs[src]
            else:  # 0 = cell input, j >= 1 = branch j-1
                x0 = inp_x if src == 0 else xs[src - 1]
            up = 1 if j == 0 else -1
            ax.annotate("", xy=(xs[i], 0.45 * up), xytext=(x0, 0.45 * up),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.1,
                                        connectionstyle=f"arc3,rad={-0.35 * up}"))
    ax.plot([], [], color="tab:blue", label="Src1")
    ax.plot([], [], color="tab:orange", label="Src2")
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(title, fontsize=9)
    return fig


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


def study_output(run_dirs: Sequence[str | Path], out_dir: str | Path):
    """:func:`report_study` as an :class:`analysis.output.Output` whose ``tables`` hold the results
    table (``epnas_final``, :func:`final_table`), for the report registry to print."""
    from .output import Output, format_table

    t = trials_table(run_dirs)   # read once, for the files and the printed table
    files = _study_files(t, out_dir)
    final = final_table(t)
    if final.empty:
        return Output(files=list(files))
    cols = ["final_rank", "trial", "source_trial", "test_error_pct", "params_m", "mflops", "intensity",
            "search_models", "search_cpu_hours", "search_gpu_hours"]
    text = ["EPNAS final training (the paper's results table: test error, params, FLOPs, search cost):\n"
            + format_table(final[cols], {"test_error_pct": ".2f", "params_m": ".3f", "mflops": ".2f",
                                         "intensity": ".1f", "search_cpu_hours": ".2f", "search_gpu_hours": ".2f"})]
    text += [n for n in final["note"].unique() if n]
    return Output(files=list(files), tables={"epnas_final": final}, text=text)


def report_study(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """``final.csv`` (:func:`final_table`, when the study has final trainings), ``trials.csv``, ``episodes.csv``, ``search.png``, ``best_arch.json``, ``curves.csv``,
    ``curves.png``, ``episodes.png``, ``lineage.png`` and ``best_arch.png`` over the EPNAS trials."""
    return _study_files(trials_table(run_dirs), out_dir)


def _study_files(t: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """:func:`report_study`'s files from the trials table ``t`` (:func:`trials_table`)."""
    out = Path(out_dir)
    if t.empty:
        return []
    files = []
    final = final_table(t)
    if not final.empty:
        files.append(save_csv(final, out / "final.csv"))
    t = t[t["final"] != 1].reset_index(drop=True)   # the search's own tables and plots: search trials only
    if t.empty:
        return files
    files += [save_csv(t, out / "trials.csv"), save_csv(episodes_table(t), out / "episodes.csv"),
             save_figure(plot_search(t), out / "search.png")]
    best = t.loc[t["reward"].idxmax()]
    arch = _read_json(Path(best["run_dir"]) / "arch.json").get("arch")
    record = {k: (None if pd.isna(best[k]) else best[k].item() if hasattr(best[k], "item") else best[k])
              for k in (*_COLUMNS, "feasible", "run_dir")}
    text = json.dumps({**record, "arch": arch}, indent=2)
    files.append(_atomic(out / "best_arch.json", lambda tmp: Path(tmp).write_text(text)))
    c = curves_table(t)
    files += [save_csv(c, out / "curves.csv"), save_figure(plot_curves(c), out / "curves.png"),
              save_figure(plot_episodes(episodes_table(t)), out / "episodes.png"),
              save_figure(plot_lineage(lineage_study(t)), out / "lineage.png")]
    feas = t[t["feasible"]]
    pick = (feas if not feas.empty else t).loc[lambda d: d["reward"].idxmax()]
    arch = _read_json(Path(pick["run_dir"]) / "arch.json").get("arch")
    if arch:
        title = (f"best {'feasible ' if pick['feasible'] else ''}architecture: trial {int(pick['trial'])} "
                 f"({pick['algorithm']}), accuracy {pick['accuracy']:.3f}, {pick['params']:.0f} params")
        files.append(save_figure(plot_arch(arch, title), out / "best_arch.png"))
    return files
