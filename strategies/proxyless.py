"""Customized ProxylessNAS: binary gates over NNI ``LayerChoice`` unit blocks.

Papers: ProxylessNAS (Cai et al., ICLR 2019) as customized in "Search Space Adaptation for
Differentiable NAS in Image Classification" (``../shared/seeds/003_364944a1cb8aa754.txt``,
Sec. II and IV-A).  What is implemented, and how it differs from NNI 3.0's built-in
``nni.nas.strategy.Proxyless`` (see DESIGN.md, "NNI 3.0 facts"):

* **Binary gates / path binarization.**  Every ``LayerChoice`` becomes a
  :class:`BinaryGateLayer` holding real-valued architecture parameters ``alpha``.
  *Weight step*: one path is sampled from ``softmax(alpha)`` and ONLY that path runs (NNI's
  built-in re-runs all N-1 other candidates in every backward).
  *Architecture step* (``grad_mode="two"``, the original's default): two paths are sampled
  without replacement, the gate over them is ``g = onehot(active) + p - stopgrad(p)`` with
  ``p = softmax(alpha[pair])``, so the forward value equals the single active path while
  ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` - exactly ProxylessNAS's estimator; the
  inactive path is recomputed without autograd in the backward (its activations are never
  saved: the arch step's saved memory equals a single-path step's); after
  the Adam step the two updated logits are shifted so the probability mass of the unsampled
  paths is unchanged (the original's ``rescale_updated_arch_param``).  ``grad_mode="full"``
  uses all N paths (the full estimator).
* **The paper's optimizers** (Sec. IV-A): weights SGD with Nesterov momentum, lr 0.05,
  momentum 0.9, weight decay 4e-5 on the training split; architecture Adam, lr 1e-3, no weight
  decay, on the held-out validation split; alternating (arch step, then weight step, per batch);
  optional warm-up epochs with frozen alpha.  Cosine lr decay per step (ProxylessNAS's
  schedule; the paper gives none).
* **Expected-cost term** (optional; off by default, as in the paper which drops the latency
  loss): ``loss_arch = CE + cost_weight * E[cost] / cost(baseline)`` where
  ``E[cost] = fixed + sum_blocks softmax(alpha) . cost_candidates`` with per-candidate FLOPs or
  measured latency from :mod:`search_spaces.cost`.  It is a tensor expression of ``alpha``, so
  it really produces gradients (NNI 3.0 builds its penalty from Python floats).
* **Cost target** (optional, ``cost_target``; our deviation, the paper has no cost term at all):
  to aim at a budget, e.g. the survey's "1/3 of the baseline FLOPs"
  (``../shared/seeds/000_c349d282987e7307.txt``), the term becomes a hinge on the expected cost
  of the *whole* network as a fraction of the baseline (every block at its first candidate):
  ``loss_arch = CE + cost_weight * max(0, E[C] / (cost_target * C(baseline)) - 1)`` with
  ``E[C] = C_fixed + sum_blocks softmax(alpha) . cost_candidates`` (``C_fixed``: stem,
  shortcuts, head - counted for FLOPs; for latency only the blocks are measured, so there the
  target is a fraction of the blocks' latency).  Why a hinge: the budget is a constraint, not an
  objective.  ProxylessNAS's additive ``lambda * E[LAT]`` (Cai et al., ICLR 2019, Sec. 3.3)
  keeps pushing the cost down whatever the budget, so a given target needs a sweep over
  ``lambda``; MnasNet's soft reward ``ACC * (LAT/T)^w`` (Tan et al., CVPR 2019; the form
  ProxylessNAS uses for its REINFORCE variant) is a soft trade-off that lands on either side of
  ``T``.  The hinge is zero inside the budget (there cross-entropy alone chooses, as in the
  paper), and above it is an exact penalty of ``E[C] <= T``: convex in the path probabilities,
  its gradient does not vanish at the boundary, so a large ``cost_weight`` holds ``E[C]`` at the
  target.  The constraint is on the expectation; the exported argmax path can differ from it:
  while alpha is still soft it undershoots (the cost gradient raises every block's cheapest
  candidate most), and it approaches ``E[C]`` only as the distributions sharpen over a long search.
* **Export** is the argmax path of every block: deterministic (NNI 3.0's ``export()``
  resamples at random).
* **Search exit** (the paper asks for one and gives none, Sec. IV-B): :class:`SearchExit` fires
  when the argmax architecture has been unchanged for ``exit_patience`` epochs and the change of
  the mean per-block entropy of ``softmax(alpha)`` over the last epoch is below
  ``exit_entropy_delta``.  The epoch is always reported; the search stops there only if
  ``stop_on_exit``.

Usable three ways, all on the same loop: :class:`ProxylessSearch` (plain PyTorch, one epoch per
call), the trial entry point (``experiments.methods.proxyless``: search + retrain in a run folder),
and NNI's ``NasExperiment(space, ProxylessEvaluator(...), CompactProxyless(config))``:
:class:`CompactProxyless` is an ``nni.nas.strategy.Proxyless`` subclass whose mutation hooks
install :class:`BinaryGateLayer` (``mutate_model`` is also how :class:`ProxylessSearch` builds its
supernet) and whose run is :func:`run_search` - the paper's optimizers, the cost term, the exit
criterion, ``trajectory.csv`` and the optional retraining, the same random draws as the trial, so
the same seed finds the same architecture.  :class:`BinaryGateLightningModule` is the binary-gate
step inside NNI's Lightning one-shot loop, for users of that loop (it has no cost term, exit or
trajectory).
"""
from __future__ import annotations

