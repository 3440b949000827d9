"""Plots every method gets: learning curves from ``metrics.csv``.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot): no global state, no
display needed, and a notebook shows them with ``display(fig)``.
"""
from __future__ import annotations

from matplotlib.figure import Figure

from .io import Run

__all__ = ["panel_grid", "plot_curves", "run_title"]

# (phase, column, label, style) drawn when the column has data.
CURVES = {
    "search": [("train_acc", "train", ":"), ("val_acc", "val", "-")],
    "retrain": [("train_acc", "train", ":"), ("val_acc", "val", "--"), ("test_acc", "test", "-")],
}
PHASE_TITLES = {"search": "search (supernet)", "retrain": "retrain (final architecture)"}


def panel_grid(nrows: int, ncols: int, *, panel: tuple[float, float], left: float = 0.8, right: float = 0.25,
               top: float = 0.6, bottom: float = 0.6, wspace: float = 0.6, hspace: float = 0.6,
               **subplots_kw):
    """A figure of ``nrows x ncols`` panels laid out in inches (panel size, margins, gaps).

    A fixed layout instead of ``layout="constrained"``: the same result for these simple
    grids at half the drawing time (constrained layout measures every tick label twice).
    """
    pw, ph = panel
    width = left + ncols * pw + (ncols - 1) * wspace + right
    height = top + nrows * ph + (nrows - 1) * hspace + bottom
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "bottom": bottom / height, "top": 1 - top / height,
        "wspace": wspace / pw, "hspace": hspace / ph}, **subplots_kw)
    return fig, axes


def run_title(run: Run) -> str:
    parts = [run.method]
    if run.scope is not None:
        parts.append(f"scope {run.scope}")
    if run.dataset:
        parts.append(run.dataset)
    if run.seed is not None:
        parts.append(f"seed {run.seed}")
    return f"{run.name}: " + ", ".join(parts)


def plot_curves(run: Run) -> Figure | None:
    """Accuracy (%) over epochs, one panel per phase present (search val acc, retrain test
    acc, plus train/val for context).  None when ``metrics.csv`` has no accuracy."""
    phases = [p for p in CURVES if any(c in run.metrics and run.phase(p)[c].notna().any()
                                       for c, _, _ in CURVES[p])]
    if not phases:
        return None
    fig, axes = panel_grid(1, len(phases), panel=(4.6, 3.0), top=0.55, bottom=0.55, wspace=0.8)
    axes = axes[0]
    for ax, phase in zip(axes, phases):
        rows = run.phase(phase)
        for col, label, ls in CURVES[phase]:
            if col in rows and rows[col].notna().any():
                r = rows[["epoch", col]].dropna()
                ax.plot(r["epoch"], 100 * r[col], ls, marker="o" if len(r) <= 30 else None,
                        ms=3, lw=1.5, label=f"{label} acc")
        if phase == "search" and run.exit_epoch is not None:
            ax.axvline(run.exit_epoch, color="tab:red", ls="-.", lw=1, label=f"exit (epoch {run.exit_epoch:g})")
        if phase == "retrain" and run.top1 is not None:
            ax.axhline(100 * run.top1, color="grey", ls=":", lw=1, label=f"final top-1 {100 * run.top1:.2f}%")
        ax.set_title(PHASE_TITLES[phase])
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(run_title(run), y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig

