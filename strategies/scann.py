"""SCANN: grow-and-prune synthesis of compact feed-forward networks (operations, schemes, Algorithm 2).

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (Hassantabar, Wang, Jha;
``../shared/seeds/002_d08e71b4be716ba4.txt``).  The space is
:class:`search_spaces.feedforward.FeedForwardNet` (masked general feed-forward graph).

Operations (Sec. 3.6)
---------------------
* :func:`grow_connections` -- gradient-based growth (Dai et al.'s NeST rule): score every dormant
  allowed connection by ``|dL/dw|`` on a large batch and activate the top ones, either up to a
  share of all allowed connections (``to``, "activates 35 percent of all connections") or those
  above a threshold; new weights start at 0.  :func:`full_growth` restores every allowed
  connection (Scheme C).
* :func:`grow_neurons` -- duplicate the neurons with the highest mean activation on a large batch,
  with noise on the copies' weights to break the symmetry (Algorithm 4).
* :func:`prune_connections` -- magnitude-based pruning (Algorithm 5), by share of the existing
  connections or down to a number of connections; neurons left without connections are removed
  (:meth:`FeedForwardNet.remove_dead_neurons`, function-preserving).

Masks hold after every optimizer step: the forward pass uses ``weight * mask`` (so dormant
weights get no gradient), and a step post-hook (:func:`install_mask_hook`) zeroes dormant
weights *and* their optimizer state (momentum buffers, Adam moments), so neither momentum nor
weight decay can revive a pruned weight.  Regrown weights get fresh (zero) optimizer state
(:func:`reset_optimizer_entries`); rows/columns of grown or removed neurons are remapped.

Schemes (Sec. 3.7) and defaults (Sec. 4.1, MNIST / LeNet-5)
-----------------------------------------------------------
* **A** (constructive): 300 hidden neurons, at most 500; prune 95% of the connections first, then
  per iteration: connection growth to 35% of all connections, neuron growth by 5, pruning of 25%
  of the existing connections.
* **B** (destructive): 400 hidden neurons; per iteration connection growth to 90% of all
  connections, then pruning hard, down to the "19.3K connections" of Sec. 4.1, i.e. about 5% of
  Scheme B's allowed connections on LeNet-5's 800 features (``prune_keep=0.05``).
* **C** (MLP, iterative dense-sparse-dense): the baseline's FC part (its trained weights), pruned to
  the final size -- 9.3K of the 405.5K FC weights (``prune_keep=0.023``) -- then full growth and
  pruning per iteration; only adjacent-layer connections.

Neuron counts of A/B are given relative to the baseline's hidden neurons (A: 0.6 and 1.0, B: 0.8
-- exactly 300/500 and 400 for LeNet-5's FC 500) so the same presets scale to tabular data.
Training: Sec. 4.1 uses SGD (lr 0.03, momentum 0.9, weight decay 1e-4) for MNIST; Sec. 4.2 uses
Adam for the tabular sets, but its learning rate and weight decay are lost in our copy of the
text: we use lr 1e-2 and weight decay 1e-4 (:data:`TABULAR_TRAINING`; 1e-2 and 3e-3 tie on the
validation splits of digits and breast_cancer, and 1e-2 trains the small sparse networks better).  The number of epochs
after each operation (Sec. 3.7.2: "X to Y epochs") and the iteration count are lost as well.
Ours, not the paper's: the training after an iteration's last pruning (the recovery, whose epochs
are the checkpoints) may use its own lr (``recovery_lr``) and a cosine anneal to 1% of it
(``recovery_schedule``); default: the constant training lr.

Algorithm 2: alternate architecture changes and weight training; the checkpoint with the best
validation accuracy (ties: fewer connections) is the output (:class:`ScannSynthesis`, H.A.).
It also keeps the most compressed checkpoint whose validation accuracy is within ``tolerance`` of
a reference (the MLP baseline), the paper's "M.C." column of Tables VI/VII.

Image mode (Sec. 4.1): :class:`LeNet5` (Caffe: conv 20 and 50 filters 5x5, max-pool, FC 500, no
ReLU after the convolutions), trained once; its convolutional part is then a fixed feature
extractor and SCANN synthesises the fully connected part on the extracted features
(:class:`ImageScannModel` puts them back together).

Deviations and choices where the paper is silent (or its text was lost in our copy)
-----------------------------------------------------------------------------------
* Hidden neurons are ordered in groups, not one by one (see :mod:`search_spaces.feedforward`).
* Pruning removes a neuron once all its connections are gone (the paper's rule), so growth can
  reconnect a half-connected neuron; evaluated and exported networks are additionally cleaned of
  neurons without inputs or outputs (function-preserving), and all figures count that structure.
* Keep targets (``prune_keep``) are shares of the *seed's* allowed connections -- a fixed size
  like Sec. 4.1's "19.3K connections" -- not of the current network, which shrinks as neurons go.
* Neuron-growth noise is ``noise`` x the RMS of the parent's active weights (scale not given).
* The convolutional part in image mode is frozen after training the baseline ("kept the same").
* Checkpoints are taken every epoch after an iteration's last pruning (``checkpoint_epochs``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.feedforward import (
    SCHEMES,
    FeedForwardNet,
    FeedForwardSpec,
    PrunedFeedForward,
    Reindex,
    split_groups,
)

from .training import check_finite

__all__ = [
    "SCHEMES",
    "SCHEME_PRESETS",
    "TABULAR_TRAINING",
    "IMAGE_TRAINING",
    "ScannConfig",
    "TensorData",
    "Checkpoint",
    "ScannSynthesis",
    "synthesize",
    "make_optimizer",
    "install_mask_hook",
    "enforce_masks",
    "reset_optimizer_entries",
    "remap_optimizer",
    "connection_scores",
    "grow_connections",
    "full_growth",
    "grow_neurons",
    "prune_connections",
    "train_epochs",
    "evaluate",
    "mlp_net",
    "train_mlp",
    "seed_network",
    "network_cost",
    "export_network",
    "LeNet5",
    "LeNet5Features",
    "ImageScannModel",
    "train_image_model",
    "extract_features",
]


# --------------------------------------------------------------------------- configuration

#: Per-scheme settings from Sec. 4.1 (MNIST, LeNet-5 FC 500); see the module docstring.
SCHEME_PRESETS: dict[str, dict[str, Any]] = {
    "A": dict(initial_neurons_ratio=0.6, max_neurons_ratio=1.0, initial_prune=0.95, grow_to=0.35,
              neuron_growth=5, prune_fraction=0.25, prune_keep=None),
    "B": dict(initial_neurons_ratio=0.8, max_neurons_ratio=0.8, initial_prune=None, grow_to=0.9,
              neuron_growth=0, prune_fraction=None, prune_keep=0.05),
    "C": dict(initial_neurons_ratio=1.0, max_neurons_ratio=1.0, initial_prune=None, grow_to=1.0,
              neuron_growth=0, prune_fraction=None, prune_keep=0.023),
}
#: Recovery lr schedules (``ScannConfig.recovery_schedule``); cosine ends at this share of its start.
RECOVERY_SCHEDULES = ("constant", "cosine")
RECOVERY_FLOOR = 0.01
#: Sec. 4.2: Adam (lr and weight decay lost in our copy; ours).
TABULAR_TRAINING = dict(optimizer="adam", lr=1e-2, momentum=0.0, weight_decay=1e-4)
#: Sec. 4.1: SGD, lr 0.03, momentum 0.9, weight decay 1e-4.
IMAGE_TRAINING = dict(optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4)

OPTIMIZERS = ("adam", "sgd")


def _check_unit(name: str, value: float | None, *, closed: bool = True) -> None:
    if value is None:
        return
    ok = (0 < value <= 1) if closed else (0 < value < 1)
    if not ok:
        raise UserError(f"{name} must be in (0, 1{']' if closed else ')'}, got {value}")


@dataclass(frozen=True, kw_only=True)
class ScannConfig:
    """Synthesis settings.  Build with :meth:`for_scheme` to get a scheme's paper defaults.

    Neuron counts are absolute here (:meth:`for_scheme` derives them from the baseline).
    ``grow_to`` and ``prune_keep`` are shares of all *allowed* connections; ``initial_prune`` and
    ``prune_fraction`` shares of the *existing* ones.  ``prune_keep_schedule`` (optional) gives
    the keep share per iteration (the last value repeats), e.g. to prune "iteratively to the
    final size" (Scheme C) in one run.  ``checkpoint_epochs``: every epoch of the training that
    follows an iteration's last pruning is a checkpoint candidate (the structure is fixed then),
    and the iteration's checkpoint is its best-validation epoch (accuracy; ties: the lower
    validation loss) -- the same protocol as the
    baselines, which keep their best-validation epoch; ``False`` checkpoints iteration ends only.
    """

    scheme: str = "C"
    groups: int = 3
    initial_neurons: int = 500
    max_neurons: int = 500
    initial_prune: float | None = None
    grow_to: float = 1.0
    growth_threshold: float | None = None
    neuron_growth: int = 0
    prune_fraction: float | None = None
    prune_keep: float | None = 0.023
    prune_keep_schedule: tuple[float, ...] = ()
    iterations: int = 10
    initial_epochs: int = 20
    epochs_per_op: int = 5
    noise: float = 0.1
    growth_batch: int = 2048
    checkpoint_epochs: bool = True
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 1e-4
    batch_size: int = 64
    #: Learning rate of the recovery training after an iteration's last pruning (the checkpointed
    #: epochs); ``None``: ``lr``.  The other training (seed, after growth) always uses ``lr``.
    recovery_lr: float | None = None
    #: ``constant`` or ``cosine``: the recovery training's lr anneals from ``recovery_lr`` (or
    #: ``lr``) to 1% of it over its epochs (cosine), each pruned size ending at a small lr.
    recovery_schedule: str = "constant"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise UserError(f"unknown scheme {self.scheme!r}; valid: {', '.join(SCHEMES)}")
        if self.groups < 1:
            raise UserError(f"groups must be >= 1, got {self.groups}")
        if self.initial_neurons < 1:
            raise UserError(f"initial_neurons must be >= 1, got {self.initial_neurons}")
        if self.max_neurons < self.initial_neurons:
            raise UserError(f"max_neurons ({self.max_neurons}) must be >= initial_neurons ({self.initial_neurons})")
        _check_unit("initial_prune", self.initial_prune, closed=False)
        _check_unit("grow_to", self.grow_to)
        _check_unit("prune_fraction", self.prune_fraction, closed=False)
        _check_unit("prune_keep", self.prune_keep)
        for v in self.prune_keep_schedule:
            _check_unit("prune_keep_schedule", v)
        if self.prune_fraction is None and self.prune_keep is None and not self.prune_keep_schedule:
            raise UserError("give prune_fraction or prune_keep (or prune_keep_schedule)")
        if self.growth_threshold is not None and self.growth_threshold < 0:
            raise UserError(f"growth_threshold must be >= 0, got {self.growth_threshold}")
        for name in ("neuron_growth", "iterations", "initial_epochs", "epochs_per_op"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.growth_batch < 1 or self.batch_size < 1:
            raise UserError("growth_batch and batch_size must be >= 1")
        if self.noise < 0:
            raise UserError(f"noise must be >= 0, got {self.noise}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.recovery_schedule not in RECOVERY_SCHEDULES:
            raise UserError(f"unknown recovery_schedule {self.recovery_schedule!r}; valid: "
                            f"{', '.join(RECOVERY_SCHEDULES)}")
        if self.recovery_lr is not None and not self.recovery_lr > 0:
            raise UserError(f"recovery_lr must be > 0, got {self.recovery_lr}")
        if not 0 < self.lr < math.inf or not 0 <= self.weight_decay < math.inf or not 0 <= self.momentum < 1:
            raise UserError(f"need finite lr > 0, finite weight_decay >= 0, 0 <= momentum < 1; got lr={self.lr}, "
                            f"weight_decay={self.weight_decay}, momentum={self.momentum}")

    @property
    def mlp(self) -> bool:
        return self.scheme == "C"

    @property
    def ops(self) -> tuple[str, ...]:
        """Architecture changes of one iteration (Sec. 3.7), each followed by training."""
        return {"A": ("grow_connections", "grow_neurons", "prune"),
                "B": ("grow_connections", "prune"),
                "C": ("full_growth", "prune")}[self.scheme]

    def keep_at(self, iteration: int) -> float | None:
        """Keep share of allowed connections for the pruning of ``iteration`` (0 = initial)."""
        if self.prune_keep_schedule:
            return self.prune_keep_schedule[min(iteration, len(self.prune_keep_schedule) - 1)]
        return self.prune_keep

    @classmethod
    def for_scheme(cls, scheme: str, *, baseline_neurons: int, **overrides: Any) -> "ScannConfig":
        """The scheme's paper defaults, neuron counts scaled to ``baseline_neurons``; ``overrides``
        (``None`` values are ignored) replace any field."""
        if scheme not in SCHEMES:
            raise UserError(f"unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
        preset = dict(SCHEME_PRESETS[scheme])
        ini = max(1, round(preset.pop("initial_neurons_ratio") * baseline_neurons))
        mx = max(ini, round(preset.pop("max_neurons_ratio") * baseline_neurons))
        values: dict[str, Any] = dict(scheme=scheme, initial_neurons=ini, max_neurons=mx, **preset)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "initial_neurons" in overrides and overrides["initial_neurons"] is not None and \
                overrides.get("max_neurons") is None:
            values["max_neurons"] = max(values["max_neurons"], values["initial_neurons"])
        names = {f for f in cls.__dataclass_fields__}
        unknown = [k for k in values if k not in names]
        if unknown:
            raise UserError(f"unknown SCANN setting {unknown[0]!r}")
        return cls(**values)


# --------------------------------------------------------------------------- data


@dataclass
class TensorData:
    """Train/val(/test) tensors: ``X`` float32 ``(n, d)``, ``y`` int64."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, X_train, y_train, X_val, y_val, X_test=None, y_test=None, device="cpu") -> "TensorData":
        def t(a, dtype):
            return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)

        return cls(t(X_train, torch.float32), t(y_train, torch.long), t(X_val, torch.float32), t(y_val, torch.long),
                   t(X_test, torch.float32), t(y_test, torch.long))

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def num_classes(self) -> int:
        ys = [self.y_train, self.y_val] + ([self.y_test] if self.y_test is not None else [])
        return int(max(int(y.max()) for y in ys)) + 1