import math
import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.mutable import Categorical
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule
from nni.nas.oneshot.pytorch.strategy import Proxyless, no_default_hook
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule

from search_spaces import cost as costmodel
from search_spaces.errors import UserError

from .training import MemoryHost, TrainingPhase, check_finite, cosine_schedule, evaluate, fit_epoch, sgd_nesterov

__all__ = [
    "ProxylessConfig",
    "BinaryGateLayer",
    "CompactProxyless",
    "BinaryGateLightningModule",
    "ProxylessSearch",
    "SearchExit",
    "ProxylessEvaluator",
    "run_search",
    "retrain",
    "entropy",
]

GradMode = Literal["two", "full"]
CostTerm = Literal["none", "flops", "latency"]


@dataclass(frozen=True, kw_only=True)
class ProxylessConfig:
    """Search settings; defaults are the paper's (Sec. IV-A) where it gives them."""

    search_epochs: int = 400        # Fig. 3 runs past 400 epochs; the paper gives no exact count
    warmup_epochs: int = 0
    weight_lr: float = 0.05
    weight_momentum: float = 0.9
    weight_decay: float = 4e-5
    nesterov: bool = True
    arch_lr: float = 1e-3
    arch_weight_decay: float = 0.0
    arch_betas: tuple[float, float] = (0.9, 0.999)
    grad_mode: GradMode = "two"
    arch_every: int = 1             # an architecture step every K batches (ProxylessNAS's code: 5)
    cost_term: CostTerm = "none"
    cost_weight: float = 0.0
    cost_target: float | None = None  # fraction of the baseline's cost; None: the paper-style linear term
    record_every: int = 0           # also record the trajectory every K steps (0: epoch ends only)
    exit_patience: int = 10
    exit_entropy_delta: float = 1e-3
    stop_on_exit: bool = False

    def __post_init__(self):
        if self.search_epochs < 1:
            raise UserError(f"search_epochs must be >= 1, got {self.search_epochs}")
        if not 0 <= self.warmup_epochs <= self.search_epochs:
            raise UserError(f"warmup_epochs must be in [0, search_epochs], got {self.warmup_epochs}")
        for name in ("weight_lr", "arch_lr"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.grad_mode not in ("two", "full"):
            raise UserError(f"grad_mode must be 'two' or 'full', got {self.grad_mode!r}")
        if self.cost_term not in ("none", "flops", "latency"):
            raise UserError(f"cost_term must be none, flops or latency, got {self.cost_term!r}")
        if self.cost_weight < 0:
            raise UserError(f"cost_weight must be >= 0, got {self.cost_weight}")
        if self.cost_target is not None:
            if not (isinstance(self.cost_target, (int, float)) and 0 < self.cost_target < math.inf):
                raise UserError(f"cost_target must be a fraction > 0 of the baseline cost, got {self.cost_target}")
            if self.cost_term == "none":
                raise UserError("cost_target needs cost_term 'flops' or 'latency' (cost_term is 'none')")
        if self.exit_patience < 1:
            raise UserError(f"exit_patience must be >= 1, got {self.exit_patience}")
        if self.arch_every < 1:
            raise UserError(f"arch_every must be >= 1, got {self.arch_every}")
        if self.record_every < 0:
            raise UserError(f"record_every must be >= 0, got {self.record_every}")


def entropy(probs: torch.Tensor) -> float:
    p = probs.clamp_min(1e-12)
    return float(-(p * p.log()).sum())


class BinaryGateLayer(LayerChoice, BaseSuperNetModule):
    """A ``LayerChoice`` with ProxylessNAS binary gates (see the module docstring).

    ``mode`` is set by the search loop: ``"weight"`` (single sampled path), ``"arch"`` (gated
    two/all paths), ``"argmax"`` (deterministic, for evaluation and export).
    """

    _arch_parameter_names = ["_arch_alpha"]

    def __init__(self, candidates: dict[str, nn.Module], alpha: nn.Parameter, label: str):
        super().__init__(candidates, label=label)
        if len(alpha) != len(self.names):
            raise ValueError(f"alpha has {len(alpha)} entries for {len(self.names)} candidates")
        self._arch_alpha = alpha
        self.mode: str = "argmax"
        self._active: int = 0
        self._pair: list[int] = []
        self._pair_old: torch.Tensor | None = None
        self.register_buffer("candidate_cost", torch.zeros(len(self.names)), persistent=False)

    # ---- NNI supermodule protocol ------------------------------------------------------
    @classmethod
    def mutate(cls, module, name, memo, mutate_kwargs):
        if type(module) is LayerChoice:
            alpha = memo.get(module.label)
            if alpha is None:
                alpha = memo[module.label] = nn.Parameter(torch.zeros(len(module.names)))
            return cls(dict(module.named_children()), alpha, module.label)
        return None

    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {self.label: self.names[self._active]}

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: self.names[int(torch.argmax(self._arch_alpha).item())]}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        if self.label in memo:
            return {}
        return {self.label: dict(zip(self.names, self.probs().tolist()))}

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        yield self._arch_alpha

    # ---- sampling ----------------------------------------------------------------------
    def probs(self) -> torch.Tensor:
        return F.softmax(self._arch_alpha.detach(), dim=-1)

    def sample(self, mode: str, generator: torch.Generator, grad_mode: GradMode = "two") -> None:
        self.mode = mode
        probs = self.probs().cpu()
        if mode == "weight":
            self._active = int(torch.multinomial(probs, 1, generator=generator))
        elif mode == "arch":
            if grad_mode == "two" and len(self.names) > 2:
                pair = torch.multinomial(probs, 2, replacement=False, generator=generator).tolist()
            else:
                pair = list(range(len(self.names)))
            self._pair = pair
            sub = F.softmax(self._arch_alpha.detach().cpu()[pair], dim=-1)
            self._active = pair[int(torch.multinomial(sub, 1, generator=generator))]
            self._pair_old = self._arch_alpha.detach()[pair].clone()
        elif mode == "argmax":
            self._active = int(torch.argmax(self._arch_alpha).item())
        else:
            raise ValueError(mode)

    @torch.no_grad()
    def rescale_pair(self) -> None:
        """Keep the unsampled paths' probabilities unchanged after a two-path update."""
        if self._pair_old is None or len(self._pair) == len(self.names):
            return
        idx = torch.tensor(self._pair, device=self._arch_alpha.device)
        new = self._arch_alpha[idx]
        offset = torch.logsumexp(new, 0) - torch.logsumexp(self._pair_old, 0)
        self._arch_alpha[idx] -= offset

    def expected_cost(self) -> torch.Tensor:
        return (F.softmax(self._arch_alpha, dim=-1) * self.candidate_cost).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self[self.names[self._active]](x)
        if self.mode != "arch":
            return active
        p = F.softmax(self._arch_alpha[self._pair], dim=-1)
        return _BinaryGate.apply(p, x, active, self)


