"""Growing networks by structured continuous sparsification (budget-aware, any-time sparse).

Paper: "Growing Efficient Deep Networks by Structured Continuous Sparsification"
(``../shared/seeds/001_a6039e1e4b9b8530.txt``), Sec. 3.2 and Algorithm 1.  What is implemented:

* **Mask weights and indicators** (Eq. 5): one continuous ``s`` per structure (filter group entry,
  growable unit, see :mod:`search_spaces.growth_spaces`); indicator ``1[s > 0]``, relaxed as
  ``sigmoid(beta * s)`` (``relax="sigmoid"``, default) or as a binary gumbel/concrete sample
  ``sigmoid(beta * s + logistic noise)`` (``relax="gumbel"``).
* **Any-time sparsification** (Eq. 6): every step each structure's indicator ``q`` is drawn from
  ``Bernoulli(sigmoid(beta * s))`` and only sampled filters/units are computed (see *Real
  savings*), multiplied by their relaxed value so ``s`` gets the loss gradient.
  ``sampling="random"`` is the paper's random baseline (Table 5): ``q ~ Bernoulli(random_prob)``.
* **Structure-wise temperature** (Eq. 7): ``beta_i = beta0 * gamma ** t_i`` with a counter
  ``t_i`` per structure that advances only in steps where the structure was sampled and computed
  (by ``1 / steps_per_epoch``, so an always-sampled structure follows the global schedule);
  ``temperature="global"`` uses ``t_i = epoch`` for all (the ablation).  ``gamma =
  final_beta ** (1 / epochs)`` (Sec. 4.1: ``gamma = c^(1/T)``; the constant is lost in our copy of
  the text, 100 is our choice).
* **Budget-aware growing** (Eq. 4): every ``budget_every`` steps, ``lambda = lambda_base * du``
  with ``du = target sparsity - current sparsity`` of the deterministic network (params by
  default, or FLOPs) of its compact form (see *Budget bookkeeping*).
  While the network is sparser than the budget ``du < 0`` and the penalty makes it grow.
  Penalty: ``lambda_chan * sum sigmoid(beta*s_chan) + lambda_unit * sum sigmoid(beta*s_unit)``.
* **Optimisation** (Sec. 4.1/4.2): weights SGD lr 0.1, momentum 0.9, weight decay 5e-4 (value lost
  in our copy; the CIFAR ResNet/VGG standard); the learning-rate schedule is the one of the
  baseline the grown network is compared with ("the same hyperparameters used to train the
  corresponding unpruned baseline models"): ``lr_schedule="step"`` (default), x0.1 at 50% and
  75% of the epochs as the paper's CIFAR baselines (A.3), or ``"cosine"`` (per step, to 0) where
  the baseline is trained so (the compact-search survey); mask weights SGD with the same schedule
  and momentum, no decay.
  ``lambda_chan`` 0.5 when only channels grow (4.1), ``lambda_chan, lambda_unit`` = 1.0, 0.1 when
  layers grow too (4.2).
* **Real savings**: a step computes only the sampled filters and units, as a dense network of
  the sampled widths: every computed layer's weights are copied out as leaf tensors of those
  widths (:class:`search_spaces.growth_spaces.GrowableNet`), so the backward pass, the gradients
  and the SGD update (momentum, weight decay; ``torch._foreach`` over the blocks) exist only for
  them; the updated blocks and their momentum are written back.  A detached structure therefore
  keeps its weights and optimizer state untouched and returns to them when it comes back;
  BatchNorm running statistics are updated only for computed filters.  Training FLOPs are counted
  with :func:`search_spaces.cost.count_train_flops` on what the step ran: per computed layer on
  its real shapes (:func:`layer_train_flops`; tests check the sum against torch's FLOP counter
  around a real step and against a dense network built at the sampled widths).
* **Budget bookkeeping** is analytic: params and FLOPs are bilinear in the group widths, with
  per-layer coefficients measured once with the cost model (:class:`strategies.survey.WidthCost`;
  a test checks them against the cost model on exported networks), so a budget update does not
  build or profile a network.
* **Kernel cache**: on CPU, every new layer shape makes oneDNN generate (JIT) and cache new
  kernels; sampling changes almost every layer's widths every step, which overflows oneDNN's
  default cache of 1024 kernels and regenerates them all the time.  :func:`enlarge_kernel_cache`
  raises it; call it before the process runs its first convolution (the growth trial and the
  benchmarks do).
* **Initialisation** (Sec. 4.1/4.2): one filter per channel group and one unit per stage active
  (``s = +mask_init``); the others start at ``-mask_init * (1 +- mask_spread)``.

Deviations and choices the paper leaves open: the relaxed multiplier is applied after each
conv's BatchNorm (before it, BatchNorm would normalise it away and ``s`` would get no loss
gradient), folded into its affine ``gamma, beta`` (the same function, without an extra pass over
the activations); the random init spread (identical values cross zero in the same step and make the
budget loop oscillate between "nothing" and "everything"); ``budget_every`` = 10 steps and
``mask_init`` = 2 (not given); counters advance by the fraction of an epoch's steps in which a
structure was sampled; a group always keeps at least one filter (its largest ``s``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.growth_spaces import INPUT, GrowableNet, Plan, build_compact, full_arch, put_, take

from .survey import WidthCost
from .training import check_finite

__all__ = ["GrowthConfig", "GrowthSearch", "step_lr_factor", "layer_train_flops", "enlarge_kernel_cache"]

KERNEL_CACHE_CAPACITY = 1 << 15


def enlarge_kernel_cache(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Raise oneDNN's primitive (JIT kernel) cache to ``capacity`` unless the environment sets it.

    oneDNN reads ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` once, when the process creates its first
    primitive, so this only takes effect before the first convolution on CPU (later it is a no-op).
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(int(capacity)))

_LAYER_FLOPS: dict[tuple, int] = {}


def layer_train_flops(shape: tuple) -> int:
    """Per-sample train FLOPs of one layer as it ran (a ``GrowableNet.shapes`` entry), by the cost model.

    Conv and linear FLOPs (forward, weight gradient, input gradient) are each proportional to
    ``in_channels * out_channels`` for a fixed geometry, so the cost model counts the layer once
    per geometry with one input and one output channel, and the count is scaled; a test checks
    the result against counting the real layer and the whole network.
    """
    kind, in_shape, w_shape, stride, padding, needs_grad = shape
    geometry = (kind, tuple(in_shape[1:]), tuple(w_shape[2:]), stride, padding, needs_grad)
    unit = _LAYER_FLOPS.get(geometry)
    if unit is None:
        with torch.random.fork_rng(devices=[]):   # a layer's init must not move the run's RNG
            unit = _count_unit_layer(kind, in_shape, w_shape, stride, padding, needs_grad)
        _LAYER_FLOPS[geometry] = unit
    return unit * w_shape[0] * w_shape[1]


def _count_unit_layer(kind: str, in_shape: tuple, w_shape: tuple, stride: int, padding: int, needs_grad: bool) -> int:
    if kind == "conv":
        layer = nn.Conv2d(1, 1, w_shape[2], stride=stride, padding=padding, bias=False)
        x = torch.zeros((1, 1, *in_shape[1:]), requires_grad=needs_grad)
    else:
        layer = nn.Linear(1, 1)
        x = torch.zeros((1, 1), requires_grad=needs_grad)
    return costmodel.count_train_flops(layer, x, None, loss_fn=lambda out, _t: out.sum())


@dataclass(frozen=True, kw_only=True)
class GrowthConfig:
    """The method's settings (paper defaults, Sec. 4.1/4.2)."""

    epochs: int = 160
    budget: float = 0.35                      # fraction of the full seed network (Table 1: 35.8% for ResNet-20)
    budget_type: Literal["params", "flops"] = "params"
    budget_every: int = 10                    # steps between lambda updates ("periodically")
    weight_lr: float = 0.1
    weight_momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["step", "cosine"] = "step"   # the baseline's schedule (Sec. 4.1)
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    mask_lr: float = 0.1
    mask_momentum: float = 0.9
    lambda_chan: float | None = None          # None: 0.5 (channels only) / 1.0 (with layers)
    lambda_unit: float | None = None          # None: 0.1
    relax: Literal["sigmoid", "gumbel"] = "sigmoid"
    temperature: Literal["structure", "global"] = "structure"
    beta0: float = 1.0
    final_beta: float = 100.0
    sampling: Literal["learned", "random"] = "learned"
    random_prob: float = 0.5
    mask_init: float = 2.0
    mask_spread: float = 0.5
    count_flops: bool = True

    def __post_init__(self):
        if not (0 < self.budget <= 1):
            raise UserError(f"budget must be in (0, 1], got {self.budget}")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.budget_every < 1:
            raise UserError(f"budget_every must be >= 1, got {self.budget_every}")
        if not 0 <= self.mask_spread < 1:
            raise UserError(f"mask_spread must be in [0, 1), got {self.mask_spread}")
        for k in ("weight_lr", "mask_lr", "beta0", "final_beta", "mask_init"):
            if not getattr(self, k) > 0:
                raise UserError(f"{k} must be > 0, got {getattr(self, k)}")
        if not 0 < self.random_prob <= 1:
            raise UserError(f"random_prob must be in (0, 1], got {self.random_prob}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise UserError(f"lr_milestones are fractions of the epochs in (0, 1), got {self.lr_milestones}")
        post = getattr(super(), "__post_init__", None)
        if post is not None:
            post()


def step_lr_factor(epoch: int, epochs: int, milestones: Iterable[float], gamma: float) -> float:
    return gamma ** sum(1 for m in milestones if epoch >= int(round(m * epochs)))


class GrowthSearch:
    """Grows ``net`` (a :class:`GrowableNet`) under ``config``; plain PyTorch loop.

    ``run_epoch`` trains one epoch and returns its metrics row; ``structure_rows`` is the
    per-structure state; ``export`` gives the dense compact network; ``state_dict`` /
    ``load_state_dict`` hold everything a resumed run needs (net, counters, optimizer states,
    lambdas, RNG).
    """

    def __init__(self, net: GrowableNet, config: GrowthConfig, *, input_shape: tuple[int, ...],
                 steps_per_epoch: int, seed: int = 0, device: torch.device | str = "cpu"):
        self.net = net.to(device)
        self.cfg = config
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        layout = net.layout
        has_units = bool(layout.growable_units())
        self.lambda_chan_base = config.lambda_chan if config.lambda_chan is not None else (1.0 if has_units else 0.5)
        self.lambda_unit_base = config.lambda_unit if config.lambda_unit is not None else 0.1
        self.gamma = config.final_beta ** (1.0 / config.epochs)
        self.t_chan = {g: torch.zeros(n) for g, n in layout.groups.items()}
        self.t_unit = {u.name: torch.zeros(()) for u in layout.growable_units()}
        self.bufs = {n: torch.zeros_like(p) for n, p in net.weight_parameters()}
        self.mask_opt = torch.optim.SGD(net.mask_parameters(), lr=config.mask_lr, momentum=config.mask_momentum)
        self.step = 0
        self.epoch = 0
        self.delta_u = 0.0
        self.lam_chan = 0.0
        self.lam_unit = 0.0
        full = build_compact(full_arch(layout))
        self.width_cost = WidthCost(layout, self.input_shape)
        self.full_params = costmodel.count_params(full)
        self.full_flops = self.width_cost.full_flops
        self._full_model = full
        self._unit_convs = {u.name: [c.name for c in u.convs] for u in layout.growable_units()}
        self._full_train_per_sample: int | None = None
        self.current = {"params": self.full_params, "flops": self.full_flops}
        self._apply_temperatures()
        self.update_budget()

    # ---- temperature (Eq. 7) -----------------------------------------------------------------
    def _apply_temperatures(self) -> None:
        c = self.cfg
        for g, t in self.t_chan.items():
            tt = torch.full_like(t, float(self.epoch)) if c.temperature == "global" else t
            self.net.beta_chan(g).copy_((c.beta0 * self.gamma ** tt).to(self.net.beta_chan(g)))
        for u, t in self.t_unit.items():
            tt = torch.tensor(float(self.epoch)) if c.temperature == "global" else t
            self.net.beta_unit(u).copy_((c.beta0 * self.gamma ** tt).to(self.net.beta_unit(u)))

    # ---- budget (Eq. 4) ----------------------------------------------------------------------
    @torch.no_grad()
    def current_cost(self) -> dict[str, int]:
        """Params and FLOPs of the deterministic network's compact form, from the layer widths."""
        net = self.net
        widths = {g: int((s > 0).sum()) or 1 for g, s in net.s_chan.items()}
        off = {c for u, s in net.s_unit.items() if float(s) <= 0 for c in self._unit_convs[u]}
        wc = self.width_cost
        params = (widths[wc.head_group] + 1) * wc.num_classes
        flops = wc.head_coef * widths[wc.head_group]
        for conv, cin, cout, f, w in wc.terms:
            if conv in off:
                continue
            pair = (1 if cin == INPUT else widths[cin]) * widths[cout]
            params += w * pair + 2 * widths[cout]
            flops += f * pair
        return {"params": int(params), "flops": int(flops)}

    def update_budget(self) -> None:
        self.current = self.current_cost()
        full = self.full_params if self.cfg.budget_type == "params" else self.full_flops
        current_sparsity = 1.0 - self.current[self.cfg.budget_type] / full
        target_sparsity = 1.0 - self.cfg.budget
        self.delta_u = target_sparsity - current_sparsity
        self.lam_chan = self.lambda_chan_base * self.delta_u
        self.lam_unit = self.lambda_unit_base * self.delta_u

    # ---- sampling (Eq. 6) --------------------------------------------------------------------
    def _relaxed(self, s: torch.Tensor, beta: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        logits = beta * s
        if noise is not None:
            logits = logits + noise
        return torch.sigmoid(logits)

    def _draw(self, s: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Indicator sample q (bool, cpu) and the logistic noise used for gumbel relaxation."""
        p_learned = torch.sigmoid(beta.detach().cpu() * s.detach().cpu())
        shape = p_learned.shape
        if self.cfg.sampling == "random":
            q = torch.rand(shape, generator=self.gen) < self.cfg.random_prob
            return q, None
        if self.cfg.relax == "gumbel":
            u = torch.rand(shape, generator=self.gen).clamp(1e-6, 1 - 1e-6)
            noise = torch.log(u) - torch.log1p(-u)
            q = (beta.detach().cpu() * s.detach().cpu() + noise) > 0
            return q, noise
        return torch.rand(shape, generator=self.gen) < p_learned, None

    def sample_plan(self) -> Plan:
        net = self.net
        idx, mult, units = {}, {}, {}
        for g, s in net.s_chan.items():
            beta = net.beta_chan(g)
            q, noise = self._draw(s, beta)
            if not q.any():  # a group needs one filter; keep its most likely one
                q[int(s.detach().argmax())] = True
            keep = q.nonzero().flatten().to(s.device)
            idx[g] = keep
            mult[g] = self._relaxed(s[keep], beta[keep], None if noise is None else noise[q].to(s.device))
        for name, s in net.s_unit.items():
            beta = net.beta_unit(name)
            q, noise = self._draw(s, beta)
            units[name] = self._relaxed(s, beta, None if noise is None else noise.to(s.device)) if bool(q) else None
        return Plan(idx=idx, mult=mult, units=units, relaxed_plain=True)

    def penalty(self) -> torch.Tensor:
        net = self.net
        chan = sum(torch.sigmoid(net.beta_chan(g) * s).sum() for g, s in net.s_chan.items())
        total = self.lam_chan * chan
        if len(net.s_unit):
            total = total + self.lam_unit * sum(torch.sigmoid(net.beta_unit(u) * s) for u, s in net.s_unit.items())
        return total

    # ---- one step ----------------------------------------------------------------------------
    def lr_factor(self) -> float:
        """The weight and mask learning rates' factor at this step: step decay by epoch, or cosine
        decay to 0 by step over ``epochs`` (the schedule of the baseline the run is compared to)."""
        c = self.cfg
        if c.lr_schedule == "cosine":
            total = c.epochs * self.steps_per_epoch
            return 0.5 * (1 + math.cos(math.pi * min(self.step, total) / total))
        return step_lr_factor(self.epoch, c.epochs, c.lr_milestones, c.lr_gamma)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, where: str = "grow") -> tuple[float, int, int]:
        """One step; returns (loss, correct, train FLOPs of what ran)."""
        c, net = self.cfg, self.net
        net.train()
        plan = self.sample_plan()
        net.plan = plan
        out = net(x)
        ce = F.cross_entropy(out, y)
        loss = ce + self.penalty()
        check_finite(loss, where)
        for p in net.mask_parameters():
            p.grad = None
        loss.backward()
        computed_groups = {spec.cout for spec in net.layout.convs() if spec.name in net.used}
        factor = self.lr_factor()
        self._weight_step(lr=c.weight_lr * factor)
        for group in self.mask_opt.param_groups:
            group["lr"] = c.mask_lr * factor
        self.mask_opt.step()
        flops = self._train_flops(plan, x, y) if c.count_flops else 0
        # Eq. 7: a structure's counter advances only when it was sampled (and computed)
        inc = 1.0 / self.steps_per_epoch
        for g in computed_groups:
            self.t_chan[g][plan.idx[g].cpu()] += inc
        for u, z in plan.units.items():
            if z is not None:
                self.t_unit[u] += inc
        self.step += 1
        self._apply_temperatures()
        if self.step % c.budget_every == 0:
            self.update_budget()
        net.plan = None
        return float(ce.detach()), int((out.argmax(1) == y).sum()), flops

    @torch.no_grad()
    def _weight_step(self, *, lr: float) -> None:
        """SGD (momentum, weight decay) on the blocks the step computed, then written back."""
        c, live = self.cfg, self.net.live
        names = [n for n, (_, _, leaf) in live.items() if leaf.grad is not None]
        params = [live[n][2] for n in names]
        grads = [p.grad for p in params]
        bufs = [take(self.bufs[n], live[n][0], live[n][1]) for n in names]
        torch._foreach_add_(grads, params, alpha=c.weight_decay)
        torch._foreach_mul_(bufs, c.weight_momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(params, bufs, alpha=-lr)
        for n, b in zip(names, bufs):
            put_(self.bufs[n], live[n][0], live[n][1], b)
        self.net.write_back()

    def _train_flops(self, plan: Plan, x: torch.Tensor, y: torch.Tensor) -> int:
        """Train FLOPs (forward + backward) of the step that just ran, for the whole batch.

        Counted per computed layer with :func:`search_spaces.cost.count_train_flops` on that
        layer's real shapes (input, gathered weight, whether the input needed a gradient), cached
        per shape; conv/linear FLOPs are additive over layers and linear in the batch size.
        """
        del plan, y
        per_sample = sum(layer_train_flops(shape) for shape in self.net.shapes.values())
        return per_sample * x.shape[0]

    def full_train_flops_per_sample(self, example: torch.Tensor, target: torch.Tensor) -> int:
        """Train FLOPs per sample of the full seed network (dense), for the savings ratio."""
        if self._full_train_per_sample is None:
            m = self._full_model.to(example.device).train()
            n = min(2, example.shape[0])
            self._full_train_per_sample = costmodel.count_train_flops(m, example[:n], target[:n]) // n
        return self._full_train_per_sample

    # ---- epochs ------------------------------------------------------------------------------
    def run_epoch(self, loader: Iterable, *, bar=None) -> dict[str, Any]:
        self.net.train()
        if self.cfg.temperature == "global":
            self._apply_temperatures()
        total_loss, correct, n, flops, full = 0.0, 0, 0, 0, 0
        for i, (x, y) in enumerate(loader):
            x, y = x.to(self.device), y.to(self.device)
            loss, corr, f = self.train_step(x, y, where=f"grow epoch {self.epoch} step {i}")
            total_loss += loss * y.numel()
            correct += corr
            n += y.numel()
            flops += f
            if self.cfg.count_flops:
                full += self.full_train_flops_per_sample(x, y) * y.numel()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{correct / n:.3f}", refresh=False)
        row = {"phase": "grow", "epoch": self.epoch, "train_loss": total_loss / max(n, 1),
               "train_acc": correct / max(n, 1), "lr": self.cfg.weight_lr * self.lr_factor(),
               "train_flops": flops, "full_train_flops": full}
        self.epoch += 1
        if self.cfg.temperature == "global":
            self._apply_temperatures()
        self.update_budget()
        row.update(self.state_row())
        return row

    def state_row(self) -> dict[str, Any]:
        net = self.net
        det = net.deterministic_plan()
        row = {"params": self.current["params"], "flops": self.current["flops"],
               "params_ratio": self.current["params"] / self.full_params,
               "flops_ratio": self.current["flops"] / self.full_flops,
               "delta_u": self.delta_u, "lambda_chan": self.lam_chan, "lambda_unit": self.lam_unit,
               "active_channels": int(sum(len(i) for i in det.idx.values())),
               "total_channels": int(sum(net.layout.groups.values()))}
        active = net.active_units(det)
        for s in range(1, net.layout.n_stages + 1):
            row[f"units_stage{s}"] = sum(1 for u in net.layout.units if u.stage == s and u.name in active)
        return row

    @torch.no_grad()
    def structure_rows(self, epoch: int) -> list[dict[str, Any]]:
        """Per-structure state: one row per filter group entry and per growable unit."""
        net, rows = self.net, []
        unit_of = {}
        for u in net.layout.units:
            for c in u.convs + ((u.shortcut,) if u.shortcut else ()):
                unit_of.setdefault(c.cout, (u.stage, u.name))
        for g, s in net.s_chan.items():
            beta = net.beta_chan(g).cpu()
            sv = s.detach().cpu()
            prob = torch.sigmoid(beta * sv)
            stage, unit = unit_of.get(g, (1, "stem"))
            for i in range(sv.numel()):
                rows.append({"epoch": epoch, "structure": f"{g}[{i}]", "kind": "channel", "group": g, "index": i,
                             "stage": stage, "unit": unit, "active": int(sv[i] > 0), "s": float(sv[i]),
                             "temperature": float(beta[i]), "counter": float(self.t_chan[g][i]),
                             "prob": float(prob[i])})
        units = {u.name: u for u in net.layout.units}
        for name, s in net.s_unit.items():
            beta = float(net.beta_unit(name))
            sv = float(s)
            rows.append({"epoch": epoch, "structure": name, "kind": "unit", "group": "", "index": 0,
                         "stage": units[name].stage, "unit": name, "active": int(sv > 0), "s": sv,
                         "temperature": beta, "counter": float(self.t_unit[name]),
                         "prob": 1 / (1 + math.exp(-max(min(beta * sv, 60), -60)))})
        return rows

    def export(self):
        return self.net.export()

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "t_chan": self.t_chan, "t_unit": self.t_unit,
                "bufs": self.bufs, "mask_opt": self.mask_opt.state_dict(), "step": self.step, "epoch": self.epoch,
                "gen": self.gen.get_state(), "delta_u": self.delta_u, "lam": (self.lam_chan, self.lam_unit),
                "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.t_chan = {k: v.clone() for k, v in state["t_chan"].items()}
        self.t_unit = {k: v.clone() for k, v in state["t_unit"].items()}
        for k, v in state["bufs"].items():
            self.bufs[k].copy_(v)
        self.mask_opt.load_state_dict(state["mask_opt"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.gen.set_state(state["gen"])
        self.delta_u = state["delta_u"]
        self.lam_chan, self.lam_unit = state["lam"]
        self.current = dict(state["current"])
        self._apply_temperatures()
