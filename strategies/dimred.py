"""Dimensionality reduction for DR+SCANN: range normalisation, nine DR methods, Algorithm 1.

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (``../shared/seeds/002_d08e71b4be716ba4.txt``),
Sec. 3.2.  Data are range-normalised per feature to [0, 1] (min and max from the *training*
split only; held-out values may fall outside), then mapped from ``d`` to ``k = round(r * d)``
features, ``r`` being the *feature compression ratio* in (0, 1).  Methods (scikit-learn):

=================  ========================================================================
``pca``            principal component analysis
``fa``             factor analysis
``ica``            independent component analysis (FastICA)
``kpca``           kernel PCA (RBF kernel)
``isomap``         Isomap (out-of-sample transform through its neighbour graph)
``rp_gaussian``    random projection, i.i.d. N(0, 1/k) entries
``rp_binary``      random projection, +-1 entries with probability 1/2 each (scaled by 1/sqrt(k))
``rp_achlioptas``  Achlioptas' sparse projection: sqrt(3) x {+1, 0, -1} w.p. {1/6, 2/3, 1/6}
``rp_li``          Li, Hastie and Church's very sparse projection, density 1/sqrt(d)
``spectral``       spectral embedding -- **transductive**: it has no transform for held-out data,
                   so it is refused unless ``allow_transductive=True``, and then embeds train,
                   validation and test data *together* (the result is marked ``transductive``)
=================  ========================================================================

Deviation: the reduced features are centred and divided by *one* scale for all of them
(:class:`GlobalScaler`, fit on the reduced training split), so every method hands the network
inputs of unit overall spread (the paper normalises only before DR; KPCA or Isomap outputs otherwise
differ in scale by orders of magnitude).  One scalar keeps the relative spread of the components --
PCA's ordering by variance, a random projection's geometry -- as the paper's unnormalised outputs do.
Range-normalising every reduced feature to [0, 1] instead would blow the low-variance tail
components (mostly noise) up to the scale of the principal ones: on digits that costs the DR models
about 2 points of test accuracy (``bench/results/scann/NOTES.md``).

Algorithm 1 (:func:`dr_search`): for every method and every ratio (largest first) reduce the data,
train the *DR model* -- the baseline MLP with every hidden layer shrunk by the same ratio
(:func:`shrink_hidden`; Fig. 3) -- on the reduced training split and score it on the reduced
validation split.  A method whose first (mildest) ratio is already worse than the best result so
far by more than ``poor_margin`` is terminated early; a method stops reducing further once its
accuracy drops more than ``drop_margin`` below its own best.  The best validation accuracy
(ties: the smaller ratio) wins (``select="best"``, the paper's rule: its DR (H.A.) model).
``select="most_compressed"`` keeps that method and takes its *smallest* ratio whose validation
accuracy is within ``tolerance`` of the reference (the baseline's; the best DR model's if none is
given), the best model when none is -- the paper's DR (M.C.) model: its Table VI note says the H.A.
and M.C. DR columns "employ the same DR method, [but] may use different DR ratios".  DR+SCANN then
starts SCANN from the most compressed DR model that holds the baseline's accuracy, which is what a
search for a *compact* network wants (on breast_cancer the DR model at ratio 0.25 is already 11.8x
smaller than the baseline, and the 10x networks grown from it lose less accuracy than those grown
from the milder ratios' DR models: ``bench/results/scann/NOTES.md``).

This module does not train networks itself: Algorithm 1 takes an ``evaluate(reduced) -> DREval``
callable, so it runs with any model.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, get_args

import numpy as np

from search_spaces.errors import UserError

__all__ = [
    "DR_METHODS",
    "INDUCTIVE_METHODS",
    "DRMethod",
    "RangeNormalizer",
    "GlobalScaler",
    "ReducedData",
    "DREval",
    "DRCandidate",
    "DRSearchResult",
    "DR_SELECTS",
    "DrSelect",
    "check_ratio",
    "n_components",
    "shrink_hidden",
    "make_reducer",
    "reduce_dataset",
    "dr_search",
]


class _AffineScaler:
    """``(x - shift) / scale`` with both fitted on the data given to :meth:`fit` (subclasses say how)."""

    what = "scaling"

    def _fit(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def _shift_scale(self):
        raise NotImplementedError

    def fit(self, X: np.ndarray):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise UserError(f"{self.what} needs a non-empty 2-D array, got shape {X.shape}")
        self._fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        shift, scale = self._shift_scale()
        if shift is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return (np.asarray(X, dtype=np.float64) - shift) / scale

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)


class RangeNormalizer(_AffineScaler):
    """Per-feature ``(x - min) / (max - min)`` with min/max from the data given to :meth:`fit`.

    Constant features (max == min) are only shifted (range taken as 1), never divided by 0.
    """

    what = "range normalisation"

    def __init__(self):
        self.min_: np.ndarray | None = None
        self.range_: np.ndarray | None = None

    def _fit(self, X: np.ndarray) -> None:
        self.min_ = X.min(0)
        span = X.max(0) - self.min_
        self.range_ = np.where(span > 0, span, 1.0)

    def _shift_scale(self):
        return self.min_, self.range_


class GlobalScaler(_AffineScaler):
    """``(x - mean) / scale``: per-feature mean, one ``scale`` for all features -- the root mean
    square of the per-feature standard deviations -- from the data given to :meth:`fit`.

    Unlike a per-feature normalisation it keeps the features' relative spread (a low-variance
    principal component stays small).  Data with no spread at all are only centred.
    """

    def __init__(self):
        self.mean_: np.ndarray | None = None
        self.scale_: float | None = None

    def _fit(self, X: np.ndarray) -> None:
        self.mean_ = X.mean(0)
        scale = float(np.sqrt(np.mean(X.var(0))))
        self.scale_ = scale if scale > 0 else 1.0

    def _shift_scale(self):
        return self.mean_, self.scale_


@dataclass(frozen=True)
class DRMethod:
    name: str
    description: str
    make: Callable[[int, int, int, int], Any]  # (k, d, n_train, seed) -> sklearn estimator
    transductive: bool = False


def _pca(k, d, n, seed):
    from sklearn.decomposition import PCA
    return PCA(n_components=k, random_state=seed)


def _fa(k, d, n, seed):
    from sklearn.decomposition import FactorAnalysis
    return FactorAnalysis(n_components=k, svd_method="lapack", random_state=seed)


def _ica(k, d, n, seed):
    from sklearn.decomposition import FastICA
    return FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=seed)


def _kpca(k, d, n, seed):
    from sklearn.decomposition import KernelPCA
    return KernelPCA(n_components=k, kernel="rbf", random_state=seed)


def _isomap(k, d, n, seed):
    from sklearn.manifold import Isomap
    return Isomap(n_components=k, n_neighbors=max(2, min(10, n - 1)))


def _rp_gaussian(k, d, n, seed):
    from sklearn.random_projection import GaussianRandomProjection
    return GaussianRandomProjection(n_components=k, random_state=seed)


def _rp_sparse(density):
    def make(k, d, n, seed):
        from sklearn.random_projection import SparseRandomProjection
        dens = 1.0 / math.sqrt(d) if density == "li" else density
        return SparseRandomProjection(n_components=k, density=dens, dense_output=True, random_state=seed)
    return make


def _spectral(k, d, n, seed):
    from sklearn.manifold import SpectralEmbedding
    return SpectralEmbedding(n_components=k, random_state=seed)


DR_METHODS: dict[str, DRMethod] = {}
for _m in (
    DRMethod("pca", "principal component analysis", _pca),
    DRMethod("fa", "factor analysis", _fa),
    DRMethod("ica", "independent component analysis (FastICA)", _ica),
    DRMethod("kpca", "kernel PCA, RBF kernel", _kpca),
    DRMethod("isomap", "Isomap", _isomap),
    DRMethod("rp_gaussian", "random projection, Gaussian entries", _rp_gaussian),
    DRMethod("rp_binary", "random projection, +-1 entries", _rp_sparse(1.0)),
    DRMethod("rp_achlioptas", "Achlioptas' sparse random projection (density 1/3)", _rp_sparse(1.0 / 3.0)),
    DRMethod("rp_li", "Li's very sparse random projection (density 1/sqrt(d))", _rp_sparse("li")),
    DRMethod("spectral", "spectral embedding (transductive: no out-of-sample transform)", _spectral, True),
):
    if _m.name in DR_METHODS:
        raise ValueError(f"DR method {_m.name!r} registered twice")
    DR_METHODS[_m.name] = _m
INDUCTIVE_METHODS: tuple[str, ...] = tuple(n for n, m in DR_METHODS.items() if not m.transductive)


def get_method(name: str) -> DRMethod:
    if name not in DR_METHODS:
        raise UserError(f"unknown DR method {name!r}; valid: {', '.join(DR_METHODS)}")
    return DR_METHODS[name]


def check_ratio(ratio: Any, key: str = "dr_ratio") -> float:
    """A feature compression ratio must be a number strictly between 0 and 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 < ratio < 1:
        raise UserError(f"{key} must be a number strictly between 0 and 1, got {ratio!r}")
    return float(ratio)