class _BinaryGate(torch.autograd.Function):
    """Forward: the active path's output (gate value one-hot).  Backward: ``dL/dg_k = <dL/dy,
    y_k>`` for every gated path, the inactive ones recomputed under ``no_grad`` (so their
    activations are never saved, as in ProxylessNAS's own implementation); ``p`` stays
    outside so autograd applies the softmax Jacobian: ``dL/dalpha_i = sum_j dL/dg_j p_j
    (delta_ij - p_i)``."""

    @staticmethod
    def forward(ctx, p, x, active, layer):
        ctx.layer = layer
        ctx.save_for_backward(x, active)
        return active.view_as(active)

    @staticmethod
    def backward(ctx, grad_out):
        x, active = ctx.saved_tensors
        layer: BinaryGateLayer = ctx.layer
        grad_p = None
        if ctx.needs_input_grad[0]:
            grad_p = torch.zeros(len(layer._pair), dtype=grad_out.dtype, device=grad_out.device)
            with torch.no_grad():
                for k, i in enumerate(layer._pair):
                    y = active if i == layer._active else layer[layer.names[i]](x)
                    grad_p[k] = (grad_out * y).sum()
        return grad_p, None, grad_out, None


class BinaryGateLightningModule(DartsLightningModule):
    """NNI's one-shot Lightning loop with our binary-gate steps (used inside ``NasExperiment``).

    Per batch: architecture step on the validation batch with two (or all) gated paths, Adam
    with the paper's settings (lr 1e-3, no weight decay, instead of NNI's hard-coded
    ``betas=(0.5, 0.999), weight_decay=1e-3``), then the pair rescaling; then a weight step
    with one sampled path through the evaluator's own optimizer.
    """

    def __init__(self, training_module, *, arc_learning_rate: float = 1e-3, grad_mode: GradMode = "two",
                 seed: int = 0, warmup_epochs: int = 0, **kwargs):
        super().__init__(training_module, arc_learning_rate=arc_learning_rate, warmup_epochs=warmup_epochs, **kwargs)
        self.grad_mode = grad_mode
        self.generator = torch.Generator().manual_seed(seed)

    def _gates(self) -> list[BinaryGateLayer]:
        return [m for m in self.supernet_modules() if isinstance(m, BinaryGateLayer)]

    def _set_mode(self, mode: str) -> None:
        for m in self._gates():
            m.sample(mode, self.generator, self.grad_mode)

    def training_step(self, batch, batch_idx):
        arc_optim = self.architecture_optimizers()
        if self.warmup_epochs == 0 or self.trainer.current_epoch >= self.warmup_epochs:
            self._set_mode("arch")
            arc_optim.zero_grad()
            arc_loss = self.training_module.training_step(batch["val"], 2 * batch_idx)
            if isinstance(arc_loss, dict):
                arc_loss = arc_loss["loss"]
            self.manual_backward(arc_loss)
            arc_optim.step()
            for m in self._gates():
                m.rescale_pair()
        self._set_mode("weight")
        out = self.training_module.training_step(batch["train"], 2 * batch_idx + 1)
        w_loss = out["loss"] if isinstance(out, dict) else out
        self.advance_optimization(w_loss, batch_idx, self.gradient_clip_val)
        self.advance_lr_schedulers(batch_idx)
        self._set_mode("argmax")  # validation / export see the deterministic network
        if batch_idx % self.log_prob_every_n_step == 0:
            self.log_probs(self.export_probs())
        return out

    def configure_architecture_optimizers(self):
        params = self.arch_parameters()
        if not params:
            raise ValueError("no architecture parameters found: nothing to search")
        return torch.optim.Adam(params, self.arc_learning_rate, weight_decay=0.0)


