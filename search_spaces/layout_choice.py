"""A suite Layout net as an NNI model space: one ``LayerChoice`` per residual unit (width / skip).

Used for the "ProxylessNAS with the expected-FLOPs term" row of the compact-search comparison
(survey ``../shared/seeds/000_c349d282987e7307.txt``: every method gets a FLOPs target of 1/3 of
its baseline) with :class:`strategies.proxyless.ProxylessSearch` (ProxylessNAS, Cai et al.,
ICLR 2019, as customized in ``../shared/seeds/003_364944a1cb8aa754.txt``).

The baseline is a :class:`~search_spaces.growth_spaces.Layout` of a residual family (``resnet20``,
``basic3resnet``, ``bottleneck4resnet``; e.g. ResNet-32 = ``make_layout("resnet20",
stage_blocks=(5, 5, 5))``).  :func:`choice_space` turns it into a ``ModelSpace`` where

* every residual unit's *residual branch* is a ``LayerChoice`` labelled with the unit name
  (``s1u0`` ...).  Candidates ``w100``, ``w50``, ``w25`` (one per ratio, in the given order; the
  first is always ``w100``, the baseline) are the branch with its inner channel groups
  (``{unit}_c1``, and ``{unit}_c2`` for a bottleneck) scaled by the ratio (rounded, at least one
  channel); ``skip`` removes the branch.  ``skip`` is offered only for units that keep their
  shape (``not unit.changes_shape``), as ProxylessNAS offers its zero op only in blocks with an
  identity shortcut.
* stem, projection shortcuts, the stage channel groups (tied by the residual adds) and the
  classifier are fixed.

The forward is :class:`~search_spaces.growth_spaces.CompactNet`'s (``_forward_graph``):
conv -> BN -> ReLU, residual add then ReLU, global average pool, linear.  ``skip`` is the
zero branch ``relu(x + 0)``; a unit's input is always a ReLU (or max-pool of a ReLU) output,
so this equals ``x`` exactly - CompactNet's skipped unit - and costs no FLOPs.  Hence
:func:`choices_to_arch` maps a choice ``{unit: candidate}`` to a ``compact_arch`` (inner groups keep
their first ``k`` channels, skipped units inactive) whose :func:`build_compact` network has exactly
the FLOPs of the chosen path, and :func:`copy_chosen_weights` copies the chosen candidates'
weights into it (same outputs).  Deviation from ProxylessNAS: its candidates are MBConv kernel /
expansion choices of a MobileNetV2 backbone; here they are width ratios of the given baseline,
so the FLOPs target is expressed against that baseline as the survey requires.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.space import model_context

from . import cost as costmodel
from .errors import UserError
from .growth_spaces import (BN_EPS, BN_MOMENTUM, INPUT, CompactNet, ConvSpec, Layout, UnitSpec, _scaled,
                            build_compact, compact_arch)

__all__ = [
    "DEFAULT_RATIOS",
    "SKIP",
    "LayoutChoiceSpace",
    "choice_space",
    "choice_labels",
    "candidate_names",
    "baseline_choices",
    "choices_to_arch",
    "arch_flops",
    "build_choice_net",
    "copy_chosen_weights",
]

DEFAULT_RATIOS = (1.0, 0.5, 0.25)
SKIP = "skip"
RESIDUAL = ("basic", "bottleneck")


# ---------------------------------------------------------------------------------------- names
def _percent(ratio: float) -> int:
    return int(round(ratio * 100))


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    ratios = tuple(ratios)
    if not ratios:
        raise UserError("ratios must name at least one width ratio (the first must be 1.0)")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise UserError(f"width ratios must be numbers in (0, 1], got {r!r}")
        if not math.isclose(r * 100, _percent(r), abs_tol=1e-9):
            raise UserError(f"width ratio {r} is not a whole percentage (candidate names are w<percent>)")
    if _percent(ratios[0]) != 100:
        raise UserError(f"the first ratio must be 1.0 (the baseline candidate w100), got {ratios[0]}")
    pct = [_percent(r) for r in ratios]
    if any(b >= a for a, b in zip(pct, pct[1:])):
        raise UserError(f"ratios must be strictly decreasing, got {ratios}")
    return ratios


def _width_name(ratio: float) -> str:
    return f"w{_percent(ratio)}"


def _parse_candidate(unit: UnitSpec, name: str) -> float | None:
    """``'w50'`` -> 0.5, ``'skip'`` -> None (only where the unit keeps its shape)."""
    if name == SKIP:
        if unit.changes_shape:
            raise UserError(f"{unit.name}: 'skip' is not allowed, the unit changes resolution or channels")
        return None
    if isinstance(name, str) and name.startswith("w") and name[1:].isdigit() and 1 <= int(name[1:]) <= 100:
        return int(name[1:]) / 100
    raise UserError(f"{unit.name}: unknown candidate {name!r}; expected w<percent 1..100> or {SKIP!r}")


def _residual_units(layout: Layout) -> list[UnitSpec]:
    if not isinstance(layout, Layout):
        raise UserError(f"expected a Layout (search_spaces.growth_spaces.make_layout), got {type(layout).__name__}")
    other = sorted({u.kind for u in layout.units if u.kind not in RESIDUAL})
    if other:
        raise UserError(f"layout family {layout.family!r} has {', '.join(other)} units; choice_space searches "
                        "residual families only (resnet20, basic3resnet, bottleneck4resnet)")
    return list(layout.units)


def choice_labels(layout: Layout) -> list[str]:
    """The ``LayerChoice`` labels: the residual units' names, in network order."""
    return [u.name for u in _residual_units(layout)]