def n_components(num_features: int, ratio: float) -> int:
    """``k = round(ratio * d)``, at least 1 and at most ``d - 1``."""
    check_ratio(ratio)
    if num_features < 2:
        raise UserError(f"dimensionality reduction needs at least 2 features, got {num_features}")
    return int(min(num_features - 1, max(1, round(ratio * num_features))))


def shrink_hidden(hidden: Sequence[int], ratio: float) -> tuple[int, ...]:
    """The DR model's hidden layers: every layer shrunk by the same ratio (Sec. 3.2, Fig. 3)."""
    check_ratio(ratio)
    return tuple(max(1, math.ceil(h * ratio)) for h in hidden)


def make_reducer(method: str, k: int, num_features: int, num_train: int, seed: int = 0) -> Any:
    return get_method(method).make(k, num_features, num_train, seed)


@dataclass
class ReducedData:
    """Normalised, reduced splits plus the fitted pieces that map new data the same way."""

    method: str
    ratio: float
    n_components: int
    X_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray | None
    transductive: bool
    normalizer: RangeNormalizer = field(repr=False)
    reducer: Any = field(repr=False)
    post_normalizer: GlobalScaler = field(repr=False)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map new raw samples like the training data (inductive methods only)."""
        if self.transductive:
            raise UserError(f"DR method {self.method!r} is transductive: it cannot map new samples")
        return self.post_normalizer.transform(self.reducer.transform(self.normalizer.transform(X)))


def reduce_dataset(X_train: np.ndarray, X_val: np.ndarray, X_test: np.ndarray | None = None, *, method: str,
                   ratio: float, seed: int = 0, allow_transductive: bool = False,
                   blas_threads: int | None = 1) -> ReducedData:
    """Range-normalise (fit on train), reduce to ``round(ratio * d)`` features (fit on train), then
    centre and scale them with one :class:`GlobalScaler` (fit on the reduced training data).

    ``blas_threads`` limits BLAS threads while fitting (``None``: leave them alone): tabular data
    are small, and a multi-threaded BLAS on a busy machine made factor analysis ~50x slower.
    """
    ratio = check_ratio(ratio)
    spec = get_method(method)
    X_train = np.asarray(X_train, dtype=np.float64)
    d = X_train.shape[1]
    k = n_components(d, ratio)
    norm = RangeNormalizer().fit(X_train)
    parts = [norm.transform(X_train), norm.transform(X_val)] + ([norm.transform(X_test)] if X_test is not None else [])
    reducer = spec.make(k, d, len(X_train), seed)
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads):
        warnings.simplefilter("ignore")  # FastICA / FA convergence chatter
        if spec.transductive or not hasattr(reducer, "transform"):
            if not allow_transductive:
                raise UserError(f"DR method {method!r} cannot transform held-out data (it is transductive); "
                                "set allow_transductive=true to embed train, validation and test data together")
            sizes = np.cumsum([len(p) for p in parts])[:-1]
            reduced = np.split(reducer.fit_transform(np.vstack(parts)), sizes)
            transductive = True
        else:
            reducer.fit(parts[0])
            reduced = [reducer.transform(p) for p in parts]
            transductive = False
    reduced = [np.asarray(r, dtype=np.float64) for r in reduced]
    if not all(np.isfinite(r).all() for r in reduced):
        raise UserError(f"DR method {method!r} produced non-finite features at ratio {ratio}")
    post = GlobalScaler().fit(reduced[0])
    reduced = [post.transform(r) for r in reduced]
    return ReducedData(method=method, ratio=ratio, n_components=k, X_train=reduced[0], X_val=reduced[1],
                       X_test=reduced[2] if X_test is not None else None, transductive=transductive,
                       normalizer=norm, reducer=reducer, post_normalizer=post)


# --------------------------------------------------------------------------- Algorithm 1


@dataclass
class DREval:
    """What ``evaluate`` returns for one reduced data set."""

    val_acc: float  # the score Algorithm 1 decides on (validation accuracy, or a cross-validated one)
    test_acc: float | None = None
    payload: Any = None  # e.g. the trained DR model and its figures
    extra: dict[str, Any] = field(default_factory=dict)  # more columns for the record (dr.csv)


@dataclass
class DRCandidate:
    method: str
    ratio: float
    n_components: int
    val_acc: float | None
    test_acc: float | None
    status: str  # ok | stopped (accuracy dropped) | terminated (poor method) | skipped
    extra: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return {"dr_method": self.method, "dr_ratio": self.ratio, "n_components": self.n_components,
                "val_acc": self.val_acc, "test_acc": self.test_acc, "status": self.status, **self.extra}


@dataclass
class DRSearchResult:
    best: DRCandidate  # the selected DR model (``select``)
    data: ReducedData
    payload: Any
    records: list[DRCandidate]
    highest: DRCandidate | None = None  # the best validation accuracy (Algorithm 1's own pick)


DrSelect = Literal["best", "most_compressed"]
DR_SELECTS = get_args(DrSelect)


def dr_search(X_train: np.ndarray, X_val: np.ndarray, X_test: np.ndarray | None, *,
              evaluate: Callable[[ReducedData], DREval], methods: Sequence[str] = INDUCTIVE_METHODS,
              ratios: Sequence[float] = (0.75, 0.5, 0.25), seed: int = 0, allow_transductive: bool = False,
              reference_acc: float | None = None, poor_margin: float = 0.05, drop_margin: float = 0.02,
              select: str = "best", tolerance: float = 0.005,
              on_record: Callable[[DRCandidate], None] | None = None,
              blas_threads: int | None = 1) -> DRSearchResult:
    """Algorithm 1: search DR methods x feature compression ratios (see the module docstring).

    ``reference_acc`` (e.g. the baseline MLP's validation accuracy) also counts as "the best so
    far" for early termination, and is what ``select="most_compressed"`` holds the DR models to
    (within ``tolerance``).  Every (method, ratio) gets a record, also those skipped.
    """
    if select not in DR_SELECTS:
        raise UserError(f"dr_select must be one of {', '.join(DR_SELECTS)}, got {select!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if not methods:
        raise UserError("dr_search needs at least one DR method")
    for m in methods:
        spec = get_method(m)
        if spec.transductive and not allow_transductive:
            raise UserError(f"DR method {m!r} cannot transform held-out data (it is transductive); "
                            "set allow_transductive=true or leave it out of the search")
    ratios = sorted({check_ratio(r, "dr_ratios") for r in ratios}, reverse=True)
    if not ratios:
        raise UserError("dr_search needs at least one ratio")
    d = np.asarray(X_train).shape[1]
    records: list[DRCandidate] = []
    best: tuple[DRCandidate, ReducedData, Any] | None = None
    best_acc = -math.inf if reference_acc is None else float(reference_acc)

    def record(c: DRCandidate) -> None:
        records.append(c)
        if on_record is not None:
            on_record(c)

    # (candidate, data, payload) of every model the method that holds the best trained: the M.C.
    # choice is among them (the other methods' data are dropped as soon as they cannot be chosen)
    trained: dict[str, list[tuple[DRCandidate, ReducedData, Any]]] = {}
    for method in methods:
        method_best = -math.inf
        status_rest = None
        trained[method] = []
        for i, ratio in enumerate(ratios):
            k = n_components(d, ratio)
            if status_rest is not None:
                record(DRCandidate(method, ratio, k, None, None, "skipped"))
                continue
            data = reduce_dataset(X_train, X_val, X_test, method=method, ratio=ratio, seed=seed,
                                  allow_transductive=allow_transductive, blas_threads=blas_threads)
            ev = evaluate(data)
            acc = float(ev.val_acc)
            status = "ok"
            if i == 0 and acc < best_acc - poor_margin:
                status = status_rest = "terminated"
            elif acc < method_best - drop_margin:
                status = status_rest = "stopped"
            cand = DRCandidate(method, ratio, k, acc, ev.test_acc, status, dict(ev.extra))
            record(cand)
            if select == "most_compressed":
                trained[method].append((cand, data, ev.payload))
            if best is None or (acc, -ratio) > (best[0].val_acc, -best[0].ratio):
                best = (cand, data, ev.payload)
            method_best = max(method_best, acc)
            best_acc = max(best_acc, acc)
        for m in [m for m in trained if best is None or m != best[0].method]:
            del trained[m]
    assert best is not None
    chosen = best
    if select == "most_compressed":
        floor = (best[0].val_acc if reference_acc is None else float(reference_acc)) - tolerance - 1e-12
        held = [t for t in trained[best[0].method] if t[0].val_acc >= floor]
        if held:
            chosen = min(held, key=lambda t: (t[0].ratio, -t[0].val_acc))
    return DRSearchResult(best=chosen[0], data=chosen[1], payload=chosen[2], records=records, highest=best[0])