# --------------------------------------------------------------------------- optimizer plumbing


def make_optimizer(net: nn.Module, cfg: ScannConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _state_tensors(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
    if optimizer is None:
        return []
    state = optimizer.state.get(param, {})
    return [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0]


@torch.no_grad()
def enforce_masks(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet) -> None:
    """Zero dormant weights and their optimizer state (momentum, Adam moments)."""
    net.apply_mask_()
    for _, t in _state_tensors(optimizer, net.weight):
        if t.shape == net.mask.shape:
            t.mul_(net.mask)


def install_mask_hook(optimizer: torch.optim.Optimizer, net: FeedForwardNet):
    """Re-apply the masks after every ``optimizer.step()``; returns the hook handle."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: enforce_masks(opt, net))


@torch.no_grad()
def reset_optimizer_entries(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet,
                            positions: torch.Tensor) -> None:
    """Fresh optimizer state for the weights at ``positions`` (bool, weight-shaped): regrown ones."""
    for _, t in _state_tensors(optimizer, net.weight):
        if t.shape == positions.shape:
            t[positions] = 0


@torch.no_grad()
def remap_optimizer(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet, reindex: Reindex) -> None:
    """Move per-weight optimizer state along with rows/columns after neurons were added/removed.

    New rows/columns (index -1) start with zero state.
    """
    if optimizer is None:
        return
    rows, cols = reindex.rows, reindex.cols
    rv, cv = rows >= 0, cols >= 0
    for param, index in ((net.weight, (rows, cols)), (net.bias, (rows,))):
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, t in list(state.items()):
            if not torch.is_tensor(t) or t.dim() == 0:
                continue
            new = torch.zeros(param.shape, dtype=t.dtype, device=t.device)
            if t.dim() == 2:
                sub = t[rows[rv]][:, cols[cv]]
                new[torch.nonzero(rv).flatten()[:, None], torch.nonzero(cv).flatten()[None, :]] = sub
            else:
                new[rv] = t[rows[rv]]
            state[key] = new


# --------------------------------------------------------------------------- training


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def train_epochs(net: nn.Module, optimizer: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor, *,
                 epochs: int, batch_size: int, generator: torch.Generator, where: str = "train") -> tuple[float, float]:
    """``epochs`` passes of mini-batch training; returns the last epoch's (loss, accuracy)."""
    net.train()
    loss_sum, correct, n = 0.0, 0, 0
    for epoch in range(epochs):
        loss_sum, correct, n = 0.0, 0, 0
        for step, idx in enumerate(_batches(len(y), batch_size, generator)):
            idx = idx.to(X.device)
            xb, yb = X[idx], y[idx]
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            check_finite(loss, f"{where} epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            n += len(yb)
    return (loss_sum / n, correct / n) if n else (float("nan"), float("nan"))


@torch.no_grad()
def evaluate(net: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(mean cross-entropy, accuracy)."""
    was = net.training
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = net(X[i:i + batch_size])
        loss += float(F.cross_entropy(out, y[i:i + batch_size], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + batch_size]).sum())
    net.train(was)
    return loss / max(len(y), 1), correct / max(len(y), 1)


# --------------------------------------------------------------------------- operations


def connection_scores(net: FeedForwardNet, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|dL/dw|`` for every entry of the weight matrix (dormant ones included) on batch ``(X, y)``."""
    w = net.effective_weight().detach().requires_grad_(True)
    out, _ = net.forward_hidden(X, w)
    loss = F.cross_entropy(out, y)
    check_finite(loss, "connection growth")
    (grad,) = torch.autograd.grad(loss, w)
    return grad.abs()


@torch.no_grad()
def _activate(net: FeedForwardNet, optimizer, pick: torch.Tensor) -> int:
    net.mask |= pick
    net.weight[pick] = 0.0
    reset_optimizer_entries(optimizer, net, pick)
    return int(pick.sum())


def grow_connections(net: FeedForwardNet, X: torch.Tensor, y: torch.Tensor, *, to: float | None = None,
                     count: int | None = None, threshold: float | None = None,
                     optimizer: torch.optim.Optimizer | None = None) -> int:
    """Gradient-based connection growth (Sec. 3.6.1); returns the number of connections activated.

    Exactly one of: ``to`` (grow until that share of all allowed connections is active),
    ``count`` (activate that many), ``threshold`` (activate those with ``|dL/dw| > threshold``).
    The highest ``|dL/dw|`` on the batch win; new weights are 0 and their optimizer state fresh.
    """
    if sum(v is not None for v in (to, count, threshold)) != 1:
        raise ValueError("give exactly one of to=, count=, threshold=")
    allowed = net.allowed()
    dormant = allowed & ~net.mask
    n_dormant = int(dormant.sum())
    if n_dormant == 0:
        return 0
    scores = connection_scores(net, X, y)
    if threshold is not None:
        return _activate(net, optimizer, dormant & (scores > threshold))
    if count is None:
        count = max(0, round(to * int(allowed.sum())) - net.connections)
    count = min(int(count), n_dormant)
    if count == 0:
        return 0
    flat = torch.where(dormant, scores, torch.full_like(scores, -1.0)).flatten()
    top = torch.topk(flat, count).indices
    pick = torch.zeros_like(flat, dtype=torch.bool)
    pick[top] = True
    return _activate(net, optimizer, pick.view_as(dormant))


def full_growth(net: FeedForwardNet, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore every allowed connection (Sec. 3.6.1, "full growth"); new weights start at 0."""
    return _activate(net, optimizer, net.allowed() & ~net.mask)


@torch.no_grad()
def grow_neurons(net: FeedForwardNet, X: torch.Tensor, count: int, *, max_neurons: int | None = None,
                 noise: float = 0.1, generator: torch.Generator | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Duplicate the ``count`` hidden neurons with the highest mean activation on ``X`` (Algorithm 4).

    Never exceeds ``max_neurons``; returns the parents that were duplicated.
    """
    room = count if max_neurons is None else min(count, max_neurons - net.num_hidden)
    if room <= 0 or net.num_hidden == 0:
        return []
    was = net.training
    net.eval()
    _, act = net.forward_hidden(X)
    net.train(was)
    parents = torch.topk(act.mean(0), min(room, net.num_hidden)).indices.tolist()
    reindex = net.add_neurons(parents, noise=noise, generator=generator)
    remap_optimizer(optimizer, net, reindex)
    return parents


@torch.no_grad()
def prune_connections(net: FeedForwardNet, *, fraction: float | None = None, keep: int | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> tuple[int, int]:
    """Magnitude-based pruning (Algorithm 5): drop ``fraction`` of the existing connections, or all
    but the ``keep`` largest (one global ranking by ``|w|``); then remove neurons left without any
    connection (Sec. 3.6.3).  Returns ``(connections pruned, neurons removed)``.
    """
    if (fraction is None) == (keep is None):
        raise ValueError("give exactly one of fraction=, keep=")
    active = net.connections
    n_keep = round((1 - fraction) * active) if keep is None else int(keep)
    n_keep = max(1, min(n_keep, active))
    pruned = active - n_keep
    if pruned > 0:
        mag = torch.where(net.mask, net.weight.abs(), torch.full_like(net.weight, -1.0)).flatten()
        top = torch.topk(mag, n_keep).indices
        mask = torch.zeros_like(mag, dtype=torch.bool)
        mask[top] = True
        net.mask &= mask.view_as(net.mask)
        enforce_masks(optimizer, net)
    removed, reindex = net.remove_dead_neurons(isolated_only=True)
    if removed:
        remap_optimizer(optimizer, net, reindex)
    return pruned, removed


# --------------------------------------------------------------------------- costs and export


def network_cost(net: FeedForwardNet) -> tuple[int, int]:
    """``(params, FLOPs)`` of the real sparse structure (after removing dead neurons):
    connections + biases, and 2 x connections per sample."""
    sparse = net.cleaned().to_sparse()
    return costmodel.count_params(sparse), costmodel.count_flops(sparse, (net.num_inputs,))


@dataclass
class ExportedNetwork:
    arch: dict[str, Any]
    pruned: PrunedFeedForward
    masked: dict[str, Any]
    params: int
    flops: int


def export_network(net: FeedForwardNet, feature_names: Sequence[str] | None = None) -> ExportedNetwork:
    """The compact network (dead neurons removed) as ``arch`` (JSON), a pruned dense-per-layer
    model and the masked snapshot."""
    net = net.cleaned()
    params, flops = network_cost(net)
    pruned = net.to_pruned()
    arch = net.arch(feature_names)
    arch.update(params=params, flops=flops, pruned_shapes=[list(s) for s in pruned.shapes])
    return ExportedNetwork(arch=arch, pruned=pruned, masked=net.snapshot(), params=params, flops=flops)


# --------------------------------------------------------------------------- seeds and baselines


def mlp_net(num_inputs: int, hidden: Sequence[int], num_outputs: int, *, generator=None) -> FeedForwardNet:
    """A dense MLP (MLP mode, adjacent layers fully connected)."""
    return FeedForwardNet(FeedForwardSpec(num_inputs=num_inputs, num_outputs=num_outputs, groups=tuple(hidden),
                                          mlp=True, wiring="mlp"), generator=generator)


def train_mlp(hidden: Sequence[int], data: TensorData, *, epochs: int, optimizer: str = "adam", lr: float = 3e-3,
              momentum: float = 0.0, weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0,
              eval_every: int = 1, keep: str = "best") -> tuple[FeedForwardNet, dict[str, float]]:
    """Train a dense MLP; keep its best-validation epoch (accuracy, ties: loss), or with
    ``keep="last"`` its last epoch (the validation data then choose nothing: ``epochs`` is fixed by
    the caller, e.g. to the epoch another run chose).  Returns ``(net, figures)``."""
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    gen = torch.Generator().manual_seed(seed)
    net = mlp_net(data.num_features, hidden, data.num_classes, generator=gen).to(data.X_train.device)
    cfg = ScannConfig(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size)
    opt = make_optimizer(net, cfg)
    best, best_key, best_epoch = net.snapshot(), None, 0
    for epoch in range(0, epochs, eval_every):
        train_epochs(net, opt, data.X_train, data.y_train, epochs=min(eval_every, epochs - epoch),
                     batch_size=batch_size, generator=gen, where=f"MLP {tuple(hidden)}")
        if keep == "last":
            best, best_epoch = net.snapshot(), min(epoch + eval_every, epochs)
            continue
        loss, acc = evaluate(net, data.X_val, data.y_val)
        if best_key is None or (acc, -loss) > best_key:  # ties in accuracy: lower validation loss
            best, best_key, best_epoch = net.snapshot(), (acc, -loss), epoch + eval_every
    net.restore(best)
    val_loss, val_acc = evaluate(net, data.X_val, data.y_val)
    out = {"val_acc": val_acc, "val_loss": val_loss, "epochs": best_epoch}
    if data.X_test is not None:
        out["test_loss"], out["test_acc"] = evaluate(net, data.X_test, data.y_test)
    params, flops = network_cost(net)
    out.update(params=params, flops=flops, connections=net.connections, neurons=net.num_hidden)
    return net, out


def seed_network(cfg: ScannConfig, num_inputs: int, num_outputs: int, *, baseline: FeedForwardNet | None = None,
                 generator: torch.Generator | None = None) -> FeedForwardNet:
    """The scheme's starting architecture.

    A and B: ``initial_neurons`` hidden neurons spread over ``groups`` order groups, wired as one
    hidden layer (Fig. 6: growth then adds the connections that create depth).  C: a copy of the
    (trained) ``baseline`` MLP -- "the FC part of the baseline architecture" (Sec. 4.1) -- or a
    fresh MLP of ``initial_neurons`` over ``groups`` layers.
    """
    if cfg.scheme == "C":
        if baseline is not None:
            net = FeedForwardNet.from_snapshot(baseline.snapshot(), device=baseline.weight.device)
            if not net.mlp:
                raise ValueError("Scheme C needs an MLP baseline")
            return net
        return FeedForwardNet(FeedForwardSpec(num_inputs=num_inputs, num_outputs=num_outputs,
                                              groups=split_groups(cfg.initial_neurons, cfg.groups), mlp=True,
                                              wiring="mlp"), generator=generator)
    return FeedForwardNet(FeedForwardSpec(num_inputs=num_inputs, num_outputs=num_outputs,
                                          groups=split_groups(cfg.initial_neurons, cfg.groups), wiring="wide"),
                          generator=generator)


# --------------------------------------------------------------------------- Algorithm 2


@dataclass
class Checkpoint:
    """A synthesised network at the end of an iteration and its figures."""

    iteration: int
    val_acc: float
    test_acc: float | None
    connections: int
    params: int
    flops: int
    neurons: int
    depth: int
    snapshot: dict[str, Any] = field(repr=False)

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("snapshot")
        return d


CostFn = Callable[[FeedForwardNet], tuple[int, int]]


class ScannSynthesis:
    """Algorithm 2: iterate architecture changes (per scheme) and weight training; keep checkpoints.

    Iteration 0 trains the seed for ``initial_epochs`` and applies the initial pruning
    (``initial_prune`` of the existing connections, else down to ``keep_at(0)``); iterations
    ``1..iterations`` apply the scheme's operations, each followed by ``epochs_per_op`` epochs.
    Every iteration yields one checkpoint (its best-validation epoch after the last pruning, see
    ``ScannConfig.checkpoint_epochs``), which may become ``best`` (highest validation
    accuracy, ties: fewer connections -- the paper's output, "H.A.") or ``compact`` (fewest
    parameters with validation accuracy >= ``reference_acc - tolerance``, "M.C."); with ``keep_all``
    every iteration's checkpoint is kept in ``checkpoints`` as well.

    ``cost_fn(net) -> (params, flops)`` defaults to the FC network's sparse cost; image mode
    passes one that adds the convolutional extractor.  The test split (if any) is evaluated for
    the record only; it never influences a choice.

    ``epoch_plan`` (one epoch number per iteration, 1-based) replaces the validation choice of
    each checkpoint's epoch: iteration ``i``'s checkpoint is its state after ``epoch_plan[i]``
    recovery epochs, so the validation data choose nothing (a cross-validation fold replays the
    epochs its main run chose, see ``experiments.methods.scann``).  Every record holds the epoch
    its checkpoint was taken at (``epoch``).
    """

    def __init__(self, net: FeedForwardNet, cfg: ScannConfig, data: TensorData, *, seed: int = 0,
                 reference_acc: float | None = None, tolerance: float = 0.005, cost_fn: CostFn | None = None,
                 keep_all: bool = False, epoch_plan: Sequence[int] | None = None):
        self.net = net
        self.epoch_plan = list(epoch_plan) if epoch_plan is not None else None
        if self.epoch_plan is not None and len(self.epoch_plan) < cfg.iterations + 1:
            raise ValueError(f"epoch_plan needs one epoch per iteration ({cfg.iterations + 1}), "
                             f"got {len(self.epoch_plan)}")
        self.keep_all = keep_all
        self.cfg = cfg
        self.data = data
        self.reference_acc = reference_acc
        self.tolerance = tolerance
        self.cost_fn = cost_fn or network_cost
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = make_optimizer(net, cfg)
        self._hook = install_mask_hook(self.optimizer, net)
        enforce_masks(self.optimizer, net)
        #: Keep targets are shares of the *seed's* allowed connections ("prune until 19.3K
        #: connections are left"): a fixed size, whatever neurons were removed since.
        self.reference_connections = net.allowed_connections()
        self.iteration = 0
        self.best: Checkpoint | None = None
        self.compact: Checkpoint | None = None
        #: Every iteration's checkpoint (``keep_all``), for a choice made outside (e.g. by cross-validation).
        self.checkpoints: list[Checkpoint] = []
        self.history: list[dict[str, Any]] = []

    # ---- loop ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.iteration > self.cfg.iterations

    def _growth_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.data.X_train, self.data.y_train
        if len(y) <= self.cfg.growth_batch:
            return X, y
        idx = torch.randperm(len(y), generator=self.generator)[: self.cfg.growth_batch].to(X.device)
        return X[idx], y[idx]

    def _train(self, epochs: int, what: str) -> tuple[float, float]:
        return train_epochs(self.net, self.optimizer, self.data.X_train, self.data.y_train, epochs=epochs,
                            batch_size=self.cfg.batch_size, generator=self.generator,
                            where=f"SCANN iteration {self.iteration} ({what})")

    def _train_tracked(self, epochs: int, what: str) -> tuple[tuple[float, float], dict[str, Any] | None, int]:
        """Train after the iteration's last pruning; with ``checkpoint_epochs`` return the snapshot
        of the best-validation epoch, or with ``epoch_plan`` the one after the planned epoch (the
        network itself keeps its last state); ``(train figures, snapshot or None, its epoch)``."""
        cfg = self.cfg
        lr0 = cfg.recovery_lr if cfg.recovery_lr is not None else cfg.lr

        def set_lr(epoch: int) -> None:
            f = 1.0
            if cfg.recovery_schedule == "cosine":
                f = RECOVERY_FLOOR + (1 - RECOVERY_FLOOR) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs - 1)))
            for g in self.optimizer.param_groups:
                g["lr"] = lr0 * f

        best, best_key, best_epoch, tr = None, None, epochs, (float("nan"), float("nan"))
        planned = None
        if self.epoch_plan is not None:
            planned = min(max(int(self.epoch_plan[self.iteration]), 1), epochs)
        try:
            for e in range(epochs):
                set_lr(e)
                tr = self._train(1, what)
                if planned is not None:
                    if e + 1 == planned:
                        best, best_epoch = self.net.snapshot(), planned
                    continue
                if not cfg.checkpoint_epochs:
                    continue
                loss, acc = evaluate(self.net, self.data.X_val, self.data.y_val)
                if best_key is None or (acc, -loss) > best_key:  # ties in accuracy: lower validation loss
                    best, best_key, best_epoch = self.net.snapshot(), (acc, -loss), e + 1
            return tr, best, best_epoch
        finally:
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.lr

    def _prune(self, counts: dict[str, int], iteration: int, initial: bool = False) -> None:
        cfg = self.cfg
        if initial and cfg.initial_prune is not None:
            p, r = prune_connections(self.net, fraction=cfg.initial_prune, optimizer=self.optimizer)
        elif not initial and cfg.prune_fraction is not None:
            p, r = prune_connections(self.net, fraction=cfg.prune_fraction, optimizer=self.optimizer)
        else:
            keep = round(cfg.keep_at(iteration) * self.reference_connections)
            p, r = prune_connections(self.net, keep=keep, optimizer=self.optimizer)
        counts["pruned"] += p
        counts["neurons_removed"] += r

    def step(self) -> dict[str, Any]:
        """Run one iteration; returns its record (also appended to ``history``)."""
        if self.finished:
            raise RuntimeError("synthesis already finished")
        cfg, net = self.cfg, self.net
        t0 = time.time()
        counts = {"grown": 0, "pruned": 0, "neurons_added": 0, "neurons_removed": 0}
        tr = (float("nan"), float("nan"))
        snap, epoch = None, cfg.epochs_per_op
        if self.iteration == 0:
            ops = ["seed"]
            if cfg.initial_epochs:
                tr = self._train(cfg.initial_epochs, "seed")
            ops.append("prune")
            self._prune(counts, 0, initial=True)
            tr, snap, epoch = self._train_tracked(cfg.epochs_per_op, "prune")
        else:
            ops = list(cfg.ops)
            for i, op in enumerate(ops):
                if op == "grow_connections":
                    X, y = self._growth_batch()
                    if cfg.growth_threshold is not None:
                        counts["grown"] += grow_connections(net, X, y, threshold=cfg.growth_threshold,
                                                            optimizer=self.optimizer)
                    else:
                        counts["grown"] += grow_connections(net, X, y, to=cfg.grow_to, optimizer=self.optimizer)
                elif op == "full_growth":
                    counts["grown"] += full_growth(net, self.optimizer)
                elif op == "grow_neurons":
                    X, _ = self._growth_batch()
                    added = grow_neurons(net, X, cfg.neuron_growth, max_neurons=cfg.max_neurons, noise=cfg.noise,
                                         generator=self.generator, optimizer=self.optimizer)
                    counts["neurons_added"] += len(added)
                elif op == "prune":
                    self._prune(counts, self.iteration)
                if i == len(ops) - 1:
                    tr, snap, epoch = self._train_tracked(cfg.epochs_per_op, op)
                elif cfg.epochs_per_op:
                    tr = self._train(cfg.epochs_per_op, op)
        record = self._record(ops, counts, tr, time.time() - t0, snap, epoch)
        self.iteration += 1
        return record

    def _record(self, ops: list[str], counts: dict[str, int], train: tuple[float, float], seconds: float,
                snapshot: dict[str, Any] | None = None, epoch: int | None = None) -> dict[str, Any]:
        data = self.data
        net = FeedForwardNet.from_snapshot(snapshot, device=data.X_val.device) if snapshot is not None else self.net
        net = net.cleaned()  # same function; the figures are those of the real structure
        val_loss, val_acc = evaluate(net, data.X_val, data.y_val)
        test_acc = test_loss = None
        if data.X_test is not None:
            test_loss, test_acc = evaluate(net, data.X_test, data.y_test)
        params, flops = self.cost_fn(net)
        stats = net.stats()
        ckpt = Checkpoint(iteration=self.iteration, val_acc=val_acc, test_acc=test_acc, connections=net.connections,
                          params=params, flops=flops, neurons=net.num_hidden, depth=stats["depth"],
                          snapshot=net.snapshot())
        if self.keep_all:
            self.checkpoints.append(ckpt)
        if self.best is None or (val_acc, -ckpt.connections) > (self.best.val_acc, -self.best.connections):
            self.best = ckpt
        if self.reference_acc is not None and val_acc >= self.reference_acc - self.tolerance - 1e-12:
            if self.compact is None or (params, -val_acc) < (self.compact.params, -self.compact.val_acc):
                self.compact = ckpt
        record = {"iteration": self.iteration, "ops": "+".join(ops), "train_loss": train[0], "train_acc": train[1],
                  "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
                  "params": params, "flops": flops, **stats, "raw_connections": self.net.connections,
                  "raw_neurons": self.net.num_hidden, **counts, "epoch": epoch, "time_s": seconds}
        self.history.append(record)
        return record

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> Checkpoint:
        while not self.finished:
            rec = self.step()
            if callback is not None:
                callback(rec)
        assert self.best is not None
        return self.best

    def selected(self, select: str = "best_val") -> tuple[Checkpoint, bool]:
        """The output checkpoint: ``best_val`` (Algorithm 2) or ``most_compressed``.

        Returns ``(checkpoint, met)``; ``met`` says whether a checkpoint within the tolerance of
        the reference exists (``most_compressed`` falls back to ``best_val`` when none does).
        """
        if self.best is None:
            raise RuntimeError("no iteration has run")
        met = self.compact is not None
        if select == "most_compressed" and met:
            return self.compact, True
        if select not in ("best_val", "most_compressed"):
            raise UserError(f"select must be best_val or most_compressed, got {select!r}")
        return self.best, met

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.snapshot(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "iteration": self.iteration,
                "reference_connections": self.reference_connections,
                "best": self.best, "compact": self.compact, "checkpoints": list(self.checkpoints),
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.restore(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.reference_connections = int(state["reference_connections"])
        self.best, self.compact = state["best"], state["compact"]
        self.checkpoints = list(state.get("checkpoints", []))
        self.history = list(state["history"])


def synthesize(net: FeedForwardNet, cfg: ScannConfig, data: TensorData, *, seed: int = 0,
               reference_acc: float | None = None, tolerance: float = 0.005,
               callback: Callable[[dict[str, Any]], None] | None = None) -> tuple[FeedForwardNet, ScannSynthesis]:
    """Run Algorithm 2 and return ``(best-validation network, the synthesis object)``."""
    synth = ScannSynthesis(net, cfg, data, seed=seed, reference_acc=reference_acc, tolerance=tolerance)
    best = synth.run(callback)
    return FeedForwardNet.from_snapshot(best.snapshot), synth


# --------------------------------------------------------------------------- image mode


class LeNet5Features(nn.Sequential):
    """LeNet-5 (Caffe) convolutional part: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, flatten.

    Caffe's ``lenet_train_test.prototxt`` has no non-linearity after the convolutions; neither do we.
    """

    def __init__(self, in_channels: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
            nn.Flatten(),
        )


class LeNet5(nn.Module):
    """LeNet-5 (Caffe): features, FC 500 + ReLU, FC ``num_classes`` (431,080 parameters on 28x28, 10 classes)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = 500):
        super().__init__()
        self.features = LeNet5Features(input_shape[0])
        with torch.no_grad():
            n = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.fc1 = nn.Linear(n, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x))))


class ImageScannModel(nn.Module):
    """A fixed convolutional extractor followed by a synthesised fully connected part."""

    def __init__(self, features: nn.Module, fc: nn.Module):
        super().__init__()
        self.features = features
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def train_image_model(model: nn.Module, train_loader, val_loader, *, epochs: int, lr: float = 0.03,
                      momentum: float = 0.9, weight_decay: float = 1e-4, device="cpu",
                      callback: Callable[[dict[str, Any]], None] | None = None, start_epoch: int = 0,
                      optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """SGD training (Sec. 4.1 settings) with per-epoch ``callback(row)``; returns the optimizer."""
    from .training import evaluate as evaluate_loader, train_epoch

    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for epoch in range(start_epoch, epochs):
        tr = train_epoch(model, train_loader, opt, device=device, where=f"LeNet-5 epoch {epoch}")
        val = evaluate_loader(model, val_loader, device)
        if callback is not None:
            callback({"epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc, "val_loss": val.loss,
                      "val_acc": val.acc, "optimizer": opt})
    return opt


@torch.no_grad()
def extract_features(features: nn.Module, loader, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the fixed extractor over a loader: ``(X (n, d) float32, y (n,) int64)`` on the CPU."""
    was = features.training
    features.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(features(x.to(device)).flatten(1).cpu())
        ys.append(torch.as_tensor(y))
    features.train(was)
    return torch.cat(xs), torch.cat(ys).long()