def candidate_names(layout: Layout, *, ratios: Sequence[float] = DEFAULT_RATIOS,
                    allow_skip: bool = True) -> dict[str, list[str]]:
    """label -> candidate names in ``LayerChoice`` order (``w100`` first)."""
    widths = [_width_name(r) for r in _check_ratios(ratios)]
    return {u.name: widths + ([SKIP] if allow_skip and not u.changes_shape else [])
            for u in _residual_units(layout)}


def baseline_choices(layout: Layout) -> dict[str, str]:
    """The baseline (every unit at full width) as a choice."""
    return {label: "w100" for label in choice_labels(layout)}


# ---------------------------------------------------------------------------------------- modules
def _conv_bn(cin: int, cout: int, spec: ConvSpec) -> nn.Sequential:
    # exactly CompactNet's layer, so weights copy one to one
    return nn.Sequential(nn.Conv2d(cin, cout, spec.kernel, stride=spec.stride, padding=spec.kernel // 2, bias=False),
                         nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))


def _inner_widths(layout: Layout, unit: UnitSpec, ratio: float) -> dict[str, int]:
    """Inner channel groups of ``unit`` (every conv output but the last) scaled by ``ratio``."""
    return {c.cout: _scaled(ratio, layout.groups[c.cout]) for c in unit.convs[:-1]}


