"""Trial runner for SCANN and DR+SCANN (one trial = baseline + optional DR + one synthesis).

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt``.  Tabular data (Sec. 4.2): range-normalise
(fit on the training split), train the fully connected baseline (the best-validation MLP of
:data:`BASELINE_GRID`, or ``baseline_hidden``), optionally reduce the features (``dr_method``: one
method at ``dr_ratio``, or ``search`` = Algorithm 1 over ``dr_methods`` x ``dr_ratios``; ``dr_select``:
``best`` -- its best validation DR model, the paper's DR (H.A.) -- or ``most_compressed`` -- that
method's smallest ratio within ``tolerance`` of the baseline's validation accuracy, the paper's DR
(M.C.); :func:`strategies.dimred.dr_search`) and train the DR model (every hidden layer shrunk by
the ratio), then run SCANN (Algorithm 2) on the (reduced) data.  Image data (Sec. 4.1; ``mnist5k``
embedded or ``mnist`` from ``data_dir``): train LeNet-5 (Caffe, :mod:`search_spaces.lenet`) with SGD
lr 0.03 / momentum 0.9 / wd 1e-4, freeze its convolutional part as a feature extractor and
synthesise the fully connected part with SCANN.  ``optimizer``, ``lr``, ``momentum`` and
``weight_decay`` override the synthesis's training and, on tabular data, the baseline's;
``scann_weight_decay`` the synthesis's weight decay alone (the baseline, the DR models and the SCANN
benchmark's reference trainings keep ``weight_decay``).

The run is a sequence of resumable training phases (:class:`strategies.training.TrainingPhase`):
``baseline`` (image mode: the LeNet-5 epochs), ``prep`` (one step: the tabular baseline grid and DR,
or the image features; its result is kept in ``prep.pt`` until the run ends), ``scann`` (one epoch =
one iteration of Algorithm 2) and, with ``select_folds``, ``cv`` (one epoch = one cross-validation run).

Run folder: ``metrics.csv`` (phase ``baseline`` / ``dr`` rows, then one ``scann`` row per
iteration, reported to NNI), ``structure.csv`` (architecture state per iteration: neurons,
connections, depth, skip connections, active inputs, group sizes, operations), ``dr.csv``
(Algorithm 1's records), ``arch.json`` (the exported network: structure and every connection,
plus how inputs are preprocessed), ``model.pt`` (state_dict of the pruned dense-per-layer model;
image mode: extractor + pruned FC), ``masked.pt`` (weights + masks), ``preprocess.pkl`` (fitted
normaliser/DR transform, tabular), ``summary.json``.

The exported network (``select``, rules in :mod:`strategies.scann.selection`): ``best_val`` --
Algorithm 2's best validation checkpoint; ``most_compressed`` -- the paper's M.C. network, the most
compressed checkpoint within ``tolerance`` of the baseline's validation accuracy (or pooled
accuracy, below); ``min_ratio`` -- the least compressed checkpoint at least ``min_ratio`` x smaller
than the baseline, picked by its size alone (for a size budget; the SCANN benchmark's verdict
judges this network at 10x; ``mc_met`` = 0 and the most compressed checkpoint when no iteration
got that small).

Choosing the size by cross-validation (``select_folds`` = k >= 3, tabular, ``select=most_compressed``):
a small validation split cannot tell whether a pruned network holds the baseline's accuracy
(breast_cancer: 57 samples, one sample = 1.75 points; digits: 180, 0.56 points).  The main run is
then one of k runs: the training split is cut into k - 1 stratified chunks, and the whole trial --
the baseline architecture, the same DR method and ratio (+ its DR model), SCANN with the same
settings and keep schedule -- is repeated k - 1 times, each time on the training split without one
chunk plus the validation split, scoring the held-out chunk.  With chunks the size of the
validation split (k - 1 = training / validation samples: **k = 8** at the default 70/10/20 split)
every run trains on as many samples as the main run, so its accuracy estimates the main run's (k
ordinary folds would train on fewer samples; the dense baseline gains more from extra data than a
pruned network does, so out of fold the pruned sizes would look better against the baseline than
they are: about 0.4 points on digits).  Each held-out chunk chooses nothing: every network keeps
the epoch the main run chose on its validation split (``train_mlp(keep="last")``,
``ScannSynthesis(epoch_plan=...)``).  Iteration ``i`` prunes to the same size in every run, so each
iteration gets a **pooled accuracy**: one prediction per training + validation sample (the folds'
held-out chunks plus the main run's validation split: 455 on breast_cancer, 1,437 on digits).  The
output is the most compressed checkpoint whose pooled accuracy is within ``tolerance`` of the
baseline's, pooled the same way (if none is, the checkpoint with the best pooled accuracy;
:func:`strategies.scann.cv_choice`).  The test split is never used.  ``cv.csv`` holds the curves:
per size, every run's held-out accuracy and the baseline's on the same samples, the pooled
accuracies and the standard error of their gap (:func:`strategies.scann.pooled_se`, for reading:
the choice does not use it).  Costs k - 1 more syntheses.  With ``dr_method=search`` Algorithm 1 is
scored the same way: every DR model it trains is also trained on the k - 1 chunk runs (DR fit on
each run's training data, the main run's epochs) and judged -- early termination, stopping, the
final choice -- on its pooled accuracy against the baseline's (``dr.csv``: ``val_acc`` is that
score, ``split_val_acc`` the validation split's own; ``dr_selection`` in the summary says which),
so that a validation tie on a small split does not pick a DR model that is worse out of fold.

Counting: ``params`` are connections + biases of the live structure, ``flops`` 2 x connections
per sample (+ the convolutions in image mode), both by ``search_spaces.cost`` on the exactly
sparse model.  ``compression_ratio`` = baseline params / params; in image mode it is computed on
the fully connected part, the part SCANN synthesises (``total_compression_ratio`` is the whole
network's).  Without DR the ``dr_*`` figures are those of the baseline (the DR model at ratio 1)
and ``dr_ratio`` is 1, so every trial reports the same keys.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from typing import Any

import torch

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.feedforward import FeedForwardNet
from search_spaces.lenet import LENET_FC, ImageScannModel, lenet5
from strategies.dimred import (
    DR_METHODS,
    DrSelect,
    INDUCTIVE_METHODS,
    DREval,
    RangeNormalizer,
    check_ratio,
    dr_search,
    reduce_dataset,
    shrink_hidden,
)
from strategies.scann import (
    IMAGE_TRAINING,
    ScannConfig,
    ScannSynthesis,
    Select,
    TensorData,
    at_min_ratio,
    compression_ratio,
    cv_choice,
    export_network,
    extract_features,
    network_cost,
    seed_network,
    train_mlp,
)
from strategies.training import evaluate, fit_epoch

from ..data import TABULAR_DATASETS, load_tabular_dataset, make_loaders
from ..export import degeneracy, test_batch
from ..harness import CommonConfig, RunContext, load_images, resolve_device
from ..runfolder import atomic_torch_save, atomic_write_bytes

__all__ = ["ScannTrialConfig", "run", "BASELINE_GRID", "IMAGE_DATASETS_SCANN", "baseline_test_accs"]

#: Hidden layers of the candidate MLP baselines (tabular); the best on validation is the baseline
#: ("the best MLP baseline found with the help of the validation set", Sec. 4.2).
BASELINE_GRID: tuple[tuple[int, ...], ...] = ((32,), (64,), (128,), (64, 32), (128, 64))
IMAGE_DATASETS_SCANN = ("mnist5k", "mnist")
#: Columns of ``structure.csv`` (one row per iteration) and of the ``scann`` rows of ``metrics.csv``.
STRUCTURE_KEYS = ("iteration", "ops", "neurons", "connections", "depth", "skip_connections", "active_inputs",
                  "group_sizes", "raw_neurons", "raw_connections", "allowed_connections", "grown", "pruned",
                  "neurons_added", "neurons_removed", "params", "flops", "epoch", "val_acc", "test_acc")
#: The run's training phases, in order (``baseline``: image mode only; ``cv``: with ``select_folds``).
PHASES = ("baseline", "prep", "scann", "cv")
METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "params", "flops", "connections",
               "neurons", "depth")


@dataclass(frozen=True, kw_only=True)
class ScannTrialConfig(CommonConfig, ScannConfig):
    """Flat trial config: data (CommonConfig + tabular keys) + synthesis (ScannConfig) + DR, baseline
    and output choice.

    SCANN settings left at ``None`` take the scheme's paper defaults
    (:data:`strategies.scann.SCHEME_PRESETS`); training settings left at ``None`` take Adam
    (tabular, Sec. 4.2) or SGD 0.03/0.9/1e-4 (image, Sec. 4.1).
    """

    dataset: str = "breast_cancer"
    csv: str | None = None
    label: str | None = None
    test_fraction: float = 0.2
    augment: bool = False
    # DR (tabular only)
    dr_method: str = "none"
    dr_ratio: float = 0.5
    dr_methods: tuple[str, ...] = ()
    dr_ratios: tuple[float, ...] = (0.75, 0.5, 0.25)
    dr_select: DrSelect = "best"
    allow_transductive: bool = False
    # baseline
    baseline_hidden: tuple[int, ...] = ()
    baseline_epochs: int = 100
    conv_epochs: int = 8
    # the synthesis's weight decay alone (None: weight_decay)
    scann_weight_decay: float | None = None
    # output
    select: Select = "best_val"
    tolerance: float = 0.005
    min_ratio: float = 10.0
    select_folds: int = 0

    def __post_init__(self):
        super().__post_init__()
        valid = TABULAR_DATASETS + IMAGE_DATASETS_SCANN
        if self.dataset not in valid:
            hint = " (the tabular 8x8 digits are 'digits_flat')" if self.dataset == "digits" else ""
            raise UserError(f"SCANN data set {self.dataset!r} is not supported{hint}; valid: {', '.join(valid)}")
        check_ratio(self.dr_ratio, "dr_ratio")
        for r in self.dr_ratios:
            check_ratio(r, "dr_ratios")
        if not self.dr_ratios:
            raise UserError("dr_ratios needs at least one ratio")
        if self.dr_select != "best" and self.dr_method != "search":
            raise UserError(f"dr_select={self.dr_select} applies to dr_method=search (Algorithm 1) only, "
                            f"not dr_method={self.dr_method}")
        if self.dr_method not in ("none", "search") and self.dr_method not in DR_METHODS:
            raise UserError(f"unknown dr_method {self.dr_method!r}; valid: none, search, {', '.join(DR_METHODS)}")
        for m in self.dr_methods:
            if m not in DR_METHODS:
                raise UserError(f"unknown DR method {m!r} in dr_methods; valid: {', '.join(DR_METHODS)}")
        wanted = list(self.dr_methods) if self.dr_method == "search" else [self.dr_method]
        for m in wanted:
            if m in DR_METHODS and DR_METHODS[m].transductive and not self.allow_transductive:
                raise UserError(f"DR method {m!r} cannot transform held-out data (it is transductive); "
                                "set allow_transductive=true to embed train, validation and test data together")
        if self.image_mode and self.dr_method != "none":
            raise UserError(f"dr_method applies to tabular data sets only (Sec. 3.1), not {self.dataset!r}")
        if not self.image_mode and self.limit is not None:
            raise UserError("limit applies to image data sets only")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if any(h < 1 for h in self.baseline_hidden):
            raise UserError(f"baseline_hidden sizes must be >= 1, got {self.baseline_hidden}")
        if self.baseline_epochs < 1 or self.conv_epochs < 1:
            raise UserError("baseline_epochs and conv_epochs must be >= 1")
        if self.tolerance < 0:
            raise UserError(f"tolerance must be >= 0, got {self.tolerance}")
        if not self.min_ratio >= 1:
            raise UserError(f"min_ratio must be >= 1 (a compression ratio against the baseline), got {self.min_ratio}")
        if self.select_folds < 0 or self.select_folds in (1, 2):
            raise UserError(f"select_folds must be 0 (off) or >= 3, got {self.select_folds}")
        if self.select_folds and (self.image_mode or self.select != "most_compressed"):
            raise UserError("select_folds applies to tabular data sets with select=most_compressed only")
        self.scann_config(100)  # range-check the resolved SCANN settings now, not after the baseline

    @property
    def image_mode(self) -> bool:
        return self.dataset in IMAGE_DATASETS_SCANN

    def training(self, image: bool | None = None) -> dict[str, Any]:
        """The baseline's optimizer settings (the data kind's defaults, overridden where set)."""
        return super().training(self.image_mode if image is None else image)

    def scann_config(self, baseline_neurons: int) -> ScannConfig:
        """The synthesis's resolved settings; ``scann_weight_decay`` in place of the weight decay when set."""
        scfg = self.resolve(baseline_neurons, image=self.image_mode)
        return scfg if self.scann_weight_decay is None else replace(scfg, weight_decay=self.scann_weight_decay)


