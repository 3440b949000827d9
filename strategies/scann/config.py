"""SCANN's settings: :class:`ScannConfig`, the schemes' presets and the training defaults.

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (Hassantabar, Wang, Jha;
``../shared/seeds/002_d08e71b4be716ba4.txt``).

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
validation splits of digits and breast_cancer, and 1e-2 trains the small sparse networks better).
The number of epochs after each operation (Sec. 3.7.2: "X to Y epochs") and the iteration count
are lost as well (ours: :data:`EPOCHS_PER_OP`, 10 iterations).  Ours, not the paper's: the training
after an iteration's last pruning (the recovery, whose epochs are the checkpoints) may use its own
lr (``recovery_lr``) and a cosine anneal to 1% of it (``recovery_schedule``); default: the
constant training lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from search_spaces.errors import UserError

__all__ = ["EPOCHS_PER_OP", "IMAGE_TRAINING", "SCHEME_PRESETS", "TABULAR_TRAINING", "Optimizer", "RecoverySchedule",
           "Scheme", "ScannConfig"]

Scheme = Literal["A", "B", "C"]
Optimizer = Literal["adam", "sgd"]
RecoverySchedule = Literal["constant", "cosine"]

#: Per-scheme settings from Sec. 4.1 (MNIST, LeNet-5 FC 500); see the module docstring.
SCHEME_PRESETS: dict[str, dict[str, Any]] = {
    "A": dict(initial_neurons_ratio=0.6, max_neurons_ratio=1.0, initial_prune=0.95, grow_to=0.35,
              neuron_growth=5, prune_fraction=0.25, prune_keep=None),
    "B": dict(initial_neurons_ratio=0.8, max_neurons_ratio=0.8, initial_prune=None, grow_to=0.9,
              neuron_growth=0, prune_fraction=None, prune_keep=0.05),
    "C": dict(initial_neurons_ratio=1.0, max_neurons_ratio=1.0, initial_prune=None, grow_to=1.0,
              neuron_growth=0, prune_fraction=None, prune_keep=0.023),
}
#: Sec. 4.2: Adam (lr and weight decay lost in our copy; ours).
TABULAR_TRAINING = dict(optimizer="adam", lr=1e-2, momentum=0.0, weight_decay=1e-4)
#: Sec. 4.1: SGD, lr 0.03, momentum 0.9, weight decay 1e-4.
IMAGE_TRAINING = dict(optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4)
#: Training epochs after each operation (lost in our copy; ours): tabular and image data.
EPOCHS_PER_OP = {"tabular": 10, "image": 1}
#: The cosine recovery schedule ends at this share of its start.
RECOVERY_FLOOR = 0.01

#: Fields that a resolved config (the one the synthesis runs with) always sets.
_RESOLVED = ("initial_neurons", "max_neurons", "grow_to", "neuron_growth", "initial_epochs", "epochs_per_op",
             "optimizer", "lr", "momentum", "weight_decay")


def _check_unit(name: str, value: float | None, *, closed: bool = True) -> None:
    if value is None:
        return
    ok = (0 < value <= 1) if closed else (0 < value < 1)
    if not ok:
        raise UserError(f"{name} must be in (0, 1{']' if closed else ')'}, got {value}")


@dataclass(frozen=True, kw_only=True)
class ScannConfig:
    """Synthesis settings; ``None`` takes the scheme's preset (:data:`SCHEME_PRESETS`) or the data
    kind's training default (:data:`TABULAR_TRAINING`, :data:`IMAGE_TRAINING`, :data:`EPOCHS_PER_OP`).

    :meth:`resolve` (or :meth:`for_scheme`) gives the config the synthesis runs with: every preset
    filled in, neuron counts scaled to the baseline's hidden neurons.  ``grow_to`` and
    ``prune_keep`` are shares of all *allowed* connections; ``initial_prune`` and ``prune_fraction``
    shares of the *existing* ones.  ``prune_keep_schedule`` (optional) gives the keep share per
    iteration (the last value repeats), e.g. to prune "iteratively to the final size" (Scheme C)
    in one run.  ``checkpoint_epochs``: every epoch of the training that follows an iteration's
    last pruning is a checkpoint candidate (the structure is fixed then), and the iteration's
    checkpoint is its best-validation epoch (accuracy; ties: the lower validation loss) -- the same
    protocol as the baselines, which keep their best-validation epoch; ``False`` checkpoints
    iteration ends only.
    """

    scheme: Scheme = "C"
    groups: int = 3
    initial_neurons: int | None = None       # None: the scheme's share of the baseline's hidden neurons
    max_neurons: int | None = None
    initial_prune: float | None = None       # None here and below: the scheme's preset
    grow_to: float | None = None
    growth_threshold: float | None = None    # connection growth above this |dL/dw| instead of grow_to
    neuron_growth: int | None = None
    prune_fraction: float | None = None
    prune_keep: float | None = None
    prune_keep_schedule: tuple[float, ...] = ()
    iterations: int = 10
    initial_epochs: int | None = None        # None: 0 for Scheme C (it starts trained), else 2 x epochs_per_op
    epochs_per_op: int | None = None
    noise: float = 0.1
    growth_batch: int = 2048
    checkpoint_epochs: bool = True
    optimizer: Optimizer | None = None
    lr: float | None = None
    #: Learning rate of the recovery training after an iteration's last pruning (the checkpointed
    #: epochs); ``None``: ``lr``.  The other training (seed, after growth) always uses ``lr``.
    recovery_lr: float | None = None
    #: ``cosine``: the recovery training's lr anneals from ``recovery_lr`` (or ``lr``) to 1% of it
    #: over its epochs, each pruned size ending at a small lr.
    recovery_schedule: RecoverySchedule = "constant"
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int = 64

    def __post_init__(self):
        if self.groups < 1:
            raise UserError(f"groups must be >= 1, got {self.groups}")
        if self.initial_neurons is not None and self.initial_neurons < 1:
            raise UserError(f"initial_neurons must be >= 1, got {self.initial_neurons}")
        if None not in (self.initial_neurons, self.max_neurons) and self.max_neurons < self.initial_neurons:
            raise UserError(f"max_neurons ({self.max_neurons}) must be >= initial_neurons ({self.initial_neurons})")
        _check_unit("initial_prune", self.initial_prune, closed=False)
        _check_unit("grow_to", self.grow_to)
        _check_unit("prune_fraction", self.prune_fraction, closed=False)
        _check_unit("prune_keep", self.prune_keep)
        for v in self.prune_keep_schedule:
            _check_unit("prune_keep_schedule", v)
        if self.resolved and self.prune_fraction is None and self.prune_keep is None and not self.prune_keep_schedule:
            raise UserError("give prune_fraction or prune_keep (or prune_keep_schedule)")
        if self.growth_threshold is not None and self.growth_threshold < 0:
            raise UserError(f"growth_threshold must be >= 0, got {self.growth_threshold}")
        for name in ("neuron_growth", "iterations", "initial_epochs", "epochs_per_op"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.growth_batch < 1 or self.batch_size < 1:
            raise UserError("growth_batch and batch_size must be >= 1")
        if self.noise < 0:
            raise UserError(f"noise must be >= 0, got {self.noise}")
        if self.recovery_lr is not None and not self.recovery_lr > 0:
            raise UserError(f"recovery_lr must be > 0, got {self.recovery_lr}")
        lr = 1.0 if self.lr is None else self.lr  # unset: the defaults, which are valid
        wd, momentum = (0.0 if v is None else v for v in (self.weight_decay, self.momentum))
        if not 0 < lr < math.inf or not 0 <= wd < math.inf or not 0 <= momentum < 1:
            raise UserError(f"need finite lr > 0, finite weight_decay >= 0, 0 <= momentum < 1; got lr={self.lr}, "
                            f"weight_decay={self.weight_decay}, momentum={self.momentum}")

    # ---- the resolved settings --------------------------------------------------------------
    @property
    def resolved(self) -> bool:
        """Whether every preset is filled in (:meth:`resolve`): the synthesis needs that."""
        return all(getattr(self, k) is not None for k in _RESOLVED)

    def training(self, image: bool = False) -> dict[str, Any]:
        """Optimizer settings: the data kind's defaults, overridden by the fields that are set."""
        base = dict(IMAGE_TRAINING if image else TABULAR_TRAINING)
        base.update({k: getattr(self, k) for k in base if getattr(self, k) is not None})
        return base

    def resolve(self, baseline_neurons: int, *, image: bool = False) -> ScannConfig:
        """The settings the synthesis runs with (a plain :class:`ScannConfig`, whatever subclass
        ``self`` is): presets and training defaults in place of ``None``, neuron counts scaled to
        ``baseline_neurons``."""
        if self.scheme not in SCHEME_PRESETS:
            raise UserError(f"unknown scheme {self.scheme!r}; valid: {', '.join(SCHEME_PRESETS)}")
        preset = dict(SCHEME_PRESETS[self.scheme])
        ini = max(1, round(preset.pop("initial_neurons_ratio") * baseline_neurons))
        mx = max(ini, round(preset.pop("max_neurons_ratio") * baseline_neurons))
        values = {f.name: getattr(self, f.name) for f in fields(ScannConfig)}
        epochs = EPOCHS_PER_OP["image" if image else "tabular"] if self.epochs_per_op is None else self.epochs_per_op
        defaults = {**preset, **self.training(image), "epochs_per_op": epochs, "initial_neurons": ini,
                    "initial_epochs": 0 if self.scheme == "C" else 2 * epochs}
        values.update({k: v for k, v in defaults.items() if values[k] is None})
        if values["max_neurons"] is None:
            values["max_neurons"] = max(mx, values["initial_neurons"])
        return ScannConfig(**values)

    @classmethod
    def for_scheme(cls, scheme: str, *, baseline_neurons: int, image: bool = False, **overrides: Any) -> ScannConfig:
        """The scheme's resolved paper defaults; ``overrides`` (``None`` values are ignored) replace any field."""
        names = {f.name for f in fields(cls)}
        unknown = [k for k in overrides if k not in names]
        if unknown:
            raise UserError(f"unknown SCANN setting {unknown[0]!r}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(scheme=scheme, **given).resolve(baseline_neurons, image=image)

    # ---- what the schedule does ---------------------------------------------------------------
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

    def recovery_lr_at(self, epoch: int, epochs: int) -> float:
        """The learning rate of recovery epoch ``epoch`` of ``epochs`` (see ``recovery_schedule``)."""
        lr0 = self.recovery_lr if self.recovery_lr is not None else self.lr
        if self.recovery_schedule != "cosine":
            return lr0
        return lr0 * (RECOVERY_FLOOR + (1 - RECOVERY_FLOOR) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs - 1))))
