"""Which checkpoint of a SCANN synthesis is the output: every rule in one place.

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt``.  A checkpoint is anything with
``iteration``, ``val_acc``, ``params`` and ``connections`` (:class:`strategies.scann.Checkpoint`,
or a row of a run's ``structure.csv``).

* :func:`best_validation` -- Algorithm 2's output, the paper's "H.A." network: the highest
  validation accuracy, ties: fewer connections.
* :func:`most_compressed` -- the paper's "M.C." network (Tables VI/VII): the fewest parameters among
  the checkpoints within ``tolerance`` of a reference accuracy (:func:`within_tolerance`; the MLP
  baseline's), ties: the higher validation accuracy.
* :func:`at_min_ratio` -- for a size budget: the least compressed checkpoint at least ``min_ratio``
  x smaller than the baseline (:func:`compression_ratio`), picked by its size alone.
* :func:`cv_choice` -- the most compressed checkpoint within ``tolerance`` on an accuracy pooled
  over cross-validation runs (ours: for data sets whose validation split cannot resolve the
  tolerance), with :func:`pooled_se`, the standard error of the pooled gap, for reading.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Sequence

from search_spaces.errors import UserError

__all__ = ["Select", "at_min_ratio", "best_validation", "compression_ratio", "cv_choice", "most_compressed",
           "pooled_se", "select_checkpoint", "within_tolerance"]

#: The trial's ``select``: Algorithm 2's best validation checkpoint, the M.C. one, or a size budget.
Select = Literal["best_val", "most_compressed", "min_ratio"]


def within_tolerance(acc: float, reference: float, tolerance: float) -> bool:
    """``acc`` is at most ``tolerance`` below ``reference`` (with a margin for float round-off)."""
    return acc >= reference - tolerance - 1e-12


def best_validation(checkpoints: Iterable[Any]) -> Any:
    """The highest validation accuracy; ties: fewer connections, then the earliest."""
    return max(checkpoints, key=lambda c: (c.val_acc, -c.connections))


def most_compressed(checkpoints: Iterable[Any]) -> Any:
    """The fewest parameters; ties: the higher validation accuracy, then the earliest."""
    return min(checkpoints, key=lambda c: (c.params, -c.val_acc))


def select_checkpoint(select: str, *, best: Any, compact: Any | None) -> tuple[Any, bool]:
    """``best_val`` (``best``) or ``most_compressed`` (``compact``, the M.C. checkpoint within the
    tolerance, falling back to ``best`` when none is); ``(checkpoint, met)``, ``met`` saying whether
    a checkpoint within the tolerance exists."""
    if select not in ("best_val", "most_compressed"):
        raise UserError(f"select must be best_val or most_compressed, got {select!r}")
    met = compact is not None
    return (compact, True) if select == "most_compressed" and met else (best, met)


def compression_ratio(params: int, baseline_params: int, *, fixed_params: int = 0) -> float:
    """``baseline_params`` / the network's own part of ``params``: in image mode ``fixed_params``
    are the convolutional extractor's (not SCANN's) and ``baseline_params`` the baseline's fully
    connected part, so the ratio is that of the part SCANN synthesises."""
    return baseline_params / max(params - fixed_params, 1)


def at_min_ratio(checkpoints: Sequence[Any], min_ratio: float, *, baseline_params: int,
                 fixed_params: int = 0) -> tuple[Any, bool]:
    """The least compressed checkpoint at least ``min_ratio`` x smaller than the baseline, picked by
    its size alone (ties: validation accuracy); ``(checkpoint, True)``.  If none got that small, the
    most compressed one, ``(checkpoint, False)``."""
    reached = [c for c in checkpoints
               if compression_ratio(c.params, baseline_params, fixed_params=fixed_params) >= min_ratio - 1e-9]
    if reached:
        return max(reached, key=lambda c: (c.params, c.val_acc)), True
    return most_compressed(checkpoints), False


def pooled_se(gaps: Sequence[float], weights: Sequence[float]) -> float:
    """Standard error of the pooled accuracy gap ``sum(w * gap)`` from its k runs' own gaps (each
    run's held-out accuracy minus the baseline's there; ``weights`` = each run's share of the pooled
    samples): ``sqrt(k / (k - 1) * sum(w^2 (gap - pooled)^2))``, i.e. ``sd / sqrt(k)`` for equal
    shares -- the k-fold standard error of Hastie et al., *Elements of Statistical Learning* Sec. 7.10
    (the runs share training data, so it understates the error somewhat)."""
    k = len(gaps)
    g = sum(w * x for w, x in zip(weights, gaps))
    return math.sqrt(k / (k - 1) * sum(w * w * (x - g) ** 2 for w, x in zip(weights, gaps)))


def cv_choice(checkpoints: Sequence[Any], folds: Sequence[dict[str, Any]], *, reference_acc: float, n_val: int,
              tolerance: float) -> tuple[Any, bool, list[dict[str, Any]], float]:
    """The most compressed checkpoint within ``tolerance`` on the pooled accuracy.

    Each checkpoint's accuracy is pooled over the out-of-fold predictions of ``folds`` (dicts with
    ``fold``, ``n`` held-out samples, ``baseline_acc`` and per-iteration ``acc`` / ``params``) plus
    the main run's ``n_val`` validation predictions (its ``val_acc``); the baseline's
    (``reference_acc`` on the main validation split) is pooled the same way.  None within the
    tolerance: the best pooled checkpoint (ties: validation accuracy, size).  Returns
    ``(checkpoint, met, rows, the baseline's pooled accuracy)``, one row per checkpoint (the
    ``cv.csv`` table of a trial)."""
    n = sum(f["n"] for f in folds) + n_val

    def pooled(fold_accs, val_acc):
        return (sum(a * f["n"] for a, f in zip(fold_accs, folds)) + val_acc * n_val) / n

    base = pooled([f["baseline_acc"] for f in folds], reference_acc)
    weights = [n_val / n] + [f["n"] / n for f in folds]
    rows, eligible = [], []
    for ck in checkpoints:
        acc = pooled([f["acc"][ck.iteration] for f in folds], ck.val_acc)
        ok = within_tolerance(acc, base, tolerance)
        gaps = [ck.val_acc - reference_acc] + [f["acc"][ck.iteration] - f["baseline_acc"] for f in folds]
        rows.append({"iteration": ck.iteration, "params": ck.params, "val_acc": ck.val_acc, "cv_acc": acc,
                     "cv_baseline_acc": base, "cv_gap_se": pooled_se(gaps, weights), "pooled_n": n,
                     "eligible": int(ok), "val_baseline_acc": reference_acc,
                     **{f"fold{f['fold']}_acc": f["acc"][ck.iteration] for f in folds},
                     **{f"fold{f['fold']}_baseline_acc": f["baseline_acc"] for f in folds},
                     **{f"fold{f['fold']}_params": f["params"][ck.iteration] for f in folds}})
        if ok:
            eligible.append((ck, acc))
    if not eligible:
        cv_acc = {r["iteration"]: r["cv_acc"] for r in rows}
        return max(checkpoints, key=lambda c: (cv_acc[c.iteration], c.val_acc, -c.params)), False, rows, base
    ck, _ = min(eligible, key=lambda e: (e[0].params, -e[1], -e[0].val_acc))
    return ck, True, rows, base