class _Kept:
    """A plain value a training phase keeps in its checkpoint (the ``state_dict`` protocol)."""

    def __init__(self, value: Any):
        self.value = value

    def state_dict(self) -> Any:
        return list(self.value) if isinstance(self.value, list) else self.value

    def load_state_dict(self, value: Any) -> None:
        self.value = value


# --------------------------------------------------------------------------- preparation


def _mlp_row(phase: str, epoch: int, fig: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keys = ("val_acc", "val_loss", "test_acc", "test_loss", "params", "flops", "connections", "neurons")
    return {"phase": phase, "epoch": epoch, **{k: fig.get(k) for k in keys}, **extra}


def _train_kwargs(cfg: ScannTrialConfig) -> dict[str, Any]:
    return dict(batch_size=cfg.batch_size, seed=cfg.seed, **cfg.training())


def _fmt_hidden(hidden) -> str:
    return "-".join(map(str, hidden))


def _tabular_data(cfg: ScannTrialConfig, device: torch.device):
    """The trial's split and its range normalisation (fit on the training split): ``(splits, norm, data)``."""
    splits = load_tabular_dataset(cfg.dataset, csv=cfg.csv, label=cfg.label, val_fraction=cfg.val_fraction,
                                  test_fraction=cfg.test_fraction, seed=cfg.seed)
    norm = RangeNormalizer().fit(splits.X_train)
    full = TensorData.from_arrays(norm.transform(splits.X_train), splits.y_train, norm.transform(splits.X_val),
                                  splits.y_val, norm.transform(splits.X_test), splits.y_test, device=device)
    return splits, norm, full


def baseline_test_accs(cfg: ScannTrialConfig, hidden, trainings: int) -> list[float]:
    """Test accuracies of ``trainings`` trainings of the baseline MLP ``hidden`` on the trial's split,
    with the trial's baseline recipe: the first with the trial's seed -- the trial's own baseline
    network, the same figures -- the others with seeds ``seed + 1000 j`` (other initialisations and
    batch orders).  Their mean is the architecture's accuracy on the split without one network's
    initialisation noise (0.4-1.0 points of standard deviation on digits), the reference the SCANN
    benchmark judges its 10x networks against (``bench/scann_compression.py``).  Tabular data only."""
    if cfg.image_mode:
        raise UserError("baseline_test_accs: tabular data sets only")
    _, _, data = _tabular_data(cfg, resolve_device(cfg.device))
    accs = []
    for j in range(trainings):
        kw = {**_train_kwargs(cfg), "seed": cfg.seed + 1000 * j}
        accs.append(train_mlp(tuple(hidden), data, epochs=cfg.baseline_epochs, **kw)[1]["test_acc"])
    return accs


def _prepare_tabular(cfg: ScannTrialConfig, ctx: RunContext, device: torch.device) -> dict[str, Any]:
    splits, norm, full = _tabular_data(cfg, device)

    # ---- baseline: the best-validation MLP (ties: fewer parameters) ----
    grid = (cfg.baseline_hidden,) if cfg.baseline_hidden else BASELINE_GRID
    best = None
    for i, hidden in enumerate(grid):
        net, fig = train_mlp(hidden, full, epochs=cfg.baseline_epochs, **_train_kwargs(cfg))
        ctx.run.append("metrics", _mlp_row("baseline", i, fig, hidden=_fmt_hidden(hidden)))
        if best is None or (fig["val_acc"], -fig["params"]) > (best[2]["val_acc"], -best[2]["params"]):
            best = (hidden, net, fig)
    hidden, base_net, base_fig = best
    baseline = {**base_fig, "hidden": list(hidden)}

    prep: dict[str, Any] = {"mode": "tabular", "num_classes": splits.num_classes, "baseline": baseline,
                            "preprocess": {"kind": "range", "min": norm.min_.tolist(), "range": norm.range_.tolist()},
                            "preprocess_objects": {"normalizer": norm}}
    if cfg.dr_method == "none":
        prep.update(data=full, feature_names=list(splits.feature_names), seed_net=base_net.snapshot(),
                    seed_neurons=sum(hidden), dr=None)
        return prep

    # ---- DR: one method at one ratio, or Algorithm 1 ----
    # With select_folds, Algorithm 1 scores each DR model like the sizes are scored later: pooled
    # over the main run's validation split and the k - 1 chunk runs (each trained on as many samples,
    # for the epochs the main run chose), so a 180-sample validation split does not pick the method.
    pooled_dr = bool(cfg.select_folds) and cfg.dr_method == "search"
    parts = [_chunk_split(cfg, splits, j) for j in range(cfg.select_folds - 1)] if pooled_dr else []
    n_pool = len(splits.y_val) + sum(len(p[3]) for p in parts)
    fold_nets: dict[tuple, Any] = {}  # the chunk runs' networks, reused by _cv_fold (same data, same training)

    def pooled(val_acc: float, fold_accs: list[float]) -> float:
        return (val_acc * len(splits.y_val) + sum(a * len(p[3]) for a, p in zip(fold_accs, parts))) / n_pool

    def score(reduced) -> DREval:
        data = TensorData.from_arrays(reduced.X_train, splits.y_train, reduced.X_val, splits.y_val,
                                      reduced.X_test, splits.y_test, device=device)
        shrunk = shrink_hidden(hidden, reduced.ratio)
        net, fig = train_mlp(shrunk, data, epochs=cfg.baseline_epochs, **_train_kwargs(cfg))
        value, extra = fig["val_acc"], {}
        if pooled_dr:
            dr_spec = {"method": reduced.method, "ratio": reduced.ratio}
            accs = [_fold_mlp(cfg, shrunk, p, fig["epochs"], device, dr=dr_spec, fold=j, cache=fold_nets)[2]
                    for j, p in enumerate(parts)]
            value, extra = pooled(fig["val_acc"], accs), {"split_val_acc": fig["val_acc"], "pooled_n": n_pool}
        return DREval(val_acc=value, test_acc=fig.get("test_acc"), payload=(net, fig, shrunk, data), extra=extra)

    if cfg.dr_method == "search":
        methods = list(cfg.dr_methods) or list(INDUCTIVE_METHODS)
        reference = baseline["val_acc"]
        if pooled_dr:
            reference = pooled(reference, [_fold_mlp(cfg, hidden, p, base_fig["epochs"], device, fold=j,
                                                     cache=fold_nets)[2] for j, p in enumerate(parts)])
        result = dr_search(splits.X_train, splits.X_val, splits.X_test, evaluate=score, methods=methods,
                           ratios=cfg.dr_ratios, seed=cfg.seed, allow_transductive=cfg.allow_transductive,
                           reference_acc=reference, select=cfg.dr_select, tolerance=cfg.tolerance,
                           blas_threads=cfg.threads or 1,
                           on_record=lambda c: ctx.run.append("dr", c.as_row()))
        reduced, (dr_net, dr_fig, shrunk, data) = result.data, result.payload
        highest = (result.highest.method, result.highest.ratio)
    else:
        reduced = reduce_dataset(splits.X_train, splits.X_val, splits.X_test, method=cfg.dr_method,
                                 ratio=cfg.dr_ratio, seed=cfg.seed, allow_transductive=cfg.allow_transductive,
                                 blas_threads=cfg.threads or 1)
        ev = score(reduced)
        dr_net, dr_fig, shrunk, data = ev.payload
        highest = (reduced.method, reduced.ratio)
        ctx.run.append("dr", {"dr_method": reduced.method, "dr_ratio": reduced.ratio,
                              "n_components": reduced.n_components, "val_acc": ev.val_acc,
                              "test_acc": ev.test_acc, "status": "ok"})
    dr = {**dr_fig, "method": reduced.method, "ratio": reduced.ratio, "n_components": reduced.n_components,
          "hidden": list(shrunk), "transductive": reduced.transductive,
          "selection": "pooled" if pooled_dr else "validation",
          "select": cfg.dr_select if cfg.dr_method == "search" else "fixed",
          "highest_method": highest[0], "highest_ratio": highest[1]}
    ctx.run.append("metrics", _mlp_row("dr", 0, dr_fig, hidden=_fmt_hidden(shrunk), dr_method=reduced.method,
                                       dr_ratio=reduced.ratio))
    keep = (_fold_key(hidden, base_fig["epochs"]), _fold_key(shrunk, dr_fig["epochs"], dr))
    prep.update(data=data, feature_names=[f"{reduced.method}{i}" for i in range(reduced.n_components)],
                seed_net=dr_net.snapshot(), seed_neurons=sum(shrunk), dr=dr,
                fold_nets={k: v for k, v in fold_nets.items() if k[1:] in keep})
    prep["preprocess"] = {"kind": "dr", "method": reduced.method, "ratio": reduced.ratio,
                          "n_components": reduced.n_components, "transductive": reduced.transductive,
                          "file": "preprocess.pkl"}
    prep["preprocess_objects"] = {"normalizer": reduced.normalizer, "reducer": reduced.reducer,
                                  "post_normalizer": reduced.post_normalizer, "transductive": reduced.transductive}
    return prep


def _train_lenet(cfg: ScannTrialConfig, ctx: RunContext, splits, loaders, device: torch.device):
    """The ``baseline`` phase of image mode: LeNet-5 with Sec. 4.1's SGD for ``conv_epochs``;
    returns the network at its best validation epoch (accuracy; ties: lower loss) and that epoch."""
    train_loader, val_loader, _ = loaders
    torch.manual_seed(cfg.seed)
    model = lenet5(splits.num_classes, splits.input_shape).to(device)
    opt = torch.optim.SGD(model.parameters(), **{k: v for k, v in IMAGE_TRAINING.items() if k != "optimizer"})
    params, flops = costmodel.count_params(model), costmodel.count_flops(model, splits.input_shape)
    best = _Kept({"key": None, "state": None, "epoch": -1})

    def epoch_fn(epoch: int, bar) -> dict[str, Any]:
        _, val, row = fit_epoch(model, train_loader, val_loader, opt, device=device, where=f"LeNet-5 epoch {epoch}",
                                bar=bar)
        key = (val.acc, -val.loss)
        if best.value["key"] is None or key > tuple(best.value["key"]):
            best.value = {"key": key, "epoch": epoch,
                          "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        return {**row, "params": params, "flops": flops}

    ctx.phase("baseline", cfg.conv_epochs, seed=cfg.seed, loader=train_loader, desc="LeNet-5 baseline").run(
        epoch_fn, state={"model": model, "opt": opt, "best": best})
    model.load_state_dict(best.value["state"])
    return model, best.value["epoch"]


def _prepare_image(cfg: ScannTrialConfig, model, best_epoch: int, splits, loaders, device) -> dict[str, Any]:
    """The trained LeNet-5's figures and its convolutional part's features of every split."""
    _, val_loader, test_loader = loaders
    test = evaluate(model, test_loader, device)
    val = evaluate(model, val_loader, device)
    fc_params = costmodel.count_params(model.fc1) + costmodel.count_params(model.fc2)
    baseline = {"val_acc": val.acc, "val_loss": val.loss, "test_acc": test.acc, "test_loss": test.loss,
                "params": costmodel.count_params(model), "flops": costmodel.count_flops(model, splits.input_shape),
                "fc_params": fc_params, "connections": model.fc1.weight.numel() + model.fc2.weight.numel(),
                "neurons": LENET_FC, "hidden": [LENET_FC], "epochs": best_epoch + 1}
    # fixed feature extractor: features of every split, without augmentation, in a fixed order
    plain = splits if not cfg.augment else load_images(replace(cfg, augment=False, download=False))
    loaders = [torch.utils.data.DataLoader(ds, batch_size=256, shuffle=False) for ds in (plain.train, plain.val, plain.test)]
    (Xtr, ytr), (Xva, yva), (Xte, yte) = (extract_features(model.features, lo, device) for lo in loaders)
    data = TensorData(Xtr.to(device), ytr.to(device), Xva.to(device), yva.to(device), Xte.to(device), yte.to(device))
    seed = FeedForwardNet.from_linears([model.fc1, model.fc2])
    return {"mode": "image", "num_classes": splits.num_classes, "baseline": baseline, "data": data,
            "feature_names": None, "seed_net": seed.snapshot(), "seed_neurons": LENET_FC, "dr": None,
            "input_shape": list(splits.input_shape), "extractor": model.features.state_dict(),
            "conv_params": costmodel.count_params(model.features),
            "conv_flops": costmodel.count_flops(model.features, splits.input_shape),
            "preprocess": {"kind": "image", "dataset": cfg.dataset, "input_shape": list(splits.input_shape)},
            "preprocess_objects": None}


def _prepare(cfg: ScannTrialConfig, ctx: RunContext, device: torch.device) -> dict[str, Any]:
    """The ``prep`` phase (after image mode's ``baseline`` phase): the synthesis's data, the
    baseline's figures and its (or the DR model's) network as the seed, kept in ``prep.pt``."""
    phase = ctx.phase("prep", 1, desc="SCANN baseline" + ("" if cfg.dr_method == "none" else " and DR"))
    if phase.epochs_done and ctx.run.exists("prep.pt"):
        phase.run(lambda epoch, bar: None)  # nothing left to run; restores the RNG if the run stopped here
        return torch.load(ctx.run.file("prep.pt"), map_location=device, weights_only=False)

    if cfg.image_mode:
        splits = load_images(cfg)
        loaders = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
        model, best_epoch = _train_lenet(cfg, ctx, splits, loaders, device)

        def build() -> dict[str, Any]:
            prep = _prepare_image(cfg, model, best_epoch, splits, loaders, device)
            ctx.run.append("metrics", _mlp_row("baseline", cfg.conv_epochs, prep["baseline"], hidden="lenet5"))
            return prep
    else:
        def build() -> dict[str, Any]:
            return _prepare_tabular(cfg, ctx, device)

    made: list[dict[str, Any]] = []

    def step(epoch: int, bar) -> None:
        made.append(build())
        atomic_torch_save(made[0], ctx.run.file("prep.pt"))
        bar.update(1)

    phase.run(step)
    return made[0] if made else build()  # done, but prep.pt went: the run stopped between its end and its summary


# --------------------------------------------------------------------------- synthesis


def _cost_fn(prep: dict[str, Any]):
    """``(params, FLOPs)`` of a synthesised network; image mode adds the fixed extractor's."""
    if prep["mode"] != "image":
        return network_cost

    def with_extractor(net: FeedForwardNet) -> tuple[int, int]:
        params, flops = network_cost(net)
        return params + prep["conv_params"], flops + prep["conv_flops"]

    return with_extractor


def _synthesize(cfg: ScannTrialConfig, ctx: RunContext, prep: dict[str, Any], device: torch.device):
    """The ``scann`` phase: Algorithm 2 from the scheme's seed, one phase epoch per iteration."""
    data: TensorData = prep["data"]
    scfg = cfg.scann_config(prep["seed_neurons"])
    seed_base = FeedForwardNet.from_snapshot(prep["seed_net"]) if scfg.scheme == "C" else None
    net = seed_network(scfg, data.num_features, prep["num_classes"], baseline=seed_base,
                       generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    synth = ScannSynthesis(net, scfg, data, seed=cfg.seed, reference_acc=prep["baseline"]["val_acc"],
                           tolerance=cfg.tolerance, cost_fn=_cost_fn(prep),
                           keep_all=bool(cfg.select_folds) or cfg.select == "min_ratio")

    def iteration(epoch: int, bar) -> dict[str, Any]:
        rec = synth.step()
        ctx.run.append("structure", {k: rec[k] for k in STRUCTURE_KEYS})
        bar.update(1)
        bar.set_postfix(val=f"{rec['val_acc']:.3f}", conn=rec["connections"], refresh=False)
        return {**{k: rec[k] for k in METRIC_KEYS}, "train_flops": rec["train_flops"]}

    ctx.phase("scann", scfg.iterations + 1, desc=f"SCANN scheme {scfg.scheme}").run(iteration, state={"synth": synth})
    return synth


# --------------------------------------------------------------------------- size by cross-validation


def _chunk_split(cfg: ScannTrialConfig, splits, fold: int):
    """Fold ``fold`` (0 .. k - 2) of ``select_folds = k``: ``(X_train, y_train, X_held, y_held)``.

    The training split is cut into k - 1 stratified chunks; the fold trains on the other chunks
    plus the validation split -- as many samples as the main run trains on when a chunk is the
    size of the validation split (k - 1 = training / validation samples: k = 8 at the default
    split) -- and only scores the held-out chunk.  The main run itself is the k-th fold (its
    held-out part is the validation split), so the k runs score every training + validation
    sample once.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    chunks = StratifiedKFold(n_splits=cfg.select_folds - 1, shuffle=True, random_state=cfg.seed)
    try:
        rest, held = list(chunks.split(splits.X_train, splits.y_train))[fold]
    except ValueError as e:  # more chunks than samples of every class
        raise UserError(f"select_folds={cfg.select_folds} cannot cut the {len(splits.y_train)} training samples "
                        f"into {cfg.select_folds - 1} stratified chunks ({e})") from None
    return (np.vstack([splits.X_train[rest], splits.X_val]), np.concatenate([splits.y_train[rest], splits.y_val]),
            splits.X_train[held], splits.y_train[held])


def _fold_key(hidden, epochs: int, dr: dict[str, Any] | None = None) -> tuple:
    return (tuple(int(h) for h in hidden), int(epochs),
            None if dr is None else (dr["method"], float(dr["ratio"])))


def _fold_mlp(cfg: ScannTrialConfig, hidden, part, epochs: int, device: torch.device,
              dr: dict[str, Any] | None = None, *, fold: int, cache: dict[tuple, Any] | None = None):
    """Train the MLP ``hidden`` on fold ``fold``'s training data ``part`` (range-normalised, or
    reduced by ``dr = {method, ratio}``: both fit on the fold's training data) for exactly
    ``epochs`` epochs (the main run's choice: nothing is chosen on the held-out chunk, which stands
    in the validation slot for the record only); ``(net, fold data, held-out accuracy)``.  A network
    already in ``cache`` (trained by Algorithm 1's pooled scoring) is reused, not trained again;
    new ones are added to it."""
    X_tr, y_tr, X_held, y_held = part
    if dr is None:
        norm = RangeNormalizer().fit(X_tr)
        parts = [norm.transform(X_tr), norm.transform(X_held)]
    else:
        reduced = reduce_dataset(X_tr, X_held, X_held, method=dr["method"], ratio=dr["ratio"], seed=cfg.seed,
                                 allow_transductive=cfg.allow_transductive, blas_threads=cfg.threads or 1)
        parts = [reduced.X_train, reduced.X_val]
    data = TensorData.from_arrays(parts[0], y_tr, parts[1], y_held, parts[1], y_held, device=device)
    key = (fold, *_fold_key(hidden, epochs, dr))
    if cache is not None and key in cache:
        snapshot, acc = cache[key]
        return FeedForwardNet.from_snapshot(snapshot, device=device), data, acc
    net, fig = train_mlp(tuple(hidden), data, epochs=int(epochs), keep="last", **_train_kwargs(cfg))
    if cache is not None:
        cache[key] = (net.snapshot(), fig["test_acc"])
    return net, data, fig["test_acc"]


def _cv_fold(cfg: ScannTrialConfig, prep: dict[str, Any], fold: int, device: torch.device,
             epoch_plan: list[int]) -> dict[str, Any]:
    """Fold ``fold`` of ``select_folds`` (:func:`_chunk_split`): the trial's pipeline (baseline
    architecture, the chosen DR method/ratio + DR model, SCANN) re-run with one chunk of the
    training split held out.  Nothing is chosen on the held-out chunk: every network keeps the
    epoch the main run chose on its own validation split (the baseline's and the DR model's best
    epoch; ``epoch_plan``, each SCANN iteration's), and the normaliser and the DR model are fit on
    the fold's training data.
    """
    splits = load_tabular_dataset(cfg.dataset, csv=cfg.csv, label=cfg.label, val_fraction=cfg.val_fraction,
                                  test_fraction=cfg.test_fraction, seed=cfg.seed)
    part = _chunk_split(cfg, splits, fold)
    hidden = tuple(prep["baseline"]["hidden"])
    cache = prep.get("fold_nets")
    base_net, data, base_acc = _fold_mlp(cfg, hidden, part, prep["baseline"]["epochs"], device, fold=fold, cache=cache)
    dr, seed_net, seed_neurons = prep["dr"], base_net, sum(hidden)
    if dr is not None:
        seed_net, data, _ = _fold_mlp(cfg, dr["hidden"], part, dr["epochs"], device, dr=dr, fold=fold, cache=cache)
        seed_neurons = sum(dr["hidden"])
    scfg = cfg.scann_config(seed_neurons)
    net = seed_network(scfg, data.num_features, prep["num_classes"],
                       baseline=seed_net if scfg.scheme == "C" else None,
                       generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    synth = ScannSynthesis(net, scfg, data, seed=cfg.seed, epoch_plan=epoch_plan)
    synth.run()
    return {"fold": fold, "n": len(part[3]), "n_train": len(part[1]), "baseline_acc": base_acc,
            "acc": [r["test_acc"] for r in synth.history], "params": [r["params"] for r in synth.history]}


def _cross_validate(cfg: ScannTrialConfig, ctx: RunContext, prep: dict[str, Any], synth: ScannSynthesis,
                    device: torch.device):
    """The ``cv`` phase: the k - 1 chunk runs (one phase epoch each), replaying the main run's epochs."""
    plan = [int(r["epoch"]) for r in synth.history]
    folds = _Kept([])

    def fold(k: int, bar) -> None:
        folds.value.append(_cv_fold(cfg, prep, k, device, plan))
        bar.update(1)

    ctx.phase("cv", cfg.select_folds - 1, desc="size by cross-validation").run(fold, state={"folds": folds})
    return folds.value


# --------------------------------------------------------------------------- output


def _figures(prefix: str, fig: dict[str, Any]) -> dict[str, Any]:
    keys = ("val_acc", "test_acc", "params", "connections", "flops", "neurons")
    return {f"{prefix}_{k}": fig.get(k) for k in keys if fig.get(k) is not None}


def _ckpt_figures(prefix: str, ck) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in ck.figures().items() if v is not None}


def _fixed_params(prep: dict[str, Any]) -> tuple[int, int]:
    """``(baseline params, params SCANN does not synthesise)`` the compression ratio is taken on:
    image mode counts the fully connected part only."""
    if prep["mode"] == "image":
        return prep["baseline"]["fc_params"], prep["conv_params"]
    return prep["baseline"]["params"], 0


def _choose(cfg: ScannTrialConfig, ctx: RunContext, prep: dict[str, Any], synth: ScannSynthesis, device):
    """The output checkpoint (``select``, ``select_folds``): ``(checkpoint, met, pooled baseline
    accuracy or None, its own pooled accuracy or None)``."""
    if cfg.select_folds:
        folds = _cross_validate(cfg, ctx, prep, synth, device)
        chosen, met, rows, cv_base = cv_choice(synth.checkpoints, folds, reference_acc=prep["baseline"]["val_acc"],
                                               n_val=len(prep["data"].y_val), tolerance=cfg.tolerance)
        for r in rows:
            ctx.run.append("cv", r)
        return chosen, met, cv_base, next(r["cv_acc"] for r in rows if r["iteration"] == chosen.iteration)
    if cfg.select == "min_ratio":
        base, fixed = _fixed_params(prep)
        return (*at_min_ratio(synth.checkpoints, cfg.min_ratio, baseline_params=base, fixed_params=fixed), None, None)
    return (*synth.selected(cfg.select), None, None)


def _check_data(cfg: ScannTrialConfig, prep: dict[str, Any]):
    """The exported network's inputs: ``(test batch, validation data)`` -- the (reduced) feature
    tensors, or in image mode the images (the exported model holds the feature extractor)."""
    data: TensorData = prep["data"]
    if prep["mode"] == "image":
        splits = load_images(replace(cfg, augment=False, download=False))
        _, val_loader, test_loader = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
        return test_batch(test_loader), val_loader
    return test_batch(data.test if data.test is not None else data.val), data.val


def _network(prep: dict[str, Any], ck, device: torch.device):
    """``(exported network, the model to save)`` of checkpoint ``ck`` (image mode: extractor + FC)."""
    exported = export_network(FeedForwardNet.from_snapshot(ck.snapshot), prep["feature_names"])
    model = exported.pruned
    if prep["mode"] == "image":
        extractor = lenet5(prep["num_classes"], tuple(prep["input_shape"])).features
        extractor.load_state_dict(prep["extractor"])
        model = ImageScannModel(extractor, exported.pruned)
    return exported, model.to(device)


def _healthy(cfg: ScannTrialConfig, prep: dict[str, Any], synth: ScannSynthesis, chosen, example, val,
             device: torch.device):
    """The checkpoint to export: ``chosen``, or -- when its network is degenerate
    (:func:`experiments.export.degeneracy`) -- the best-validation healthy one among the other
    checkpoints the synthesis kept; ``(checkpoint, exported, model, why it fell back or "")``.
    With none healthy it stays ``chosen`` (and ``save_model`` ends the trial with the reason)."""
    exported, model = _network(prep, chosen, device)
    reason, _ = degeneracy(model, example.to(device), val, prep["num_classes"], device=device)
    if reason is None or cfg.allow_degenerate:
        return chosen, exported, model, ""
    others = {c.iteration: c for c in (synth.best, synth.compact, *synth.checkpoints)
              if c is not None and c.iteration != chosen.iteration}
    for ck in sorted(others.values(), key=lambda c: (-c.val_acc, c.params, c.iteration)):
        exp, mod = _network(prep, ck, device)
        if degeneracy(mod, example.to(device), val, prep["num_classes"], device=device)[0] is None:
            return ck, exp, mod, (f"iteration {chosen.iteration} (select={cfg.select}) was degenerate: {reason}; "
                                  f"exported iteration {ck.iteration}, the best-validation healthy checkpoint")
    return chosen, exported, model, ""


def _export(cfg: ScannTrialConfig, ctx: RunContext, prep: dict[str, Any], chosen, exported, model, fallback: str,
            example, val) -> Any:
    """Write ``arch.json``, ``model.pt`` + ``model.onnx`` (``ctx.save_model``), ``masked.pt`` and
    ``preprocess.pkl`` of ``chosen``."""
    ctx.run.write_json("arch.json", {"method": "scann", "dataset": cfg.dataset, "mode": prep["mode"],
                                     "scheme": cfg.scheme, "select": cfg.select, "selected_iteration": chosen.iteration,
                                     **exported.arch, "baseline_hidden": prep["baseline"]["hidden"], "dr": prep["dr"],
                                     "preprocess": prep["preprocess"]})
    ctx.save_model(model, example, val=val, num_classes=prep["num_classes"], fallback=fallback)
    atomic_torch_save(exported.masked, ctx.run.file("masked.pt"))
    if prep["preprocess_objects"] is not None:
        atomic_write_bytes(ctx.run.file("preprocess.pkl"), pickle.dumps(prep["preprocess_objects"]))
    return exported


def _summary(cfg: ScannTrialConfig, prep: dict[str, Any], synth: ScannSynthesis, chosen, met: bool, exported,
             cv_base: float | None, cv_acc: float | None, seconds: float) -> dict[str, Any]:
    baseline, dr, data = prep["baseline"], prep["dr"], prep["data"]
    base_params, fixed = _fixed_params(prep)
    dr_fig = dr if dr is not None else baseline
    return {
        "default": chosen.test_acc,
        "top1": chosen.test_acc,
        "test_acc": chosen.test_acc,
        "val_acc": chosen.val_acc,
        "connections": chosen.connections,
        "params": chosen.params,
        "flops": chosen.flops,
        "fc_params": exported.params,
        "neurons": chosen.neurons,
        "depth": chosen.depth,
        "skip_connections": exported.arch["skip_connections"],
        "active_inputs": len(exported.arch["used_inputs"]),
        "compression_ratio": compression_ratio(chosen.params, base_params, fixed_params=fixed),
        "total_compression_ratio": compression_ratio(chosen.params, baseline["params"]),
        "connection_compression": baseline["connections"] / max(chosen.connections, 1),
        "flops_reduction": baseline["flops"] / max(chosen.flops, 1),
        "selected_iteration": chosen.iteration,
        "mc_met": int(met),
        "select_folds": cfg.select_folds,
        # the accuracy estimates the choice was made on: pooled out-of-fold + validation (select_folds) or validation
        "selection_baseline_acc": cv_base if cv_base is not None else baseline["val_acc"],
        "selection_acc": cv_acc if cv_acc is not None else chosen.val_acc,
        **_figures("baseline", baseline),
        "baseline_fc_params": baseline.get("fc_params", baseline["params"]),
        "dr_ratio": dr["ratio"] if dr is not None else 1.0,
        "dr_n_components": dr["n_components"] if dr is not None else data.num_features,
        **_figures("dr", dr_fig),
        "dr_compression_ratio": compression_ratio(dr_fig["params"], baseline["params"]),
        **_ckpt_figures("ha", synth.best),
        **_ckpt_figures("mc", synth.compact if synth.compact is not None else synth.best),
        "iterations": synth.cfg.iterations,
        "time_s": seconds,
        "dataset": cfg.dataset,
        "scheme": cfg.scheme,
        "dr_method": dr["method"] if dr is not None else "none",
        "dr_selection": dr.get("selection", "validation") if dr is not None else "none",
        # Algorithm 1's choice (dr_select: best | most_compressed; a fixed method: fixed) and its
        # best validation DR model, which dr_select=best takes
        "dr_select": dr["select"] if dr is not None else "none",
        "dr_highest_method": dr["highest_method"] if dr is not None else "none",
        "dr_highest_ratio": dr["highest_ratio"] if dr is not None else 1.0,
        "select": cfg.select,
        "mode": prep["mode"],
        "transductive": int(bool(dr and dr.get("transductive"))),
    }


# --------------------------------------------------------------------------- run


def run(cfg: ScannTrialConfig, ctx: RunContext) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if cfg.threads == 0 and not cfg.image_mode:
        torch.set_num_threads(1)  # tiny tabular matrices: one thread is fastest (1.5x on 2 busy cores)
    try:
        return _run(cfg, ctx)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: ScannTrialConfig, ctx: RunContext) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    prep = _prepare(cfg, ctx, device)
    synth = _synthesize(cfg, ctx, prep, device)
    chosen, met, cv_base, cv_acc = _choose(cfg, ctx, prep, synth, device)
    example, val = _check_data(cfg, prep)
    chosen, exported, model, fallback = _healthy(cfg, prep, synth, chosen, example, val, device)
    exported = _export(cfg, ctx, prep, chosen, exported, model, fallback, example, val)
    seconds = sum(ctx.state["phases"][p]["time_s"] for p in PHASES if p in ctx.state["phases"])
    summary = _summary(cfg, prep, synth, chosen, met, exported, cv_base, cv_acc, seconds)
    ctx.run.file("prep.pt").unlink(missing_ok=True)
    return summary