class ResidualBranch(nn.Module):
    """The residual branch of a unit at one width: convs (``convs[name]``) with ReLU between."""

    def __init__(self, layout: Layout, unit: UnitSpec, ratio: float):
        super().__init__()
        widths = {**layout.groups, **_inner_widths(layout, unit, ratio)}
        self.convs = nn.ModuleDict()
        for c in unit.convs:
            cin = layout.in_channels if c.cin == INPUT else widths[c.cin]
            self.convs[c.name] = _conv_bn(cin, widths[c.cout], c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = list(self.convs.values())
        for i, conv in enumerate(convs):
            x = conv(x)
            if i < len(convs) - 1:
                x = torch.relu(x)
        return x


class ZeroBranch(nn.Module):
    """No residual branch (``skip``): the unit computes ``relu(x + 0) = x`` (its input is >= 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class ResidualUnit(nn.Module):
    """``relu(shortcut(x) + branch(x))``; ``branch`` is the unit's ``LayerChoice``."""

    def __init__(self, layout: Layout, unit: UnitSpec, ratios: tuple[float, ...], allow_skip: bool):
        super().__init__()
        self.shortcut = None
        if unit.shortcut is not None:
            self.shortcut = _conv_bn(layout.groups[unit.shortcut.cin], layout.groups[unit.shortcut.cout],
                                     unit.shortcut)
        candidates: dict[str, nn.Module] = {_width_name(r): ResidualBranch(layout, unit, r) for r in ratios}
        if allow_skip and not unit.changes_shape:
            candidates[SKIP] = ZeroBranch()
        self.branch = LayerChoice(candidates, label=unit.name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(sc + self.branch(x))


class LayoutChoiceSpace(ModelSpace):
    """The layout's network with a width/skip ``LayerChoice`` per residual unit (module docstring).

    Modules: ``stem[conv]``, ``units[unit].shortcut`` / ``units[unit].branch`` (the choice),
    ``head`` - the names :func:`copy_chosen_weights` reads.
    """

    def __init__(self, layout: Layout, *, ratios: Sequence[float] = DEFAULT_RATIOS, allow_skip: bool = True):
        super().__init__()
        units = _residual_units(layout)
        ratios = _check_ratios(ratios)
        if not units:
            raise UserError("the layout has no residual unit to search")
        self.layout = layout
        self.ratios = ratios
        self.allow_skip = bool(allow_skip)
        self.stem = nn.ModuleDict({c.name: _conv_bn(layout.in_channels if c.cin == INPUT else layout.groups[c.cin],
                                                    layout.groups[c.cout], c) for c in layout.stem})
        self.units = nn.ModuleDict({u.name: ResidualUnit(layout, u, ratios, self.allow_skip) for u in units})
        self.head = nn.Linear(layout.groups[layout.head], layout.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.stem.values():
            x = torch.relu(conv(x))
        if self.layout.stem_pool:
            x = nn.functional.max_pool2d(x, 3, stride=2, padding=1)
        for unit in self.units.values():
            x = unit(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(x)


def choice_space(layout: Layout, *, ratios: Sequence[float] = DEFAULT_RATIOS,
                 allow_skip: bool = True) -> LayoutChoiceSpace:
    """The search space (a ``ModelSpace``) of ``layout``: see the module docstring."""
    return LayoutChoiceSpace(layout, ratios=ratios, allow_skip=allow_skip)


def _check_choices(layout: Layout, choices: Mapping[str, str]) -> dict[str, float | None]:
    units = _residual_units(layout)
    labels = [u.name for u in units]
    missing = [lb for lb in labels if lb not in choices]
    extra = [lb for lb in choices if lb not in labels]
    if missing or extra:
        raise UserError(f"choices do not match the layout's units: missing {missing}, unexpected {extra}")
    return {u.name: _parse_candidate(u, choices[u.name]) for u in units}


def build_choice_net(layout: Layout, choices: Mapping[str, str], *, ratios: Sequence[float] = DEFAULT_RATIOS,
                     allow_skip: bool = True) -> LayoutChoiceSpace:
    """The space frozen at ``choices`` (NNI's ``model_context``: only the chosen candidates exist)."""
    _check_choices(layout, choices)
    names = candidate_names(layout, ratios=ratios, allow_skip=allow_skip)
    for label, name in choices.items():
        if name not in names[label]:
            raise UserError(f"{label}: candidate {name!r} is not in this space; valid: {', '.join(names[label])}")
    with model_context(dict(choices)):
        return LayoutChoiceSpace(layout, ratios=ratios, allow_skip=allow_skip)


# ---------------------------------------------------------------------------------------- export
def choices_to_arch(layout: Layout, choices: Mapping[str, str]) -> dict:
    """A ``compact_arch`` for ``choices``: a unit's inner groups keep their first ``k`` channels
    (``k`` = the candidate's width), a skipped unit is inactive, every other group is full."""
    parsed = _check_choices(layout, choices)
    channels = {g: list(range(n)) for g, n in layout.groups.items()}
    active = []
    for u in layout.units:
        ratio = parsed[u.name]
        if ratio is None:
            continue
        active.append(u.name)
        for g, k in _inner_widths(layout, u, ratio).items():
            channels[g] = list(range(k))
    return compact_arch(layout, channels, active)


def arch_flops(layout: Layout, choices: Mapping[str, str], input_shape: Sequence[int]) -> int:
    """Forward FLOPs (one sample, :func:`search_spaces.cost.count_flops`) of the rebuilt network."""
    return costmodel.count_flops(build_compact(choices_to_arch(layout, choices)), tuple(input_shape))


@torch.no_grad()
def copy_chosen_weights(source: nn.Module, choices: Mapping[str, str], net: CompactNet) -> CompactNet:
    """Copy the chosen candidates' weights (and BN statistics) from ``source`` into ``net``.

    ``source``: a :class:`LayoutChoiceSpace`, the same space frozen at ``choices``
    (:func:`build_choice_net`), or a one-shot supernet made from it (e.g. ``ProxylessSearch.supernet``,
    whose choices are ``LayerChoice`` subclasses); ``net``: ``build_compact(choices_to_arch(layout,
    choices))``.  Both run the same layers, so the copy computes the same function.
    """
    layout = net.layout
    _check_choices(layout, choices)

    def put(dst: nn.Module, src: nn.Module, where: str) -> None:
        sd, dd = src.state_dict(), dst.state_dict()
        if sd.keys() != dd.keys() or any(sd[k].shape != dd[k].shape for k in sd):
            raise UserError(f"{where}: the source layer does not match the compact network "
                            "(another layout, ratio or choice?)")
        dst.load_state_dict(sd)

    for c in layout.stem:
        put(net.convs[c.name], source.stem[c.name], c.name)
    for u in layout.units:
        if choices[u.name] == SKIP:
            continue
        unit = source.units[u.name]
        if u.shortcut is not None:
            put(net.convs[u.shortcut.name], unit.shortcut, u.shortcut.name)
        branch = unit.branch
        if isinstance(branch, LayerChoice):
            if choices[u.name] not in branch.names:
                raise UserError(f"{u.name}: candidate {choices[u.name]!r} is not in the source space")
            branch = branch[choices[u.name]]
        for c in u.convs:
            put(net.convs[c.name], branch.convs[c.name], c.name)
    put(net.head, source.head, "head")
    return net