class CompactProxyless(Proxyless):
    """The customized ProxylessNAS as an NNI one-shot strategy: ``NasExperiment(space, evaluator,
    CompactProxyless(ProxylessConfig(...), seed=0))``.

    ``mutate_model(space)`` turns a model space into our supernet with NNI's machinery (mutation
    hooks install :class:`BinaryGateLayer`).  In a ``NasExperiment`` the strategy runs the same
    search as the trial entry point - :func:`run_search` drives :class:`ProxylessSearch` (the paper's
    optimizers, the expected-cost term, the exit criterion, ``trajectory.csv``) on the evaluator's
    loaders through :class:`strategies.training.TrainingPhase`, then retrains the exported network
    when the evaluator asks for it - so for the same seed, data and space it finds the same
    architecture as ``python -m experiments.trial proxyless``.  One-shot strategies run on NNI's
    sequential engine, which has no slot for per-epoch metrics, trajectories or retraining: the
    strategy does them itself (rows and trajectory in :attr:`result` and, with
    ``ProxylessEvaluator(out_dir=...)``, as a run folder: ``metrics.csv``, ``trajectory.csv``,
    ``arch.json``, ``summary.json``).  ``export_top_models`` gives the argmax architecture
    (deterministic; NNI 3.0's ``Proxyless`` resamples at random).

    The evaluator is a :class:`ProxylessEvaluator`; a Lightning evaluator (e.g. NNI's
    ``Classification``) is accepted for its loaders and ``max_epochs`` (as ``search_epochs`` when
    no ``config`` is given), its optimizer settings are not used.  ``arc_learning_rate``,
    ``grad_mode`` and ``warmup_epochs`` given here override the config's ``arch_lr``, ``grad_mode``
    and ``warmup_epochs``.  NNI's checkpoint of the strategy is empty (a search is resumed from
    its ``out_dir`` instead: not implemented for this path).
    """

    def __init__(self, config: ProxylessConfig | None = None, *, seed: int = 0, arc_learning_rate: float | None = None,
                 grad_mode: GradMode | None = None, warmup_epochs: int | None = None, **kwargs):
        super().__init__(arc_learning_rate=arc_learning_rate or 1e-3, warmup_epochs=warmup_epochs or 0, **kwargs)
        if config is not None and not isinstance(config, ProxylessConfig):
            raise UserError(f"config must be a ProxylessConfig, got {type(config).__name__}")
        self.config = config
        self._overrides = {k: v for k, v in (("arch_lr", arc_learning_rate), ("grad_mode", grad_mode),
                                             ("warmup_epochs", warmup_epochs)) if v is not None}
        self.grad_mode = grad_mode or "two"
        self.seed = seed
        self.result: dict[str, Any] | None = None
        self._evaluator: ProxylessEvaluator | None = None
        self._search_config: ProxylessConfig | None = None

    def default_mutation_hooks(self):
        return [BinaryGateLayer.mutate, no_default_hook]

    def configure_oneshot_module(self, training_module):
        return BinaryGateLightningModule(training_module, arc_learning_rate=self.arc_learning_rate,
                                         grad_mode=self.grad_mode, seed=self.seed, warmup_epochs=self.warmup_epochs,
                                         gradient_clip_val=self.gradient_clip_val,
                                         log_prob_every_n_step=self.log_prob_every_n_step)

    # ---- NasExperiment ---------------------------------------------------------------------
    def _initialize(self, model_space, engine):
        from nni.nas.evaluator.pytorch import Lightning

        ev = model_space.evaluator
        if isinstance(ev, Lightning):
            ev = ProxylessEvaluator.from_lightning(ev)
        elif not isinstance(ev, ProxylessEvaluator):
            raise UserError(f"CompactProxyless needs a ProxylessEvaluator (or a Lightning evaluator), "
                            f"got {type(ev).__name__}")
        cfg = self.config or ProxylessConfig(**({"search_epochs": ev.search_epochs} if ev.search_epochs else {}))
        if self._overrides:
            cfg = dataclasses.replace(cfg, **self._overrides)
        self._evaluator, self._search_config = ev, cfg
        return model_space

    def _run(self) -> None:
        self.result = run_search(self.model_space.model_space, self._search_config, self._evaluator, seed=self.seed,
                                 freeze=lambda arch: self.model_space.freeze(arch).executable_model())

    def list_models(self, sort: bool = True, limit: int | None = 1):
        if self.result is None:
            raise RuntimeError("CompactProxyless has not been run")
        yield self.model_space.freeze(dict(self.result["arch"]))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class SearchExit:
    """Search-exit criterion: argmax stable for ``patience`` epochs and mean-entropy change < delta."""

    def __init__(self, patience: int, entropy_delta: float):
        self.patience = patience
        self.entropy_delta = entropy_delta
        self.last_arch: dict[str, str] | None = None
        self.last_entropy: float | None = None
        self.stable = 0
        self.exit_epoch: int | None = None

    def update(self, epochs_done: int, arch: dict[str, str], mean_entropy: float) -> bool:
        """Feed the state after ``epochs_done`` epochs; True the first time the criterion holds."""
        self.stable = self.stable + 1 if arch == self.last_arch else 0
        d_entropy = math.inf if self.last_entropy is None else abs(mean_entropy - self.last_entropy)
        self.last_arch, self.last_entropy = dict(arch), mean_entropy
        if self.exit_epoch is None and self.stable >= self.patience and d_entropy < self.entropy_delta:
            self.exit_epoch = epochs_done
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return dict(last_arch=self.last_arch, last_entropy=self.last_entropy, stable=self.stable,
                    exit_epoch=self.exit_epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


class ProxylessSearch:
    """The search loop (one object per search; owns its RNG, saved with its state).

    Typical use::

        search = ProxylessSearch(space, cfg, input_shape=(3, 32, 32), seed=0)
        for epoch in range(cfg.search_epochs):
            row = search.run_epoch(epoch, train_loader, val_loader, record=trajectory.extend)
        arch = search.export()
    """

    def __init__(self, space: ModelSpace, config: ProxylessConfig, *, input_shape: tuple[int, ...],
                 seed: int = 0, steps_per_epoch: int | None = None, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # alpha init inside NNI's mutate_model uses the global RNG
        self.supernet = CompactProxyless().mutate_model(space).to(self.device)
        self.layers: list[BinaryGateLayer] = sorted(
            (m for m in self.supernet.modules() if isinstance(m, BinaryGateLayer)), key=lambda m: m.label)
        if not self.layers:
            raise UserError("the search space has no LayerChoice to search (scope 'none'?)")
        arch_ids = {id(m._arch_alpha) for m in self.layers}
        self.arch_params = [m._arch_alpha for m in self.layers]
        self.weight_params = [p for p in self.supernet.parameters() if id(p) not in arch_ids]
        c = config
        self.weight_opt = sgd_nesterov(self.weight_params, lr=c.weight_lr, momentum=c.weight_momentum,
                                       weight_decay=c.weight_decay, nesterov=c.nesterov)
        self.arch_opt = torch.optim.Adam(self.arch_params, lr=c.arch_lr, betas=c.arch_betas,
                                         weight_decay=c.arch_weight_decay)
        self.steps_per_epoch = steps_per_epoch
        self.scheduler = None
        self._pending_scheduler_state: dict | None = None
        self.global_step = 0
        self.exit = SearchExit(c.exit_patience, c.exit_entropy_delta)
        self._cost_ref = 1.0
        self._fixed_cost = 0.0
        self._target_ref = 1.0
        self._fill_cost_tables()

    # ---- costs ---------------------------------------------------------------------------
    def _block_inputs(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}

        def hook(mod, args):
            shapes.setdefault(mod.label, tuple(args[0].shape[1:]))

        hooks = [m.register_forward_pre_hook(hook) for m in self.layers]
        try:
            self._set_mode("argmax")
            with torch.no_grad():
                self.supernet.eval()
                self.supernet(torch.zeros((1, *self.input_shape), device=self.device))
                self.supernet.train()
        finally:
            for h in hooks:
                h.remove()
        return shapes

    def _fill_cost_tables(self) -> None:
        """Per-candidate params and FLOPs (always, for the metrics) and the cost-term table."""
        shapes = self._block_inputs()
        self.candidate_params: dict[str, list[int]] = {}
        self.candidate_flops: dict[str, list[int]] = {}
        for m in self.layers:
            ops = [m[n] for n in m.names]
            self.candidate_params[m.label] = [costmodel.count_params(op) for op in ops]
            self.candidate_flops[m.label] = [costmodel.count_flops(op, shapes[m.label]) for op in ops]
        all_params = costmodel.count_params(self.supernet) - sum(len(m.names) for m in self.layers)
        self._fixed_params = all_params - sum(sum(v) for v in self.candidate_params.values())
        self._set_mode("argmax")
        total_flops = costmodel.count_flops(self.supernet, self.input_shape)
        self._fixed_flops = total_flops - sum(self.candidate_flops[m.label][m._active] for m in self.layers)
        if self.config.cost_term == "none":
            return
        for m in self.layers:
            if self.config.cost_term == "flops":
                values = self.candidate_flops[m.label]
            else:
                values = [costmodel.measure_latency(m[n], shapes[m.label], repeats=10) for n in m.names]
            m.candidate_cost.copy_(torch.tensor(values, dtype=torch.float32))
        # normalise by the cost of the all-first-candidate (baseline) blocks
        self._cost_ref = float(sum(m.candidate_cost[0] for m in self.layers)) or 1.0
        # the target is a fraction of the whole baseline network (blocks + fixed part)
        self._fixed_cost = float(self._fixed_flops) if self.config.cost_term == "flops" else 0.0
        self._target_ref = (self._fixed_cost + float(sum(m.candidate_cost[0] for m in self.layers))) or 1.0
        if self.config.cost_target is not None:
            cheapest = self._fixed_cost + float(sum(m.candidate_cost.min() for m in self.layers))
            if self.config.cost_target * self._target_ref < cheapest * (1 - 1e-6):
                raise UserError(f"cost_target {self.config.cost_target:g} is below the cheapest architecture "
                                f"of this space ({cheapest / self._target_ref:.4f} of the baseline)")

    def arch_cost(self, arch: dict[str, str]) -> dict[str, int]:
        """Params and FLOPs of the fixed network ``arch`` (from the per-candidate tables)."""
        params, flops = self._fixed_params, self._fixed_flops
        for m in self.layers:
            i = m.names.index(arch[m.label])
            params += self.candidate_params[m.label][i]
            flops += self.candidate_flops[m.label][i]
        return {"params": int(params), "flops": int(flops)}

    def expected_cost(self) -> torch.Tensor:
        return sum(m.expected_cost() for m in self.layers) / self._cost_ref

    def expected_cost_fraction(self) -> torch.Tensor:
        """``E[C] / C(baseline)`` of the whole network (the quantity ``cost_target`` bounds)."""
        return (self._fixed_cost + sum(m.expected_cost() for m in self.layers)) / self._target_ref

    def cost_penalty(self) -> torch.Tensor:
        """The term ``cost_weight`` multiplies: the linear expected cost, or the target hinge."""
        if self.config.cost_target is None:
            return self.expected_cost()
        return F.relu(self.expected_cost_fraction() / self.config.cost_target - 1)

    # ---- modes -----------------------------------------------------------------------------
    def _set_mode(self, mode: str) -> None:
        for m in self.layers:
            m.sample(mode, self.generator, self.config.grad_mode)

    def probs(self) -> dict[str, dict[str, float]]:
        return {m.label: dict(zip(m.names, m.probs().tolist())) for m in self.layers}

    def export(self) -> dict[str, str]:
        """Argmax architecture (deterministic)."""
        return {m.label: m.names[int(torch.argmax(m._arch_alpha))] for m in self.layers}

    def mean_entropy(self) -> float:
        return float(np.mean([entropy(m.probs()) for m in self.layers]))

    def trajectory_rows(self, epoch: float) -> list[dict[str, Any]]:
        rows = []
        for m in self.layers:
            probs = m.probs().tolist()
            for name, a, p in zip(m.names, m._arch_alpha.detach().tolist(), probs):
                rows.append({"epoch": round(epoch, 4), "step": self.global_step, "label": m.label, "choice": name,
                             "alpha": a, "prob": p})
        return rows

    # ---- steps -----------------------------------------------------------------------------
    def _arch_step(self, x: torch.Tensor, y: torch.Tensor, where: str) -> float:
        self._set_mode("arch")
        for p in self.weight_params:  # no weight gradients are needed for the arch step
            p.requires_grad_(False)
        try:
            self.arch_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.supernet(x), y)
            check_finite(loss, f"{where} (architecture step)")
            total = loss
            if self.config.cost_term != "none" and self.config.cost_weight > 0:
                total = loss + self.config.cost_weight * self.cost_penalty()
            total.backward()
            self.arch_opt.step()
            for m in self.layers:
                m.rescale_pair()
        finally:
            for p in self.weight_params:
                p.requires_grad_(True)
        return float(loss.detach())

    def _weight_step(self, x: torch.Tensor, y: torch.Tensor, where: str) -> tuple[float, int]:
        self._set_mode("weight")
        out = self.supernet(x)
        loss = F.cross_entropy(out, y)
        check_finite(loss, f"{where} (weight step)")
        self.weight_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.weight_opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach()), int((out.argmax(1) == y).sum())

    def run_epoch(self, epoch: int, train_loader, val_loader, *,
                  record: Callable[[list[dict[str, Any]]], None] | None = None, bar=None) -> dict[str, Any]:
        """One search epoch: per batch an architecture step on a validation batch (after
        warm-up), then a weight step on a training batch.  Returns the epoch's metrics row."""
        c = self.config
        steps = len(train_loader)
        if self.scheduler is None:
            self.steps_per_epoch = steps
            self.scheduler = cosine_schedule(self.weight_opt, c.search_epochs * steps)
            if self._pending_scheduler_state is not None:
                self.scheduler.load_state_dict(self._pending_scheduler_state)
                self._pending_scheduler_state = None
                for group, lr in zip(self.weight_opt.param_groups, self.scheduler.get_last_lr()):
                    group["lr"] = lr  # constructing the scheduler reset it to the base lr
        if epoch == 0 and record is not None and self.global_step == 0:
            record(self.trajectory_rows(0.0))
        arch_active = epoch >= c.warmup_epochs
        for p in self.arch_params:
            p.requires_grad_(arch_active)
        self.supernet.train()
        val_iter = _cycle(val_loader) if arch_active else None
        tot_loss = tot_arch = 0.0
        correct = n = 0
        for i, (x, y) in enumerate(train_loader):
            x, y = x.to(self.device), y.to(self.device)
            where = f"search epoch {epoch} step {i}"
            if val_iter is not None and i % c.arch_every == 0:
                xv, yv = next(val_iter)
                tot_arch += self._arch_step(xv.to(self.device), yv.to(self.device), where)
            loss, corr = self._weight_step(x, y, where)
            self.global_step += 1
            tot_loss += loss * y.numel()
            correct += corr
            n += y.numel()
            if c.record_every and record is not None and (i + 1) % c.record_every == 0 and i + 1 < steps:
                record(self.trajectory_rows(epoch + (i + 1) / steps))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{correct / n:.3f}", refresh=False)
        self._set_mode("argmax")
        val = evaluate(self.supernet, val_loader, self.device)
        if record is not None:
            record(self.trajectory_rows(epoch + 1.0))
        arch = self.export()
        h = self.mean_entropy()
        changed = self.exit.last_arch is not None and arch != self.exit.last_arch
        fired = self.exit.update(epoch + 1, arch, h)
        return {
            "phase": "search", "epoch": epoch,
            "train_loss": tot_loss / max(n, 1), "train_acc": correct / max(n, 1),
            "val_loss": val.loss, "val_acc": val.acc,
            "arch_loss": tot_arch / max(math.ceil(steps / c.arch_every), 1) if arch_active else None,
            "mean_entropy": h, "arch_changed": int(changed), "exit_fired": int(fired),
            "lr": self.weight_opt.param_groups[0]["lr"],
            **self.arch_cost(arch),
            "expected_cost": float(self.expected_cost().detach()) if c.cost_term != "none" else None,
        }

    def should_stop(self) -> bool:
        return self.config.stop_on_exit and self.exit.exit_epoch is not None

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "supernet": self.supernet.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "global_step": self.global_step,
            "generator": self.generator.get_state(),
            "exit": self.exit.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.global_step = state["global_step"]
        self.generator.set_state(state["generator"])
        self.exit.load_state_dict(state["exit"])
        self.scheduler = None  # rebuilt (it needs the loader length) at the next epoch
        self._pending_scheduler_state = state["scheduler"]



