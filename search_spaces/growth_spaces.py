"""Seed families and indicator layouts for growing networks by structured continuous sparsification.

Paper: "Growing Efficient Deep Networks by Structured Continuous Sparsification"
(``../shared/seeds/001_a6039e1e4b9b8530.txt``), Sec. 3.1 and 4.1-4.2.

A *layout* is the largest network a seed family may grow into, plus its indicators:

* **channel indicators** (Eq. 1): one per filter of each conv.  Filters whose outputs are added by
  a residual connection (the stem / projection shortcuts / last conv of every block of a stage)
  are one structure, so they share one indicator: they form one *channel group*.  A plain conv
  layer that may be detached (identity instead of the layer) must keep its shape, so in the plain
  families the convs of a stage share the stage's group too.  Every conv writes to exactly one
  group; ``ConvSpec.cin``/``cout`` name groups.
* **layer indicators** (Eq. 2): one per growable *unit* (a residual block, or a plain conv layer
  that keeps its shape).  Units that change resolution or channel count are never detached
  (``Layout`` rejects a layer indicator on one with :class:`UserError`).  Layer indicators take
  precedence: a detached unit computes none of its filters.

Families (``FAMILIES``): ``resnet20`` and ``vgg16`` (CIFAR versions, channel growth only, as in
Sec. 4.1), ``basic3resnet`` and ``plain3net`` (3 stages, channels and layers), and
``bottleneck4resnet`` and ``plain4net`` (4 stages, ImageNet-style stem), as in Sec. 4.2 / AutoGrow.
``width`` scales every width and ``stage_blocks`` the maximum units per stage, so a family runs
on small data.  Deviations: residual families use projection (1x1 conv + BN) shortcuts where the
shape changes (ResNet-20 "option B"); the plain families' widths (16-32-64 on CIFAR, 64-...-512
with the ImageNet stem) and maximum depths are our choice (the paper defers them to AutoGrow).

:class:`GrowableNet` holds the full-size weights, the mask weights ``s`` (one per channel and
per unit) and the temperatures ``beta``; it runs a :class:`Plan` (which filters and units to
compute and their multipliers) by *gathering* only the active filters, so inactive structures
cost nothing.  :func:`build_compact` rebuilds the exported dense network from ``arch.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

__all__ = [
    "FAMILIES",
    "ConvSpec",
    "UnitSpec",
    "Layout",
    "Plan",
    "GrowableNet",
    "CompactNet",
    "make_layout",
    "build_compact",
    "compact_arch",
    "full_arch",
    "put_",
    "take",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# name -> (kind, stage widths, max units per stage, stem, grow layers by default)
FAMILIES: dict[str, dict] = {
    "resnet20": dict(kind="basic", widths=(16, 32, 64), blocks=(3, 3, 3), stem="cifar", grow_layers=False),
    "vgg16": dict(kind="vgg", widths=(), blocks=(), stem="none", grow_layers=False),
    "basic3resnet": dict(kind="basic", widths=(16, 32, 64), blocks=(32, 32, 32), stem="cifar", grow_layers=True),
    "plain3net": dict(kind="plain", widths=(16, 32, 64), blocks=(24, 24, 24), stem="cifar", grow_layers=True),
    "bottleneck4resnet": dict(kind="bottleneck", widths=(64, 128, 256, 512), blocks=(8, 8, 8, 8),
                              stem="imagenet", grow_layers=True),
    "plain4net": dict(kind="plain", widths=(64, 128, 256, 512), blocks=(8, 8, 8, 8), stem="imagenet",
                      grow_layers=True),
}
EXPANSION = 4
INPUT = "input"


@dataclass(frozen=True, kw_only=True)
class ConvSpec:
    """A conv + BatchNorm whose output filters are the channel group ``cout``."""

    name: str
    cin: str           # channel group read ("input" for the image)
    cout: str          # channel group written (its indicator)
    kernel: int
    stride: int = 1


@dataclass(frozen=True, kw_only=True)
class UnitSpec:
    """One unit of a stage: ``basic``/``bottleneck`` residual block, ``plain``/``vgg`` conv layer,
    or ``pool`` (2x2 max-pool).  ``growable`` units carry a layer indicator."""

    name: str
    kind: str
    stage: int
    convs: tuple[ConvSpec, ...] = ()
    shortcut: ConvSpec | None = None
    growable: bool = False

    @property
    def cin(self) -> str | None:
        return self.convs[0].cin if self.convs else None

    @property
    def cout(self) -> str | None:
        return self.convs[-1].cout if self.convs else None

    @property
    def changes_shape(self) -> bool:
        return bool(self.convs) and (any(c.stride != 1 for c in self.convs) or self.cin != self.cout
                                     or self.shortcut is not None)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """The maximal network of a seed family and its indicator layout."""

    family: str
    in_channels: int
    num_classes: int
    groups: Mapping[str, int]            # channel group -> maximum filters
    stem: tuple[ConvSpec, ...]
    stem_pool: bool
    units: tuple[UnitSpec, ...]
    head: str                            # group feeding the classifier
    n_stages: int

    def __post_init__(self):
        for u in self.units:
            if u.growable and u.changes_shape:
                raise UserError(f"unit {u.name} changes resolution or channels; it cannot carry a layer indicator")
            if u.growable and u.kind == "pool":
                raise UserError(f"unit {u.name} is a pooling layer; it cannot carry a layer indicator")
        for c in self.convs():
            for g in (c.cin, c.cout):
                if g != INPUT and g not in self.groups:
                    raise UserError(f"conv {c.name} names an unknown channel group {g!r}")

    def convs(self) -> list[ConvSpec]:
        out = list(self.stem)
        for u in self.units:
            out.extend(u.convs)
            if u.shortcut is not None:
                out.append(u.shortcut)
        return out

    def growable_units(self) -> list[UnitSpec]:
        return [u for u in self.units if u.growable]

    def producers(self) -> dict[str, list[str]]:
        """group -> names of the convs whose filters it indexes (tied filters share the group)."""
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for c in self.convs():
            out[c.cout].append(c.name)
        return out


def _scaled(width: float, c: int) -> int:
    return max(1, int(round(c * width)))


def make_layout(family: str, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                stage_blocks: tuple[int, ...] | None = None, grow_layers: bool | None = None,
                stem: str | None = None, max_blocks: int | None = None) -> Layout:
    """The layout of ``family`` scaled by ``width``; ``stage_blocks`` overrides the maximum units
    per stage, ``max_blocks`` caps them (families below the cap keep their depth, so one sweep can
    mix ResNet-20 and a capped Basic3ResNet); ``grow_layers`` (default: the family's) puts layer
    indicators on every unit that keeps its shape."""
    if family not in FAMILIES:
        raise UserError(f"unknown seed family {family!r}; valid: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    if not width > 0:
        raise UserError(f"width must be > 0, got {width}")
    grow = fam["grow_layers"] if grow_layers is None else bool(grow_layers)
    stem = stem or fam["stem"]
    if stem not in ("cifar", "imagenet", "none"):
        raise UserError(f"unknown stem {stem!r}; valid: cifar, imagenet")
    if fam["kind"] == "vgg":
        if stage_blocks:
            raise UserError("vgg16 has a fixed depth; stage_blocks does not apply")
        return _vgg_layout(family, num_classes, in_channels, width, grow)
    blocks = tuple(stage_blocks) if stage_blocks else fam["blocks"]
    if max_blocks:
        blocks = tuple(min(b, max_blocks) for b in blocks)
    if len(blocks) != len(fam["widths"]) or any(b < 1 for b in blocks):
        raise UserError(f"stage_blocks must be {len(fam['widths'])} positive integers for {family}, got {blocks}")
    if stem == "none":
        stem = "cifar"
    kind = fam["kind"]
    widths = [_scaled(width, w) for w in fam["widths"]]
    groups: dict[str, int] = {}
    stem_w = widths[0]
    stem_group = "stage1" if kind == "basic" or kind == "plain" else "stem"
    out_w = [w * EXPANSION if kind == "bottleneck" else w for w in widths]
    if stem_group == "stem":
        groups["stem"] = stem_w
    stem_specs = (ConvSpec(name="stem", cin=INPUT, cout=stem_group, kernel=3 if stem == "cifar" else 7,
                           stride=1 if stem == "cifar" else 2),)
    units: list[UnitSpec] = []
    prev = stem_group
    for s, (n, w, ow) in enumerate(zip(blocks, widths, out_w), start=1):
        g = f"stage{s}"
        groups[g] = ow
        for b in range(n):
            name = f"s{s}u{b}"
            stride = 2 if (b == 0 and s > 1) else 1
            if kind == "plain":
                conv = ConvSpec(name=f"{name}_conv", cin=prev, cout=g, kernel=3, stride=stride)
                unit = UnitSpec(name=name, kind="plain", stage=s, convs=(conv,))
            else:
                cin = prev
                shortcut = None
                if stride != 1 or groups.get(cin, -1) != ow or cin != g:
                    shortcut = ConvSpec(name=f"{name}_sc", cin=cin, cout=g, kernel=1, stride=stride)
                if kind == "basic":
                    groups[f"{name}_c1"] = w
                    convs = (ConvSpec(name=f"{name}_c1", cin=cin, cout=f"{name}_c1", kernel=3, stride=stride),
                             ConvSpec(name=f"{name}_c2", cin=f"{name}_c1", cout=g, kernel=3))
                else:
                    groups[f"{name}_c1"] = w
                    groups[f"{name}_c2"] = w
                    convs = (ConvSpec(name=f"{name}_c1", cin=cin, cout=f"{name}_c1", kernel=1),
                             ConvSpec(name=f"{name}_c2", cin=f"{name}_c1", cout=f"{name}_c2", kernel=3,
                                      stride=stride),
                             ConvSpec(name=f"{name}_c3", cin=f"{name}_c2", cout=g, kernel=1))
                unit = UnitSpec(name=name, kind=kind, stage=s, convs=convs, shortcut=shortcut)
            if grow and not unit.changes_shape:
                unit = UnitSpec(name=unit.name, kind=unit.kind, stage=s, convs=unit.convs, shortcut=unit.shortcut,
                                growable=True)
            units.append(unit)
            prev = g
    return Layout(family=family, in_channels=in_channels, num_classes=num_classes, groups=groups,
                  stem=stem_specs, stem_pool=stem == "imagenet", units=tuple(units), head=prev,
                  n_stages=len(blocks))


def _vgg_layout(family: str, num_classes: int, in_channels: int, width: float, grow: bool) -> Layout:
    groups: dict[str, int] = {}
    units: list[UnitSpec] = []
    prev, stage, i = INPUT, 1, 0
    for v in VGG16_CFG:
        if v == "M":
            units.append(UnitSpec(name=f"pool{stage}", kind="pool", stage=stage))
            stage += 1
            continue
        i += 1
        g = f"conv{i}"
        groups[g] = _scaled(width, v)
        conv = ConvSpec(name=g, cin=prev, cout=g, kernel=3)
        units.append(UnitSpec(name=f"s{stage}u{i}", kind="vgg", stage=stage, convs=(conv,),
                              growable=False))
        prev = g
    if grow:
        raise UserError("vgg16 grows channels only: every conv changes the channel group, no layer indicators")
    return Layout(family=family, in_channels=in_channels, num_classes=num_classes, groups=groups, stem=(),
                  stem_pool=False, units=tuple(units), head=prev, n_stages=stage - 1)


# ---------------------------------------------------------------------------------------- plans
@dataclass
class Plan:
    """What one forward computes: per channel group the active filter indices and their
    multipliers; per growable unit ``None`` (detached) or its multiplier (a 0-d tensor or 1.0).
    ``relaxed_plain`` mixes a plain unit as ``z*F(x) + (1-z)*x`` (training); else ``F(x)``."""

    idx: dict[str, torch.Tensor]
    mult: dict[str, torch.Tensor]
    units: dict[str, torch.Tensor | float | None]
    relaxed_plain: bool = True


def _forward_graph(layout: Layout, x: torch.Tensor,
                   conv: Callable[[ConvSpec, torch.Tensor, object], torch.Tensor],
                   gate: Callable[[UnitSpec], object], head: Callable[[torch.Tensor], torch.Tensor],
                   relaxed_plain: bool) -> torch.Tensor:
    """The one forward both the growable and the compact network use (so export is exact).

    ``gate(unit)`` returns ``"skip"`` (not computed), ``None`` (always on / folded) or a multiplier.
    ``conv(spec, x, z)`` runs one conv + BatchNorm; ``z`` is the multiplier of a residual unit for
    its last conv (``None`` elsewhere), which the conv folds into its BatchNorm affine
    (``BN(y; gamma*z, beta*z) = z * BN(y; gamma, beta)``) instead of scaling the activation.
    """
    for c in layout.stem:
        x = F.relu(conv(c, x, None))
    if layout.stem_pool:
        x = F.max_pool2d(x, 3, stride=2, padding=1)
    for u in layout.units:
        if u.kind == "pool":
            x = F.max_pool2d(x, 2, ceil_mode=True)
            continue
        z = gate(u)
        if isinstance(z, str):
            continue
        if u.kind in ("basic", "bottleneck"):
            out = x
            last = len(u.convs) - 1
            for i, c in enumerate(u.convs):
                out = conv(c, out, z if i == last else None)
                if i < last:
                    out = F.relu(out)
            sc = x if u.shortcut is None else conv(u.shortcut, x, None)
            x = F.relu(sc + out)
        else:
            out = F.relu(conv(u.convs[0], x, None))
            x = out if (z is None or not relaxed_plain) else z * out + (1 - z) * x
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return head(x)


def take(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    """The dense block ``t[rows][:, cols]`` (``None``: every row / column), a copy."""
    if rows is not None:
        t = t.index_select(0, rows)
    if cols is not None:
        t = t.index_select(1, cols)
    return t.clone() if rows is None and cols is None else t


@torch.no_grad()
def put_(t: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None, block: torch.Tensor) -> None:
    """Write ``block`` back where :func:`take` read it: ``t[rows][:, cols] = block``."""
    if rows is None and cols is None:
        t.copy_(block)
    elif cols is None:
        t.index_copy_(0, rows, block)
    elif rows is None:
        t.index_copy_(1, cols, block)
    else:
        t[rows[:, None], cols[None, :]] = block


class GrowableNet(nn.Module):
    """The maximal network with mask weights; computes only the filters and units of a plan.

    Parameters: ``weight.<conv>``, ``bn_weight.<conv>``, ``bn_bias.<conv>`` (full size),
    ``head.weight/bias``; mask weights ``s_chan.<group>`` (one per filter) and ``s_unit.<unit>``
    (0-d).  Buffers: BN running stats, temperatures ``beta_chan.<group>`` / ``beta_unit.<unit>``.
    In ``train()`` mode it runs ``self.plan`` (set by the strategy per step); in ``eval()`` mode
    (or with no plan) the deterministic network: filters and units with ``s > 0``, multiplied by
    ``sigmoid(beta * s)`` - exactly what :meth:`export` turns into a dense :class:`CompactNet`.

    A sampled plan in ``train()`` mode runs as a dense compact network: each computed layer's
    weights are copied out (:func:`take`) into leaf tensors of the sampled widths, which are all
    autograd sees (``live``: name -> ``(rows, cols, leaf)``), so gradients - and the strategy's
    optimizer state, read and written through the same ``rows, cols`` - exist only for what ran;
    :meth:`write_back` puts the updated blocks back.  The multipliers are folded into BatchNorm's
    affine (per channel) rather than applied to the activations.
    """

    def __init__(self, layout: Layout, *, mask_init: float = 2.0, mask_spread: float = 0.5):
        super().__init__()
        self.layout = layout
        self.weight = nn.ParameterDict()
        self.bn_weight = nn.ParameterDict()
        self.bn_bias = nn.ParameterDict()
        self.s_chan = nn.ParameterDict()
        self.s_unit = nn.ParameterDict()
        self._convs = {c.name: c for c in layout.convs()}
        for c in layout.convs():
            cin = layout.in_channels if c.cin == INPUT else layout.groups[c.cin]
            cout = layout.groups[c.cout]
            w = torch.empty(cout, cin, c.kernel, c.kernel)
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
            self.weight[c.name] = nn.Parameter(w)
            self.bn_weight[c.name] = nn.Parameter(torch.ones(cout))
            self.bn_bias[c.name] = nn.Parameter(torch.zeros(cout))
            self.register_buffer(f"rm_{c.name}", torch.zeros(cout))
            self.register_buffer(f"rv_{c.name}", torch.ones(cout))
        self.head = nn.Linear(layout.groups[layout.head], layout.num_classes)
        # Sec. 4.1/4.2: one filter per layer (group) and one unit per stage start active.  The
        # inactive ones start at -mask_init * (1 +- mask_spread) (uniform, torch's global RNG):
        # identical values would cross zero in the same step and make the budget oscillate
        # between "nothing" and "everything" (our deviation; the paper gives no init values).
        def inactive(shape):
            return -mask_init * (1 + mask_spread * (2 * torch.rand(shape) - 1))

        for g, n in layout.groups.items():
            s = inactive((n,))
            s[0] = mask_init
            self.s_chan[g] = nn.Parameter(s)
            self.register_buffer(f"beta_chan_{g}", torch.ones(n))
        stages_with_fixed = {u.stage for u in layout.units if u.convs and not u.growable}
        seen: set[int] = set()
        for u in layout.growable_units():
            on = u.stage not in stages_with_fixed and u.stage not in seen
            seen.add(u.stage)
            self.s_unit[u.name] = nn.Parameter(torch.tensor(mask_init) if on else inactive(()))
            self.register_buffer(f"beta_unit_{u.name}", torch.ones(()))
        self.plan: Plan | None = None
        self.freeze_bn_stats = False
        self.used: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        # per computed layer: (kind, input shape, weight shape, stride, padding, input needs grad)
        self.shapes: dict[str, tuple] = {}
        self.live: dict[str, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = {}
        self._sampled = False

    # ---- accessors --------------------------------------------------------------------------
    def beta_chan(self, g: str) -> torch.Tensor:
        return getattr(self, f"beta_chan_{g}")

    def beta_unit(self, u: str) -> torch.Tensor:
        return getattr(self, f"beta_unit_{u}")

    def mask_parameters(self) -> list[nn.Parameter]:
        return list(self.s_chan.values()) + list(self.s_unit.values())

    def weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        mask_ids = {id(p) for p in self.mask_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in mask_ids]

    # ---- plans ------------------------------------------------------------------------------
    @torch.no_grad()
    def deterministic_plan(self) -> Plan:
        """Indicator 1[s > 0] (at least the largest ``s`` of a group), multiplier sigmoid(beta*s)."""
        idx, mult, units = {}, {}, {}
        for g, s in self.s_chan.items():
            keep = (s > 0).nonzero().flatten()
            if keep.numel() == 0:
                keep = s.argmax().view(1)
            idx[g] = keep
        for u, s in self.s_unit.items():
            units[u] = 1.0 if float(s) > 0 else None
        plan = Plan(idx=idx, mult=mult, units=units, relaxed_plain=False)
        return plan

    def _det_mult(self, plan: Plan) -> Plan:
        # multipliers carry autograd only in a sampled plan; here they are plain values
        for g, keep in plan.idx.items():
            plan.mult[g] = torch.sigmoid(self.beta_chan(g)[keep] * self.s_chan[g].detach()[keep])
        for u, on in list(plan.units.items()):
            if on is not None:
                plan.units[u] = torch.sigmoid(self.beta_unit(u) * self.s_unit[u].detach())
        return plan

    # ---- forward ----------------------------------------------------------------------------
    def _param(self, name: str) -> nn.Parameter:
        """A weight parameter by its ``named_parameters`` name (``weight.<conv>``, ``head.bias`` ...)."""
        owner, _, key = name.partition(".")
        return getattr(self.head, key) if owner == "head" else getattr(self, owner)[key]

    def _block(self, name: str, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
        """Parameter ``name``'s block of the computed rows / columns: a leaf in a sampled training
        step (recorded in ``live``), else a gather autograd runs through."""
        full = self._param(name)
        if not self._sampled:
            return take(full, rows, cols)
        with torch.no_grad():
            leaf = take(full, rows, cols)
        leaf.requires_grad_(True)
        self.live[name] = (rows, cols, leaf)
        return leaf

    def _conv(self, plan: Plan, c: ConvSpec, x: torch.Tensor, z) -> torch.Tensor:
        out_idx = plan.idx[c.cout]
        in_idx = None if c.cin == INPUT else plan.idx[c.cin]
        self.used[c.name] = (out_idx, in_idx)
        w = self._block(f"weight.{c.name}", out_idx, in_idx)
        self.shapes[c.name] = ("conv", tuple(x.shape[1:]), tuple(w.shape), c.stride, c.kernel // 2,
                               bool(x.requires_grad))
        y = F.conv2d(x, w, stride=c.stride, padding=c.kernel // 2)
        scale = plan.mult[c.cout] if z is None else plan.mult[c.cout] * z
        gamma = self._block(f"bn_weight.{c.name}", out_idx, None) * scale
        beta = self._block(f"bn_bias.{c.name}", out_idx, None) * scale
        rm_full, rv_full = getattr(self, f"rm_{c.name}"), getattr(self, f"rv_{c.name}")
        rm, rv = rm_full[out_idx], rv_full[out_idx]   # copies: the stats of the computed filters only
        training = self.training
        y = F.batch_norm(y, rm, rv, gamma, beta, training=training, momentum=BN_MOMENTUM, eps=BN_EPS)
        if training and not self.freeze_bn_stats:
            with torch.no_grad():
                rm_full[out_idx] = rm
                rv_full[out_idx] = rv
        return y

    def _head(self, plan: Plan, x: torch.Tensor) -> torch.Tensor:
        idx = plan.idx[self.layout.head]
        self.used["head"] = (None, idx)
        self.shapes["head"] = ("linear", (int(idx.numel()),), (self.head.out_features, int(idx.numel())), 1, 0,
                               bool(x.requires_grad))
        return F.linear(x, self._block("head.weight", None, idx), self._block("head.bias", None, None))

    def run_plan(self, plan: Plan, x: torch.Tensor, *, sampled: bool = False) -> torch.Tensor:
        self.used = {}
        self.shapes = {}
        self.live = {}
        self._sampled = sampled

        def gate(u: UnitSpec):
            if not u.growable:
                return None
            z = plan.units[u.name]
            return "skip" if z is None else z

        return _forward_graph(self.layout, x, lambda c, t, z: self._conv(plan, c, t, z), gate,
                              lambda t: self._head(plan, t), plan.relaxed_plain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.plan is not None:
            return self.run_plan(self.plan, x, sampled=True)
        return self.run_plan(self._det_mult(self.deterministic_plan()), x)

    @torch.no_grad()
    def write_back(self) -> None:
        """Put the ``live`` blocks (updated by the strategy) back into the full parameters."""
        for name, (rows, cols, leaf) in self.live.items():
            put_(self._param(name), rows, cols, leaf)
        self.live = {}

    # ---- structure --------------------------------------------------------------------------
    def active_units(self, plan: Plan) -> set[str]:
        return {u.name for u in self.layout.units if u.convs and (not u.growable or plan.units[u.name] is not None)}

    @torch.no_grad()
    def export(self) -> tuple["CompactNet", dict]:
        """The deterministic network as a dense :class:`CompactNet` (+ its ``arch`` dict).

        Kept filters are gathered; multipliers ``sigmoid(beta*s)`` of a conv's filters (and of
        its unit, for the last conv of a residual block) are folded into that conv's BatchNorm
        affine; detached units are left out.
        """
        plan = self._det_mult(self.deterministic_plan())
        arch = compact_arch(self.layout, {g: i.tolist() for g, i in plan.idx.items()},
                            sorted(self.active_units(plan)))
        net = build_compact(arch)
        for c in self.layout.convs():
            unit = self._unit_of(c.name)
            if unit is not None and unit.name not in net.active:
                continue
            o = plan.idx[c.cout]
            w = self.weight[c.name][o]
            if c.cin != INPUT:
                w = w[:, plan.idx[c.cin]]
            scale = plan.mult[c.cout].clone()
            if unit is not None and unit.growable and unit.kind in ("basic", "bottleneck") and c is unit.convs[-1]:
                scale = scale * plan.units[unit.name]
            mod = net.convs[c.name]
            mod[0].weight.copy_(w)
            mod[1].weight.copy_(self.bn_weight[c.name][o] * scale)
            mod[1].bias.copy_(self.bn_bias[c.name][o] * scale)
            mod[1].running_mean.copy_(getattr(self, f"rm_{c.name}")[o])
            mod[1].running_var.copy_(getattr(self, f"rv_{c.name}")[o])
        net.head.weight.copy_(self.head.weight[:, plan.idx[self.layout.head]])
        net.head.bias.copy_(self.head.bias)
        return net, arch

    def _unit_of(self, conv: str) -> UnitSpec | None:
        for u in self.layout.units:
            if any(c.name == conv for c in u.convs) or (u.shortcut is not None and u.shortcut.name == conv):
                return u
        return None


# ---------------------------------------------------------------------------------------- export
def compact_arch(layout: Layout, channels: Mapping[str, list[int]], active_units: list[str]) -> dict:
    """``arch.json``: enough to rebuild the compact network (with :func:`build_compact`)."""
    return {
        "family": layout.family,
        "layout": _layout_to_dict(layout),
        "widths": {g: len(ix) for g, ix in channels.items()},
        "channels": {g: list(map(int, ix)) for g, ix in channels.items()},
        "active_units": list(active_units),
        "stage_units": [sum(1 for u in layout.units if u.stage == s and u.convs and u.name in active_units)
                        for s in range(1, layout.n_stages + 1)],
        "layers": [{"conv": c.name, "in": None if c.cin == INPUT else len(channels[c.cin]),
                    "out": len(channels[c.cout]), "max_out": layout.groups[c.cout], "kernel": c.kernel,
                    "stride": c.stride}
                   for c in layout.convs() if _conv_active(layout, c.name, active_units)],
    }


def _conv_active(layout: Layout, conv: str, active_units) -> bool:
    for u in layout.units:
        if any(c.name == conv for c in u.convs) or (u.shortcut is not None and u.shortcut.name == conv):
            return u.name in active_units
    return True


def _layout_to_dict(layout: Layout) -> dict:
    def conv(c: ConvSpec | None):
        return None if c is None else dict(name=c.name, cin=c.cin, cout=c.cout, kernel=c.kernel, stride=c.stride)

    return {
        "family": layout.family, "in_channels": layout.in_channels, "num_classes": layout.num_classes,
        "groups": dict(layout.groups), "stem": [conv(c) for c in layout.stem], "stem_pool": layout.stem_pool,
        "units": [dict(name=u.name, kind=u.kind, stage=u.stage, convs=[conv(c) for c in u.convs],
                       shortcut=conv(u.shortcut), growable=u.growable) for u in layout.units],
        "head": layout.head, "n_stages": layout.n_stages,
    }


def _layout_from_dict(d: Mapping) -> Layout:
    def conv(c):
        return None if c is None else ConvSpec(**c)

    return Layout(family=d["family"], in_channels=d["in_channels"], num_classes=d["num_classes"],
                  groups=dict(d["groups"]), stem=tuple(conv(c) for c in d["stem"]), stem_pool=d["stem_pool"],
                  units=tuple(UnitSpec(name=u["name"], kind=u["kind"], stage=u["stage"],
                                       convs=tuple(conv(c) for c in u["convs"]), shortcut=conv(u["shortcut"]),
                                       growable=u["growable"]) for u in d["units"]),
                  head=d["head"], n_stages=d["n_stages"])


class CompactNet(nn.Module):
    """The grown network as a plain dense module: ``nn.Conv2d`` + ``nn.BatchNorm2d`` per kept conv
    (``convs[name]``), detached units absent, ``head`` an ``nn.Linear``.  Build from ``arch.json``
    with :func:`build_compact`, then ``load_state_dict(torch.load("model.pt", weights_only=True))``.
    """

    def __init__(self, arch: Mapping):
        super().__init__()
        self.layout = _layout_from_dict(arch["layout"])
        self.widths = dict(arch["widths"])
        self.active = set(arch["active_units"])
        self.convs = nn.ModuleDict()
        for c in self.layout.convs():
            if not _conv_active(self.layout, c.name, self.active):
                continue
            cin = self.layout.in_channels if c.cin == INPUT else self.widths[c.cin]
            cout = self.widths[c.cout]
            self.convs[c.name] = nn.Sequential(
                nn.Conv2d(cin, cout, c.kernel, stride=c.stride, padding=c.kernel // 2, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))
        self.head = nn.Linear(self.widths[self.layout.head], self.layout.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def gate(u: UnitSpec):
            return None if u.name in self.active else "skip"

        return _forward_graph(self.layout, x, lambda c, t, _z: self.convs[c.name](t), gate, self.head, False)


def build_compact(arch: Mapping) -> CompactNet:
    """A fresh :class:`CompactNet` of the shape ``arch`` describes (weights: load ``model.pt``)."""
    return CompactNet(arch)


def full_arch(layout: Layout) -> dict:
    """The seed family's maximal network as an ``arch`` (every filter, every unit)."""
    return compact_arch(layout, {g: list(range(n)) for g, n in layout.groups.items()},
                        [u.name for u in layout.units if u.convs])
