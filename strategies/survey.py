"""The algorithmic baselines of the compact-architecture-search survey.

Paper: "State of Compact Architecture Search For Deep Neural Networks"
(``../shared/seeds/000_c349d282987e7307.txt``), Sec. 2.1-2.3 and Tables 1-2.  The survey compares
four methods at a FLOPs target of one third of the baseline; the three with a published
algorithm are implemented here, each as the paper the survey cites describes it, on the suite's
channel-group layouts (:mod:`search_spaces.growth_spaces`):

* :class:`GroupLassoCompressor` - structured sparsity learning (Wen et al. 2016, "Learning
  structured sparsity in deep neural networks", Eq. 1-2 and Sec. 3.1): the group-lasso norm
  ``||w||_g = sqrt(sum w^2)`` over the *filters* and over the *input channels* of every conv is
  added to the loss; structures whose norm is under a threshold are removed after training.
  SSL tunes lambda by hand; we tune it during training with a per-epoch multiplicative
  controller driven by the FLOPs of the network the threshold would keep (our deviation, so
  one run meets a FLOPs target).
* :class:`MorphNetCompressor` - MorphNet (Gordon et al. 2018, Sec. 3.1-3.3 and Appendix): the
  FLOP regulariser on BatchNorm scales.  For a conv with alive inputs A and outputs B, FLOPs
  are ``C * |A| * |B|``; MorphNet relaxes it to ``C * (|A| * sum_B |gamma| + |B| * sum_A |gamma|)``
  (the counts ``|A|, |B|`` use the current threshold and carry no gradient).  Shrink: channels
  with ``|gamma|`` under the threshold are dropped; expand: one uniform width multiplier,
  binary-searched on the cost model, brings FLOPs back up to the target.  As in MorphNet the
  expanded network is **trained from scratch** (``info["reinit"] is True``: the exported module
  is freshly initialised).  One shrink/expand iteration (MorphNet reports one is usually
  enough).
* :class:`VariationalDropoutCompressor` - sparse variational dropout (Molchanov et al. 2017,
  Eq. 8-14) extended to whole filters as the survey (Sec. 2.2) describes: every conv weight has
  ``theta`` and ``log sigma^2``; ``log alpha = log sigma^2 - log theta^2`` (clipped); the local
  reparameterisation trick samples conv outputs; the KL term uses the paper's approximation
  ``-KL ~= k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1`` with its weight
  annealed linearly from 0 to 1; weights with ``log alpha > 3`` count as dropped (and are zero
  in eval mode), and filters whose dropped fraction is above a sparsity threshold are removed.
  The threshold is chosen toward the FLOPs target: the largest one (least pruning) whose network
  meets the target, but never below ``min_sparsity``.

Channel groups: filters added by a residual connection share one group, so channel ``i`` of a
group is kept or removed for all its producer convs at once and every consumer loses input
channel ``i``.  Scores are aggregated per group channel (see each compressor) and
:func:`prune_channels` gathers the kept weights and BatchNorm statistics into a dense
:class:`~search_spaces.growth_spaces.CompactNet`.  FLOPs of candidate widths come from
:class:`WidthCost`, whose per-channel coefficients are measured once with
:mod:`search_spaces.cost` and match ``cost.count_flops`` of the built network exactly.

A method that cannot reach the target does not fail: it exports the closest network it can and
reports ``reached=False`` with the deviation.  :data:`PUBLISHED` holds the survey's Table 1 and 2.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.growth_spaces import INPUT, CompactNet, Layout, build_compact, compact_arch, full_arch

from .training import check_finite

__all__ = ["GroupLassoConfig", "MorphNetConfig", "VariationalDropoutConfig", "COMPRESSORS", "WidthCost",
           "prune_channels", "make_compressor", "PUBLISHED"]


# ---------------------------------------------------------------------------------------- configs
def _positive(cfg, *names: str) -> None:
    for k in names:
        v = getattr(cfg, k)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError(f"{type(cfg).__name__}.{k} must be a finite number > 0, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class GroupLassoConfig:
    """SSL settings.  Wen et al. give no numbers for these CIFAR ResNets: the initial strength,
    the threshold and the controller are our choice."""

    strength: float = 1e-3          # initial lambda (one lambda for filter- and channel-wise groups)
    controller: bool = True         # per-epoch multiplicative lambda controller toward the target
    lambda_factor: float = 1.5      # lambda *= factor when the kept net is over the target, /= when under
    tolerance: float = 0.02         # no change while est_flops is within target * (1 - tol, 1]
    lambda_max: float = 1.0
    threshold: float = 1e-2         # remove a structure whose group norm is under it (see GroupLassoCompressor)
    bn_in_group: bool = True        # a filter's group also holds its BN scale and shift (deviation, see below)
    fit_threshold: bool = False     # True: export picks the threshold (>= 0) that keeps the most while meeting the target

    def __post_init__(self):
        _positive(self, "strength", "lambda_factor", "lambda_max", "threshold")
        if self.lambda_factor <= 1:
            raise UserError(f"GroupLassoConfig.lambda_factor must be > 1, got {self.lambda_factor}")
        if not 0 <= self.tolerance < 1:
            raise UserError(f"GroupLassoConfig.tolerance must be in [0, 1), got {self.tolerance}")


@dataclass(frozen=True, kw_only=True)
class MorphNetConfig:
    """MorphNet settings.  ``strength`` multiplies the FLOP regulariser divided by the full
    network's FLOPs (so it is dimensionless; MorphNet's raw per-FLOP strengths, ~1e-9 for
    Inception on ImageNet, are this divided by the network's FLOPs).  The value, the gamma
    threshold (a parameter of the MorphNet code; its README example uses 1e-3) and excluding BN
    scales from weight decay (it would fight the L1 term) are our choice."""

    strength: float = 2.0
    gamma_threshold: float = 1e-2
    expand: bool = True             # False: export the shrunk net with its trained weights (no reinit)
    max_multiplier: float = 8.0     # upper end of the width-multiplier binary search

    def __post_init__(self):
        _positive(self, "strength", "gamma_threshold", "max_multiplier")


@dataclass(frozen=True, kw_only=True)
class VariationalDropoutConfig:
    """Sparse VD settings: ``log_sigma2_init=-10`` and the ``log alpha > 3`` drop rule are the
    paper's (Sec. 4.3 / 5); the clip range 8 is the one we recall from the authors' code (the
    paper gives none); the KL warm-up length and ``min_sparsity`` (the survey's "pre-defined
    threshold", no value given) are our choice.  The head stays deterministic (its classes are
    not pruned)."""

    log_sigma2_init: float = -10.0
    log_alpha_clip: float = 8.0
    drop_log_alpha: float = 3.0
    kl_warmup: float = 0.25         # fraction of the epochs over which the KL weight goes 0 -> 1
    min_sparsity: float = 0.5       # never remove a filter with fewer dropped weights than this fraction

    def __post_init__(self):
        _positive(self, "log_alpha_clip")
        if not 0 <= self.kl_warmup <= 1:
            raise UserError(f"VariationalDropoutConfig.kl_warmup must be in [0, 1], got {self.kl_warmup}")
        if not 0 <= self.min_sparsity < 1:
            raise UserError(f"VariationalDropoutConfig.min_sparsity must be in [0, 1), got {self.min_sparsity}")
        if not math.isfinite(self.log_sigma2_init) or not math.isfinite(self.drop_log_alpha):
            raise UserError("VariationalDropoutConfig log_sigma2_init and drop_log_alpha must be finite")


# ---------------------------------------------------------------------------------------- cost
class WidthCost:
    """FLOPs and params of a :class:`Layout` network as a function of per-group widths.

    Conv FLOPs are bilinear in (input width, output width) and head FLOPs linear in its input
    width, so the per-channel-pair coefficients are measured once per layer with
    :func:`search_spaces.cost.count_flops` on the full network (2 x MAC per sample); sums of them
    equal ``count_flops(build_compact(...))`` exactly.  Widths may exceed the layout's maxima
    (MorphNet's expansion).
    """

    def __init__(self, layout: Layout, input_shape: tuple[int, ...]):
        self.layout = layout
        self.input_shape = tuple(input_shape)
        net = build_compact(full_arch(layout))
        shapes: dict[str, tuple[int, ...]] = {}
        hooks = [mod.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(i[0].shape[1:])))
                 for name, mod in net.convs.items()]
        try:
            full_flops = costmodel.count_flops(net, self.input_shape)
        finally:
            for h in hooks:
                h.remove()
        self.terms: list[tuple[str, str, int, int, int]] = []   # (conv, cin, cout, flop coef, weight coef)
        for c in layout.convs():
            mod = net.convs[c.name]
            cin = layout.in_channels if c.cin == INPUT else layout.groups[c.cin]
            cout = layout.groups[c.cout]
            f = costmodel.count_flops(mod, shapes[c.name])
            if f % (cin * cout):
                raise AssertionError(f"conv {c.name}: {f} FLOPs are not bilinear in its widths")
            wcoef = mod[0].weight.numel() // (cin * cout)
            # the image input is not a group: its channel count is folded into the coefficient
            mult = layout.in_channels if c.cin == INPUT else 1
            self.terms.append((c.name, c.cin, c.cout, f // (cin * cout) * mult, wcoef * mult))
        n_in = layout.groups[layout.head]
        hf = costmodel.count_flops(net.head, (n_in,))
        self.head_coef = hf // n_in
        self.head_group = layout.head
        self.num_classes = layout.num_classes
        self.full_flops = self.flops(layout.groups)
        if self.full_flops != full_flops:
            raise AssertionError(f"WidthCost {self.full_flops} != cost model {full_flops}")
        self.full_params = self.params(layout.groups)

    def conv_coefs(self) -> list[tuple[str, str, str, int]]:
        """(conv, cin group, cout group, FLOPs per alive (input, output) pair); the stem's input
        count is folded into its coefficient (``cin == "input"``)."""
        return [(n, ci, co, f) for n, ci, co, f, _ in self.terms]

    def flops(self, widths: Mapping[str, int]) -> int:
        total = self.head_coef * int(widths[self.head_group])
        for _, ci, co, f, _ in self.terms:
            total += f * (1 if ci == INPUT else int(widths[ci])) * int(widths[co])
        return int(total)

    def params(self, widths: Mapping[str, int]) -> int:
        total = (int(widths[self.head_group]) + 1) * self.num_classes
        for _, ci, co, _, w in self.terms:
            total += w * (1 if ci == INPUT else int(widths[ci])) * int(widths[co]) + 2 * int(widths[co])
        return int(total)


# ---------------------------------------------------------------------------------------- pruning
def _as_index(g: str, k: torch.Tensor | list, n: int) -> torch.Tensor:
    k = torch.as_tensor(k)
    if k.dtype == torch.bool:
        if k.numel() != n:
            raise UserError(f"keep mask of group {g!r} has {k.numel()} entries, the net has {n} channels")
        k = k.nonzero().flatten()
    k = torch.unique(k.long().flatten().cpu())
    if k.numel() == 0:
        raise UserError(f"group {g!r} keeps no channel (at least one is needed)")
    if int(k.min()) < 0 or int(k.max()) >= n:
        raise UserError(f"keep indices of group {g!r} must be in [0, {n}), got {k.tolist()}")
    return k


@torch.no_grad()
def prune_channels(net: CompactNet, keep: Mapping[str, torch.Tensor]) -> tuple[CompactNet, dict]:
    """A dense :class:`CompactNet` with only the ``keep`` channels of each group (indices or a bool
    mask, relative to ``net``'s channels; groups not named keep all), weights, BN affine and
    running statistics gathered from ``net``.  Returns ``(net, arch)``."""
    layout = net.layout
    unknown = set(keep) - set(layout.groups)
    if unknown:
        raise UserError(f"keep names unknown channel groups: {sorted(unknown)}")
    idx = {g: (_as_index(g, keep[g], net.widths[g]) if g in keep else torch.arange(net.widths[g]))
           for g in layout.groups}
    arch = compact_arch(layout, {g: i.tolist() for g, i in idx.items()}, sorted(net.active))
    out = build_compact(arch)
    device = next(net.parameters()).device
    out.to(device)
    for name, mod in out.convs.items():
        src = net.convs[name]
        c = next(c for c in layout.convs() if c.name == name)
        o = idx[c.cout].to(device)
        w = src[0].weight[o]
        if c.cin != INPUT:
            w = w[:, idx[c.cin].to(device)]
        mod[0].weight.copy_(w)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(mod[1], attr).copy_(getattr(src[1], attr)[o])
        mod[1].num_batches_tracked.copy_(src[1].num_batches_tracked)
    out.head.weight.copy_(net.head.weight[:, idx[layout.head].to(device)])
    out.head.bias.copy_(net.head.bias)
    return out, arch


def _fit_threshold(cost: WidthCost, scores: Mapping[str, torch.Tensor], target: int, lo: float,
                   hi: float) -> tuple[float, dict[str, torch.Tensor]]:
    """The smallest threshold ``t`` in ``[lo, hi]`` whose keep-set (``score >= t``, at least the
    best channel of each group) meets ``target`` FLOPs; ``hi`` when none does."""
    def keep_at(t: float) -> dict[str, torch.Tensor]:
        out = {}
        for g, s in scores.items():
            k = (s.double() >= t).nonzero().flatten()   # double: t may be nextafter(a float32 score)
            out[g] = k if k.numel() else s.argmax().view(1)
        return out

    def ok(t: float) -> bool:
        return cost.flops({g: k.numel() for g, k in keep_at(t).items()}) <= target

    if ok(lo) or hi <= lo:
        return lo, keep_at(lo)
    vals = torch.cat([s.flatten() for s in scores.values()]).double().unique().tolist()
    cands = sorted({math.nextafter(v, math.inf) for v in vals if lo < math.nextafter(v, math.inf) < hi})
    cands.append(hi)
    a, b = 0, len(cands) - 1        # invariant: the answer (if any) is in cands[a..b]
    if not ok(cands[b]):
        return hi, keep_at(hi)
    while a < b:
        m = (a + b) // 2
        if ok(cands[m]):
            b = m
        else:
            a = m + 1
    return cands[a], keep_at(cands[a])


# ---------------------------------------------------------------------------------------- VD pieces
VD_K1, VD_K2, VD_K3 = 0.63576, 1.87320, 1.48695   # Molchanov et al. 2017, Eq. 14


def vd_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Per-weight KL(q || log-uniform prior) of sparse VD (Molchanov et al. 2017, Eq. 14):
    ``KL = -(k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(exp(-log alpha)) - k1)``."""
    neg = VD_K1 * torch.sigmoid(VD_K2 + VD_K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - VD_K1
    return -neg


class _VDConv2d(nn.Conv2d):
    """A conv with sparse-VD weights: ``weight`` is theta, ``log_sigma2`` per weight.  Training
    samples the output with the local reparameterisation trick (Molchanov et al. Sec. 4.2: mean
    ``conv(x, theta)``, variance ``conv(x^2, alpha theta^2)``); eval uses theta with the dropped
    weights (``log alpha > drop``) zeroed."""

    def __init__(self, conv: nn.Conv2d, cfg: VariationalDropoutConfig):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, bias=False, device=conv.weight.device)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, cfg.log_sigma2_init))
        self.clip = cfg.log_alpha_clip
        self.drop = cfg.drop_log_alpha
        self.generator: torch.Generator | None = None

    def log_alpha(self) -> torch.Tensor:
        return torch.clamp(self.log_sigma2 - torch.log(self.weight * self.weight + 1e-8), -self.clip, self.clip)

    def sparse_weight(self) -> torch.Tensor:
        return self.weight * (self.log_alpha() <= self.drop).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.conv2d(x, self.sparse_weight(), None, self.stride, self.padding)
        mu = F.conv2d(x, self.weight, None, self.stride, self.padding)
        var = F.conv2d(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight, None, self.stride,
                       self.padding)
        eps = torch.randn(mu.shape, generator=self.generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.sqrt(var + 1e-8) * eps


def group_norms(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSL's group-lasso norms of a conv weight ``[out, in, k, k]`` (Wen et al. Eq. 2):
    ``(||W[n,:,:,:]||_2 per filter, ||W[:,c,:,:]||_2 per input channel)``, each the *square root*
    of the sum of squares (``vector_norm`` has a zero subgradient at 0, so dead groups stay finite)."""
    return (torch.linalg.vector_norm(weight, dim=(1, 2, 3)), torch.linalg.vector_norm(weight, dim=(0, 2, 3)))


def _relative(norms: torch.Tensor) -> torch.Tensor:
    """Group norms divided by their quadratic mean over the layer (``norm * sqrt(n) / ||W||_F``).
    A conv followed by BatchNorm computes the same function at any weight scale, and group lasso
    shrinks every group of it, so only norms relative to the layer say which structures died."""
    return norms / norms.pow(2).mean().sqrt().clamp_min(1e-12)


# ---------------------------------------------------------------------------------------- compressors
class _Compressor:
    """Shared loop: a full :class:`CompactNet` trained with SGD (momentum, cosine to 0 over
    ``epochs``, per step) plus the method's regulariser; ``_scores`` gives per-group channel
    scores (keep ``score >= threshold``)."""

    method = ""
    config_cls: type = object

    def __init__(self, layout: Layout, config, *, target_flops: int, input_shape, seed: int,
                 device: torch.device | str = "cpu", epochs: int, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4):
        if not isinstance(config, self.config_cls):
            raise UserError(f"{self.method} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        if not isinstance(epochs, int) or epochs < 1:
            raise UserError(f"epochs must be an integer >= 1, got {epochs!r}")
        for k, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not (math.isfinite(v) and v >= 0) or (k == "lr" and v == 0):
                raise UserError(f"{k} must be a finite number {'> 0' if k == 'lr' else '>= 0'}, got {v}")
        self.layout = layout
        self.cfg = config
        self.input_shape = tuple(input_shape)
        self.cost = WidthCost(layout, self.input_shape)
        if not (isinstance(target_flops, (int, float)) and 0 < target_flops <= self.cost.full_flops):
            raise UserError(f"target_flops must be in (0, {self.cost.full_flops}] (the full net's FLOPs), "
                            f"got {target_flops}")
        self.target_flops = int(target_flops)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.epochs = epochs
        self.lr = float(lr)
        self.consumers: dict[str, list[str]] = {g: [] for g in layout.groups}
        self.producers = layout.producers()
        for c in layout.convs():
            if c.cin != INPUT:
                self.consumers[c.cin].append(c.name)
        self.gen = torch.Generator(device=self.device).manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):    # seeded init without touching the caller's RNG
            torch.manual_seed(self.seed)
            self.net = build_compact(full_arch(layout)).to(self.device)
            self._setup()
        decay, no_decay = self._param_groups()
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, momentum=momentum)
        self.epoch = 0
        self.history: list[dict] = []

    # ---- hooks --------------------------------------------------------------------------------
    def _setup(self) -> None:
        pass

    def _param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return list(self.net.parameters()), []

    def _reg(self, t: float) -> tuple[torch.Tensor, float]:
        """(regulariser value, its weight) at fractional epoch ``t``."""
        raise NotImplementedError

    def _scores(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _threshold(self) -> tuple[float, dict[str, torch.Tensor]]:
        """The threshold in use now and the keep-set it gives."""
        raise NotImplementedError

    def _after_epoch(self, est_flops: int) -> None:
        pass

    def _extra_state(self) -> dict:
        return {}

    def _load_extra(self, d: dict) -> None:
        pass

    # ---- training -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int, loader, bar=None) -> dict:
        """One epoch of regularised training; returns the metrics row."""
        t0 = time.perf_counter()
        self.net.train()
        n_batches = len(loader) if hasattr(loader, "__len__") else 0
        self._begin_epoch(loader)
        tot_loss = tot_reg = 0.0
        correct = n = 0
        strength = 0.0
        for i, (x, y) in enumerate(loader):
            t = epoch + (i / n_batches if n_batches else 0.0)
            for g in self.opt.param_groups:
                g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(t, self.epochs) / self.epochs))
            x, y = x.to(self.device), y.to(self.device)
            out = self.net(x)
            ce = F.cross_entropy(out, y)
            reg, strength = self._reg(t)
            loss = ce + strength * reg
            check_finite(loss, f"{self.method} epoch {epoch} step {i}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            bs = y.numel()
            tot_loss += float(ce.detach()) * bs
            tot_reg += float(reg.detach()) * bs
            correct += int((out.argmax(1) == y).sum())
            n += bs
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{correct / n:.3f}", refresh=False)
        with torch.no_grad():
            thr, keep = self._threshold()
        widths = {g: int(k.numel()) for g, k in keep.items()}
        est = self.cost.flops(widths)
        row = {"epoch": epoch, "loss": tot_loss / max(n, 1), "acc": correct / max(n, 1), "reg": tot_reg / max(n, 1),
               "strength": float(strength), "threshold": float(thr), "est_flops": est,
               "est_params": self.cost.params(widths), "alive": sum(widths.values()),
               "lr": self.opt.param_groups[0]["lr"]}
        self._after_epoch(est)
        self.epoch = epoch + 1
        row["time"] = time.perf_counter() - t0
        self.history.append({k: v for k, v in row.items() if k != "time"})
        return row

    def _begin_epoch(self, loader) -> None:
        pass

    # ---- export -------------------------------------------------------------------------------
    def _info(self, net: nn.Module, threshold: float, notes: str, **extra) -> dict:
        flops = costmodel.count_flops(net, self.input_shape)
        return {"method": self.method, "threshold": float(threshold), "flops": int(flops),
                "params": costmodel.count_params(net), "target_flops": self.target_flops,
                "full_flops": self.cost.full_flops, "deviation": flops / self.target_flops - 1,
                "reached": bool(flops <= self.target_flops), "reinit": False, "notes": notes,
                "config": dataclasses.asdict(self.cfg), "epochs_trained": self.epoch, **extra}

    def _plain_net(self) -> CompactNet:
        return self.net

    @torch.no_grad()
    def export(self) -> tuple[nn.Module, dict, dict]:
        thr, keep = self._threshold()
        net, arch = prune_channels(self._plain_net(), keep)
        net.eval()
        return net, arch, self._info(net, thr, self._notes(), widths=arch["widths"])

    def _notes(self) -> str:
        return ""

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"method": self.method, "net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "epoch": self.epoch, "history": list(self.history), "gen": self.gen.get_state(),
                **self._extra_state()}

    def load_state_dict(self, d: dict) -> None:
        if d.get("method") != self.method:
            raise UserError(f"state of {d.get('method')!r} cannot resume {self.method!r}")
        self.net.load_state_dict(d["net"])
        self.opt.load_state_dict(d["opt"])
        self.epoch = int(d["epoch"])
        self.history = list(d["history"])
        self.gen.set_state(d["gen"])
        self._load_extra(d)


class GroupLassoCompressor(_Compressor):
    """Structured sparsity learning (Wen et al. 2016) toward a FLOPs target; see the module doc.

    Regulariser: sum over every conv of the group norms of its filters and (except the image
    input) of its input channels.  A group channel is removed when all its producers' filters,
    or all its consumers' input channels (the head's column included, which is not regularised),
    are under the threshold: score = min(max producer filter norm, max consumer channel norm).

    Deviation (``bn_in_group``, default on): SSL's nets regularise conv weights only, but a conv
    followed by BatchNorm computes the same function at any weight scale, so the penalty just
    shrinks all its weights alike and no filter dies (what we saw on digits); a filter's group
    therefore also holds its BN scale and shift, ``sqrt(||W_n||^2 + gamma_n^2 + beta_n^2)``, so a
    zero group is exactly a dead channel and the threshold is absolute.  Input-channel groups (and
    filter groups with ``bn_in_group=False``) are compared relative to their layer's RMS group
    norm (:func:`_relative`) for the same reason.  Plain SGD as in SSL (no proximal step): the
    threshold, not exact zeros, decides.

    Known limitation: the weight parts of the groups are still scale-free under BN, so a large
    lambda drives whole conv weights toward zero (running variances far below BN's eps); on a
    10-epoch digits probe with ``lambda_factor=2`` the network met the target but its eval-mode
    accuracy collapsed while batch-statistics accuracy stayed at 83%.  Dividing the weight
    norms by the layer's Frobenius norm (a scale-invariant penalty) would avoid it; not done.
    """

    method = "group_lasso"
    config_cls = GroupLassoConfig

    def _setup(self):
        self.lam = float(self.cfg.strength)

    def _norms(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        conv, bn = self.net.convs[name]
        fn, cn = group_norms(conv.weight)
        if self.cfg.bn_in_group:
            fn = torch.sqrt(fn * fn + bn.weight * bn.weight + bn.bias * bn.bias)
        return fn, cn

    def _reg(self, t):
        total = torch.zeros((), device=self.device)
        for c in self.layout.convs():
            fn, cn = self._norms(c.name)
            total = total + fn.sum() + (cn.sum() if c.cin != INPUT else 0.0)
        return total, self.lam

    def _scores(self):
        norms = {name: self._norms(name) for name in self.net.convs}
        # filter groups with the BN affine are absolute (a zero group is a dead channel); pure
        # conv-weight groups and input-channel groups are scale-free under BN: relative
        filt = {n: (f if self.cfg.bn_in_group else _relative(f)) for n, (f, _) in norms.items()}
        rel = {n: _relative(c) for n, (_, c) in norms.items()}
        out = {}
        for g in self.layout.groups:
            prod = torch.stack([filt[p] for p in self.producers[g]]).amax(0)
            cons = [rel[c] for c in self.consumers[g]]
            if g == self.layout.head:
                cons.append(_relative(torch.linalg.vector_norm(self.net.head.weight, dim=0)))
            out[g] = torch.minimum(prod, torch.stack(cons).amax(0)).cpu() if cons else prod.cpu()
        return out

    def _threshold(self):
        if self.cfg.fit_threshold:
            return _fit_threshold(self.cost, self._scores(), self.target_flops, 0.0, math.inf)
        return _fit_threshold(self.cost, self._scores(), self.target_flops, self.cfg.threshold, self.cfg.threshold)

    def _after_epoch(self, est):
        if not self.cfg.controller:
            return
        # driven by the plain threshold's net, also when export may fit the threshold
        _, keep = _fit_threshold(self.cost, self._scores(), self.target_flops, self.cfg.threshold,
                                 self.cfg.threshold)
        est = self.cost.flops({g: k.numel() for g, k in keep.items()})
        if est > self.target_flops:
            self.lam = min(self.lam * self.cfg.lambda_factor, self.cfg.lambda_max)
        elif est < self.target_flops * (1 - self.cfg.tolerance):
            self.lam = self.lam / self.cfg.lambda_factor

    def _extra_state(self):
        return {"lam": self.lam}

    def _load_extra(self, d):
        self.lam = float(d["lam"])

    def _notes(self):
        return ("SSL filter+channel group lasso (Wen et al. 2016); lambda tuned per epoch toward the FLOPs "
                "target (our controller); structures with L2 norm under the threshold removed"
                + ("; export threshold fitted to keep the most channels that meet the target"
                   if self.cfg.fit_threshold else ""))


class MorphNetCompressor(_Compressor):
    """MorphNet (Gordon et al. 2018): FLOP-regularised shrink, uniform expand; see the module doc.

    Tied (residual) channels are one group: its "gamma" per channel is the max of the producers'
    ``|gamma|`` (MorphNet's max grouping for added ops).  Per conv with FLOPs coefficient ``C``:
    ``C * (alive(cin) * sum|gamma_cout| + alive(cout) * sum|gamma_cin|)``; the stem's image input
    counts as all alive, the head as a conv with ``num_classes`` fixed outputs.  The regulariser is
    divided by the full network's FLOPs (``strength`` dimensionless).
    """

    method = "morphnet"
    config_cls = MorphNetConfig

    def _param_groups(self):
        bn = {id(m[1].weight) for m in self.net.convs.values()} | {id(m[1].bias) for m in self.net.convs.values()}
        params = list(self.net.parameters())
        return [p for p in params if id(p) not in bn], [p for p in params if id(p) in bn]

    def _gammas(self) -> dict[str, torch.Tensor]:
        return {g: torch.stack([self.net.convs[p][1].weight.abs() for p in self.producers[g]]).amax(0)
                for g in self.layout.groups}

    def _reg(self, t):
        gam = self._gammas()
        alive = {g: float((v.detach() >= self.cfg.gamma_threshold).sum()) for g, v in gam.items()}
        total = self.cost.head_coef * gam[self.layout.head].sum()
        for _, ci, co, coef in self.cost.conv_coefs():
            if ci == INPUT:
                total = total + coef * gam[co].sum()        # coef has the image channels folded in
            else:
                total = total + coef * (alive[ci] * gam[co].sum() + alive[co] * gam[ci].sum())
        return total / self.cost.full_flops, self.cfg.strength

    def _scores(self):
        return {g: v.detach().cpu() for g, v in self._gammas().items()}

    def _threshold(self):
        t = self.cfg.gamma_threshold
        return _fit_threshold(self.cost, self._scores(), self.target_flops, t, t)

    def expand_widths(self, widths: Mapping[str, int]) -> tuple[float, dict[str, int]]:
        """MorphNet's expand step: the largest uniform multiplier ``m`` (binary search) with
        ``flops(round(m * w)) <= target``."""
        def scaled(m):
            return {g: max(1, int(round(m * w))) for g, w in widths.items()}

        lo, hi = 0.0, self.cfg.max_multiplier
        if self.cost.flops(scaled(hi)) <= self.target_flops:
            return hi, scaled(hi)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.cost.flops(scaled(mid)) <= self.target_flops:
                lo = mid
            else:
                hi = mid
        return lo, scaled(lo)

    @torch.no_grad()
    def export(self):
        thr, keep = self._threshold()
        shrunk, shrunk_arch = prune_channels(self.net, keep)
        shrunk_w = dict(shrunk_arch["widths"])
        shrunk_flops = self.cost.flops(shrunk_w)
        if not self.cfg.expand:
            shrunk.eval()
            return shrunk, shrunk_arch, self._info(shrunk, thr, "MorphNet shrink only (expand=False); trained "
                                                   "weights kept", widths=shrunk_w, shrunk_flops=shrunk_flops)
        m, widths = self.expand_widths(shrunk_w)
        layout = dataclasses.replace(self.layout, groups=dict(widths))
        arch = full_arch(layout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = build_compact(arch)
        net.to(self.device).eval()
        info = self._info(net, thr, "MorphNet (Gordon et al. 2018) one shrink/expand iteration: FLOP-regularised "
                          "gamma L1, channels with |gamma| under the threshold dropped, uniform width multiplier "
                          "to the target; the exported net is freshly initialised and must be trained from "
                          "scratch", widths=widths, multiplier=m, shrunk_widths=shrunk_w,
                          shrunk_flops=shrunk_flops, shrunk_arch=shrunk_arch)
        info["reinit"] = True
        return net, arch, info


class VariationalDropoutCompressor(_Compressor):
    """Sparse variational dropout (Molchanov et al. 2017) with whole-filter removal (survey Sec.
    2.2); see the module doc.  Every conv (stem included) is variational; the head is not.
    Loss: cross entropy + beta(t) * sum KL / N (the per-sample ELBO, N = dataset size).  A group
    channel's sparsity is the dropped fraction over all its producer filters together.
    Deviation: trained from scratch (the paper pretrains for CIFAR), with KL annealing."""

    method = "variational_dropout"
    config_cls = VariationalDropoutConfig

    def _setup(self):
        for name, mod in self.net.convs.items():
            vd = _VDConv2d(mod[0], self.cfg)
            vd.generator = self.gen
            mod[0] = vd
        self.n_data = 0

    def _param_groups(self):
        vd = {id(p) for m in self.net.convs.values() for p in m[0].parameters()}
        params = list(self.net.parameters())
        # the KL term is sparse VD's only prior on theta / sigma (no weight decay on them)
        return [p for p in params if id(p) not in vd], [p for p in params if id(p) in vd]

    def _begin_epoch(self, loader):
        if self.n_data:
            return
        ds = getattr(loader, "dataset", None)
        if ds is not None and hasattr(ds, "__len__"):
            self.n_data = len(ds)
        else:
            first = next(iter(loader))
            self.n_data = max(1, len(loader) * int(first[1].numel()))

    def _reg(self, t):
        kl = sum(vd_kl(m[0].log_alpha()).sum() for m in self.net.convs.values())
        w = self.cfg.kl_warmup * self.epochs
        beta = 1.0 if w == 0 else min(1.0, t / w)
        return kl, beta / self.n_data

    def _scores(self):
        out = {}
        for g, prods in self.producers.items():
            dropped = total = 0
            for p in prods:
                la = self.net.convs[p][0].log_alpha()
                dropped = dropped + (la > self.cfg.drop_log_alpha).flatten(1).sum(1)
                total += la[0].numel()
            out[g] = -(dropped.double() / total).cpu()     # score = -sparsity (keep when >= -tau)
        return out

    def _threshold(self):
        # keep score >= t  <=>  sparsity <= -t: t = -1 removes nothing, t = -min_sparsity the most
        t, keep = _fit_threshold(self.cost, self._scores(), self.target_flops, -1.0, -self.cfg.min_sparsity)
        return -t, keep

    def _plain_net(self):
        plain = build_compact(full_arch(self.layout)).to(self.device)
        plain.load_state_dict({k: v for k, v in self.net.state_dict().items() if "log_sigma2" not in k})
        with torch.no_grad():
            for name, mod in self.net.convs.items():
                plain.convs[name][0].weight.copy_(mod[0].sparse_weight())
        return plain

    def _extra_state(self):
        return {"n_data": self.n_data}

    def _load_extra(self, d):
        self.n_data = int(d["n_data"])

    def _notes(self):
        return ("sparse VD (Molchanov et al. 2017), weights with log alpha > %g dropped (zero in the export); "
                "filters (group channels) whose dropped fraction exceeds the threshold removed; threshold "
                "chosen toward the FLOPs target, not below min_sparsity" % self.cfg.drop_log_alpha)


COMPRESSORS: dict[str, type] = {}
for _cls in (GroupLassoCompressor, MorphNetCompressor, VariationalDropoutCompressor):
    if _cls.method in COMPRESSORS:
        raise RuntimeError(f"duplicate compressor {_cls.method}")
    COMPRESSORS[_cls.method] = _cls


def make_compressor(method: str, layout: Layout, *, target_flops: int, input_shape, seed: int,
                    device: torch.device | str = "cpu", epochs: int, config_overrides: Mapping[str, Any] = {},
                    lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4):
    """The compressor of ``method`` with its paper defaults overridden by ``config_overrides``."""
    if method not in COMPRESSORS:
        raise UserError(f"unknown survey method {method!r}; valid: {', '.join(COMPRESSORS)}")
    cls = COMPRESSORS[method]
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(config_overrides) - fields)
    if unknown:
        raise UserError(f"unknown {method} config key(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    cfg = cls.config_cls(**dict(config_overrides))
    return cls(layout, cfg, target_flops=target_flops, input_shape=input_shape, seed=seed, device=device,
               epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------- published
def _row(mflops: float, params: int, top1: float) -> dict:
    return {"mflops": mflops, "params": params, "top1": top1, "published": True}


# The survey's Tables 1 and 2 (published numbers, not ours).  FLOPs in MFLOPs as printed; the
# ResNet-32 baseline (~70M multiply-adds) suggests they count 2 FLOPs per MAC like
# ``cost.count_flops``, but the paper does not say.  Targets were one third of each baseline.
PUBLISHED: dict[tuple[str, str], dict] = {
    ("cifar10/resnet32", "baseline"): _row(144.369, 487_754, 91.6),
    ("cifar10/resnet32", "group_lasso"): _row(46.282, 225_564, 86.7),
    ("cifar10/resnet32", "morphnet"): _row(46.280, 153_179, 88.8),
    ("cifar10/resnet32", "variational_dropout"): _row(46.046, 151_238, 84.9),
    ("cifar10/resnet32", "generative_synthesis"): _row(44.658, 152_668, 91.6),
    ("cifar100/resnet50", "baseline"): _row(223.946, 769_476, 67.8),
    ("cifar100/resnet50", "group_lasso"): _row(74.852, 268_609, 61.6),
    ("cifar100/resnet50", "morphnet"): _row(74.995, 435_396, 63.3),
    ("cifar100/resnet50", "variational_dropout"): _row(74.410, 563_197, 57.9),
    ("cifar100/resnet50", "generative_synthesis"): _row(70.800, 214_692, 64.8),
    ("imagenet64/resnet50", "baseline"): _row(2629.21, 25_593_400, 60.0),
    ("imagenet64/resnet50", "group_lasso"): _row(896.71, 9_079_334, 50.6),
    ("imagenet64/resnet50", "morphnet"): _row(824.91, 9_294_711, 52.9),
    ("imagenet64/resnet50", "variational_dropout"): _row(873.29, 8_850_781, 43.3),
    ("imagenet64/resnet50", "generative_synthesis"): _row(802.14, 3_293_420, 57.8),
    ("imagenet64/inceptionv3", "baseline"): _row(7515.7, 22_895_000, 61.8),
    ("imagenet64/inceptionv3", "group_lasso"): _row(2506.7, 8_160_687, 57.6),
    ("imagenet64/inceptionv3", "morphnet"): _row(2490.6, 9_489_201, 58.5),
    ("imagenet64/inceptionv3", "variational_dropout"): _row(2508.0, 8_160_687, 53.9),
    ("imagenet64/inceptionv3", "generative_synthesis"): _row(2340.3, 5_257_960, 62.3),
}