# ------------------------------------------------------------------------------------- Python API


def _nni_evaluator_base():
    from nni.nas.evaluator import Evaluator

    return Evaluator


class ProxylessEvaluator(_nni_evaluator_base()):
    """The data side of a ProxylessNAS search in ``NasExperiment`` (see :class:`CompactProxyless`).

    ``train_loader`` trains the weights, ``val_loader`` the architecture (the held-out split, as in
    the paper) and scores each epoch; ``test_loader`` (optional) scores the retrained network;
    ``retrain_epochs`` > 0 retrains the exported architecture from scratch with the search's weight
    settings (SGD-Nesterov, cosine; the paper's "same settings", Sec. IV-A), as the trial does;
    ``input_shape`` defaults to the first training sample's; ``out_dir`` makes the search write a
    run folder (``metrics.csv``, ``trajectory.csv``, ``arch.json``, ``summary.json``);
    ``search_epochs`` is used only when the strategy has no config."""

    def __init__(self, train_loader, val_loader, *, test_loader=None, input_shape: tuple[int, ...] | None = None,
                 retrain_epochs: int = 0, device: str | torch.device = "cpu", out_dir: str | None = None,
                 progress: bool = False, search_epochs: int | None = None):
        if retrain_epochs < 0:
            raise UserError(f"retrain_epochs must be >= 0, got {retrain_epochs}")
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        if input_shape is None:
            input_shape = tuple(train_loader.dataset[0][0].shape)   # no loader pass: no RNG drawn
        self.input_shape = tuple(input_shape)
        self.retrain_epochs, self.device, self.progress = int(retrain_epochs), torch.device(device), progress
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.search_epochs = search_epochs

    @classmethod
    def from_lightning(cls, ev) -> "ProxylessEvaluator":
        train, val = ev.train_dataloaders, ev.val_dataloaders
        if train is None or val is None:
            raise UserError("the Lightning evaluator needs train and val dataloaders")
        kwargs = getattr(ev.trainer, "trace_kwargs", {}) or {}
        return cls(train, val, search_epochs=kwargs.get("max_epochs"))

    def evaluate(self, model) -> float:
        """Accuracy of ``model`` on the test loader (the validation loader if there is none)."""
        return evaluate(model, self.test_loader or self.val_loader, self.device).acc

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, retrain_epochs={self.retrain_epochs}, out_dir={self.out_dir}"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from search_spaces.files import atomic_write_text

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class _SearchHost(MemoryHost):
    """Keeps the metrics rows and the trajectory; with ``out_dir`` writes them (atomically) at each
    epoch end, as the trial's run folder does."""

    def __init__(self, out_dir: Path | None, progress: bool):
        super().__init__(progress=progress)
        self.out_dir = out_dir
        self.trajectory: list[dict[str, Any]] = []

    def record(self, rows: list[dict[str, Any]]) -> None:
        self.trajectory.extend(rows)

    def checkpoint(self) -> None:
        if self.out_dir is not None:
            _write_csv(self.out_dir / "metrics.csv", self.rows)
            _write_csv(self.out_dir / "trajectory.csv", self.trajectory)

    def write_json(self, name: str, obj: Any) -> None:
        import json

        from search_spaces.files import atomic_write_text

        if self.out_dir is not None:
            atomic_write_text(self.out_dir / name, json.dumps(obj, indent=2, default=float))


def retrain(model: nn.Module, cfg: ProxylessConfig, train_loader, val_loader, epochs: int, *, host=None,
            seed: int = 0, device: torch.device | str = "cpu", extra: dict[str, Any] | None = None,
            desc: str = "retrain") -> TrainingPhase:
    """Retrain ``model`` from scratch with the search's weight settings (SGD-Nesterov, lr/momentum/
    weight decay of ``cfg``, per-step cosine) for ``epochs`` in the resumable phase ``retrain``."""
    model.to(device)
    opt = sgd_nesterov(model.parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum,
                       weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    sched = cosine_schedule(opt, max(1, epochs * len(train_loader)))

    def epoch_fn(epoch: int, bar) -> dict[str, Any]:
        _, _, row = fit_epoch(model, train_loader, val_loader, opt, scheduler=sched, device=device,
                              where=f"retrain epoch {epoch}", bar=bar)
        return {**row, **(extra or {})}

    phase = TrainingPhase(host, "retrain", epochs, seed=seed, reseed=1, loader=train_loader, desc=desc)
    return phase.run(epoch_fn, state={"model": model, "opt": opt, "sched": sched})


def run_search(space: ModelSpace, cfg: ProxylessConfig, ev: ProxylessEvaluator, *, seed: int = 0,
               freeze: Callable[[dict[str, str]], nn.Module] | None = None) -> dict[str, Any]:
    """One search (+ optional retraining) as the trial runs it, on ``ev``'s loaders; returns
    ``arch``, ``exit_epoch``, ``search_epochs``, ``params`` / ``flops`` of the exported network,
    ``rows`` (metrics), ``trajectory`` and, after retraining, ``model``, ``val_acc``, ``test_acc``.

    Same order of random draws as ``experiments.methods.proxyless.run``: :class:`ProxylessSearch`
    seeds the global RNG with ``seed``, the phase reseeds the training loader per epoch, the
    retrained network is initialised after ``torch.manual_seed(seed + 1)`` (``freeze(arch)``, by
    default ``space.freeze(arch)``)."""
    host = _SearchHost(ev.out_dir, ev.progress)
    search = ProxylessSearch(space, cfg, input_shape=ev.input_shape, seed=seed, device=ev.device)
    counted = costmodel.CountedLoader(ev.train_loader)   # the search's training FLOPs (its cost)

    def search_epoch(epoch: int, bar) -> dict[str, Any]:
        before = counted.flops
        row = search.run_epoch(epoch, counted, ev.val_loader, record=host.record, bar=bar)
        return {**row, "train_flops": counted.flops - before}

    phase = TrainingPhase(host, "search", cfg.search_epochs, seed=seed, loader=ev.train_loader, desc="search")
    phase.run(search_epoch, state={"search": search}, until=search.should_stop)
    arch = search.export()
    phase.finish({"arch": arch, "exit_epoch": search.exit.exit_epoch})
    result: dict[str, Any] = {"arch": arch, "exit_epoch": search.exit.exit_epoch, "search_epochs": phase.epochs_done,
                              "search_time_s": phase.time_s, "search_train_flops": counted.flops,
                              **search.arch_cost(arch), "probs": search.probs()}
    host.write_json("arch.json", {"arch": arch})
    if ev.retrain_epochs:
        torch.manual_seed(seed + 1)
        model = freeze(arch) if freeze is not None else space.freeze(arch)
        cost = costmodel.profile(model, ev.input_shape)
        retrain(model, cfg, ev.train_loader, ev.val_loader, ev.retrain_epochs, host=host, seed=seed, device=ev.device,
                extra={"params": cost.params, "flops": cost.flops})
        result.update(model=model, params=cost.params, flops=cost.flops,
                      val_acc=evaluate(model, ev.val_loader, ev.device).acc)
        if ev.test_loader is not None:
            result["test_acc"] = evaluate(model, ev.test_loader, ev.device).acc
    host.checkpoint()
    result.update(rows=list(host.rows), trajectory=list(host.trajectory))
    host.write_json("summary.json", {k: v for k, v in result.items() if k not in ("model", "rows", "trajectory")})
    return result
