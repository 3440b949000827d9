"""EPNAS search spaces: layer-by-layer networks and PNAS-style stacked cells (NNI model spaces).

Paper: "EPNAS: Efficient Progressive Neural Architecture Search" (``../shared/seeds/004_*.txt``),
Sec. 3.3 and the two search-space tables of Sec. 3.4.

Encoding (plain JSON-able dicts; the controller morphs these, trials rebuild them)
--------------------------------------------------------------------------------
* **layer-by-layer**: ``{"space": "layer", "layers": [layer, ...]}`` with 1..``max_layers``
  layers, each ``{"type", "filter", "pool", "channels", "act", "src1", "src2"}``:
  ``type`` in ``LAYER_TYPES`` = [conv2d, dep-sep-conv2d, maxpool2d, avgpool2d, add], ``filter``
  in [1, 3, 5, 7], ``pool`` in [2, 3], ``channels`` in [16, 32, 64, 96, 128, 256], ``act`` in
  [relu, crelu, elu, selu, swish]; ``src1``/``src2`` are skip sources: the index of an *earlier*
  layer (``0 <= src < i``) whose output is added to layer ``i``'s output, or ``-1`` for none
  (the paper: "Src2 can be -1 to avoid a skip connection").  Layer ``i``'s main input is always
  layer ``i-1`` (the stem for ``i == 0``).
* **module**: ``{"space": "module", "branches": [branch, ...]}`` with 1..``max_branches``
  branches, each ``{"type", "filter", "pool", "channels", "src1", "src2", "propagate"}``:
  ``type`` in ``BRANCH_TYPES`` (conv-conv ... none-none), ``channels`` in [8, 12, 16, 24, 32],
  ``src1``/``src2`` in ``range(max_branches + 1)`` where 0 is the cell input and ``j >= 1`` the
  output of branch ``j-1`` (so branch ``b`` may use ``0..b``); ``propagate`` in {0, 1} says
  whether the branch's output is part of the cell output.

Shapes and the downsampling policy (stated, since the paper leaves them open)
------------------------------------------------------------------------------
* conv / dep-sep conv: "same" padding, stride 1, then BatchNorm and the activation.  ``crelu``
  concatenates ReLU(x) and ReLU(-x); so that a layer still outputs ``channels`` the conv then
  produces ``channels // 2``.
* max/avg pooling layers (layer-by-layer) downsample by 2 (kernel = pooling width, stride 2,
  ``ceil_mode``) while the feature map stays at least ``min_spatial`` on each side afterwards;
  later pooling layers run with stride 1 and "same" (replicate) padding.  Pools and ``add``
  keep the channel count of their input (``channels``/``act`` are ignored for them).
* a skip (``src``) is added after the layer's own op; a source of another size is average-pooled
  to the layer's spatial size and, if its channel count differs, projected by a 1x1 conv + BN.
* ``add`` is the identity of its input plus its sources, so it needs at least one source.
* module search: every op keeps the spatial size (pools stride 1, "same" padding); a branch
  outputs the channel concatenation of its two ops (the paper: "each branch consists of two
  operations to be concatenated"; ``none`` as the first op is the identity of ``src1``, as the
  second op it is absent); the cell output concatenates the propagated branches and a 1x1 conv
  + BN + ReLU maps it to the cell width.  Cells are stacked PNAS-style: a stem, ``stages``
  stages of ``cells_per_stage`` cells; between stages a 2x2 average pool halves the spatial size
  (while it stays >= ``min_spatial``) and the cell width doubles.

NNI space (:class:`EpnasSpace`, :func:`nni_choices`): ``num_layers`` (``num_branches``) in
``1..max``, then per slot ``i`` one choice per feature (``layer03_channels`` ...) whose sources
already hold only existing units (layer ``i``: ``-1, 0..i-1``; branch ``b``: ``0..b``), so the
sources are valid by construction; slots beyond the count are ignored; one constraint
(``valid_arch``) rejects the two cases no single choice can express (see the NNI-space section).
The paper's tables list ``range(MAX_LAYERS)`` for every source; the per-slot ranges are the
subset of it that builds.

:func:`check_arch` returns the reason an architecture is invalid (``None`` if valid);
:func:`build_network` raises :class:`InvalidArchitecture` (a :class:`UserError`) with it.
Costs come from :mod:`search_spaces.cost` only.
"""
from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cost as costmodel
from .errors import UserError

__all__ = [
    "LAYER_TYPES", "FILTER_WIDTHS", "POOL_WIDTHS", "LAYER_CHANNELS", "ACTIVATIONS",
    "BRANCH_TYPES", "CELL_CHANNELS", "PROPAGATE", "NONE_SRC",
    "SpaceConfig", "InvalidArchitecture", "check_arch", "validate_arch", "build_network",
    "random_arch", "arch_to_json", "arch_from_json", "EpnasNetwork", "EpnasSpace", "ArchConstraint", "arch_to_sample",
    "sample_to_arch", "check_sample", "nni_choices", "nni_search_space", "COUNT_LABELS", "CONSTRAINT_LABEL",
    "arch_cost", "check_constraints_feasible", "intensity_upper_bound", "num_units",
]

LAYER_TYPES = ("conv2d", "dep-sep-conv2d", "maxpool2d", "avgpool2d", "add")
FILTER_WIDTHS = (1, 3, 5, 7)
POOL_WIDTHS = (2, 3)
LAYER_CHANNELS = (16, 32, 64, 96, 128, 256)
ACTIVATIONS = ("relu", "crelu", "elu", "selu", "swish")
BRANCH_TYPES = ("conv-conv", "conv-maxpool", "conv-avgpool", "conv-none", "maxpool-none", "avgpool-none", "none-none")
CELL_CHANNELS = (8, 12, 16, 24, 32)
PROPAGATE = (0, 1)
NONE_SRC = -1
SPACES = ("layer", "module")


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """Which space and how networks are assembled around the searched layers/cell."""

    kind: str = "layer"
    max_layers: int = 12          # layer-by-layer slots (MAX_LAYERS)
    max_branches: int = 5         # module search branches per cell (MAX_BRANCHES, PNAS's B=5)
    stem_channels: int = 32       # layer-by-layer: 3x3 stem conv width
    cell_channels: int = 16       # module: cell width of the first stage
    cells_per_stage: int = 2
    stages: int = 3
    min_spatial: int = 4

    def __post_init__(self):
        if self.kind not in SPACES:
            raise UserError(f"unknown EPNAS space {self.kind!r}; valid: {', '.join(SPACES)}")
        for name in ("max_layers", "max_branches", "stem_channels", "cell_channels", "cells_per_stage",
                     "stages", "min_spatial"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")


class InvalidArchitecture(UserError):
    """An architecture that does not build; the message is the reason."""


# ---------------------------------------------------------------------------------- checks


def num_units(arch: Mapping[str, Any]) -> int:
    """Number of layers (layer-by-layer) or branches (module) of ``arch``."""
    return len(arch.get("layers" if arch.get("space") == "layer" else "branches", []))


def _check_layer(i: int, layer: Mapping[str, Any]) -> str | None:
    keys = {"type", "filter", "pool", "channels", "act", "src1", "src2"}
    if not isinstance(layer, Mapping) or set(layer) != keys:
        got = sorted(layer) if isinstance(layer, Mapping) else type(layer).__name__
        return f"layer {i}: expected keys {sorted(keys)}, got {got}"
    for key, table in (("type", LAYER_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS),
                       ("channels", LAYER_CHANNELS), ("act", ACTIVATIONS)):
        if layer[key] not in table:
            return f"layer {i}: unknown {key} {layer[key]!r}; valid: {list(table)}"
    for key in ("src1", "src2"):
        s = layer[key]
        if not isinstance(s, int) or isinstance(s, bool) or not (s == NONE_SRC or 0 <= s < i):
            return f"layer {i}: {key}={s!r} must be -1 (none) or an earlier layer 0..{i - 1}"
    if layer["type"] == "add" and layer["src1"] == NONE_SRC and layer["src2"] == NONE_SRC:
        return f"layer {i}: an 'add' layer needs at least one source (src1 or src2)"
    return None


def _check_branch(b: int, br: Mapping[str, Any]) -> str | None:
    keys = {"type", "filter", "pool", "channels", "src1", "src2", "propagate"}
    if not isinstance(br, Mapping) or set(br) != keys:
        got = sorted(br) if isinstance(br, Mapping) else type(br).__name__
        return f"branch {b}: expected keys {sorted(keys)}, got {got}"
    for key, table in (("type", BRANCH_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS),
                       ("channels", CELL_CHANNELS), ("propagate", PROPAGATE)):
        if br[key] not in table or isinstance(br[key], bool):
            return f"branch {b}: unknown {key} {br[key]!r}; valid: {list(table)}"
    for key in ("src1", "src2"):
        s = br[key]
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= b:
            return f"branch {b}: {key}={s!r} must be 0 (cell input) or an earlier branch 1..{b}"
    return None


def check_arch(arch: Any, cfg: SpaceConfig | None = None) -> str | None:
    """The reason ``arch`` is invalid in ``cfg``'s space, or ``None`` when it builds."""
    if not isinstance(arch, Mapping) or arch.get("space") not in SPACES:
        return f"architecture must be a mapping with space in {list(SPACES)}"
    kind = arch["space"]
    if cfg is not None and cfg.kind != kind:
        return f"architecture is for the {kind!r} space, expected {cfg.kind!r}"
    key = "layers" if kind == "layer" else "branches"
    if set(arch) != {"space", key}:
        return f"architecture keys must be ['space', '{key}'], got {sorted(arch)}"
    units = arch[key]
    if not isinstance(units, Sequence) or isinstance(units, (str, bytes)) or not units:
        return f"architecture needs at least one {key[:-1]}"
    limit = None if cfg is None else (cfg.max_layers if kind == "layer" else cfg.max_branches)
    if limit is not None and len(units) > limit:
        return f"{len(units)} {key} exceed max_{key}={limit}"
    for i, u in enumerate(units):
        reason = _check_layer(i, u) if kind == "layer" else _check_branch(i, u)
        if reason:
            return reason
    if kind == "module" and not any(b["propagate"] for b in units):
        return "no branch propagates to the cell output (set propagate=1 on at least one)"
    return None


def validate_arch(arch: Any, cfg: SpaceConfig | None = None) -> dict:
    reason = check_arch(arch, cfg)
    if reason:
        raise InvalidArchitecture(f"invalid architecture: {reason}")
    return dict(arch)


def arch_to_json(arch: Mapping[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def arch_from_json(text: str) -> dict:
    try:
        arch = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidArchitecture(f"architecture is not valid JSON: {exc}") from None
    return arch


# ---------------------------------------------------------------------------------- ops


class CReLU(nn.Module):
    def forward(self, x):
        return torch.cat([F.relu(x), F.relu(-x)], 1)


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "crelu": CReLU, "elu": nn.ELU, "selu": nn.SELU, "swish": nn.SiLU}[name]()


class SamePool(nn.Module):
    """Stride-1 pooling that keeps H x W (replicate-pad right/bottom by k-1)."""

    def __init__(self, kind: str, k: int):
        super().__init__()
        self.k = k
        self.pool = nn.MaxPool2d(k, 1) if kind.startswith("max") else nn.AvgPool2d(k, 1)

    def forward(self, x):
        if self.k > 1:
            x = F.pad(x, (0, self.k - 1, 0, self.k - 1), mode="replicate")
        return self.pool(x)


def _pool_out(h: int, k: int) -> int:
    return math.ceil((h - k) / 2) + 1 if h >= k else 1


def _conv(cin: int, cout: int, k: int, sep: bool, act: str) -> nn.Sequential:
    inner = cout // 2 if act == "crelu" else cout
    if sep:
        convs = [nn.Conv2d(cin, cin, k, padding=k // 2, groups=cin, bias=False), nn.Conv2d(cin, inner, 1, bias=False)]
    else:
        convs = [nn.Conv2d(cin, inner, k, padding=k // 2, bias=False)]
    return nn.Sequential(*convs, nn.BatchNorm2d(inner), _act(act))


class Align(nn.Module):
    """Bring a skip source to (C, H, W): average-pool spatially, 1x1 conv + BN for channels."""

    def __init__(self, cin: int, cout: int, hw: tuple[int, int], src_hw: tuple[int, int]):
        super().__init__()
        self.hw = hw
        self.pool = tuple(src_hw) != tuple(hw)
        self.proj = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        if self.pool:
            x = F.adaptive_avg_pool2d(x, self.hw)
        return x if self.proj is None else self.proj(x)


class Layer(nn.Module):
    def __init__(self, spec: Mapping[str, Any], cin: int, hw: tuple[int, int], min_spatial: int,
                 sources: list[tuple[int, int, tuple[int, int]]]):
        super().__init__()
        t = spec["type"]
        self.kind = t
        if t in ("conv2d", "dep-sep-conv2d"):
            self.op = _conv(cin, spec["channels"], spec["filter"], t == "dep-sep-conv2d", spec["act"])
            self.out_c, self.out_hw = spec["channels"] if spec["act"] != "crelu" else 2 * (spec["channels"] // 2), hw
        elif t in ("maxpool2d", "avgpool2d"):
            k = spec["pool"]
            nh, nw = _pool_out(hw[0], k), _pool_out(hw[1], k)
            if min(nh, nw) >= min_spatial:
                cls = nn.MaxPool2d if t == "maxpool2d" else nn.AvgPool2d
                self.op, self.out_hw = cls(k, 2, ceil_mode=True), (nh, nw)
            else:
                self.op, self.out_hw = SamePool(t, k), hw
            self.out_c = cin
        else:  # add
            self.op, self.out_c, self.out_hw = nn.Identity(), cin, hw
        self.src_idx = [s for s, _, _ in sources]
        self.aligns = nn.ModuleList(Align(c, self.out_c, self.out_hw, shw) for _, c, shw in sources)

    def forward(self, x, outputs: list[torch.Tensor]):
        y = self.op(x)
        for s, align in zip(self.src_idx, self.aligns):
            y = y + align(outputs[s])
        return y


def _branch_op(name: str, cin: int, br: Mapping[str, Any]) -> tuple[nn.Module | None, int]:
    if name == "conv":
        c = br["channels"]
        k = br["filter"]
        return nn.Sequential(nn.Conv2d(cin, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU()), c
    if name in ("maxpool", "avgpool"):
        return SamePool(name, br["pool"]), cin
    return None, 0


class Branch(nn.Module):
    def __init__(self, br: Mapping[str, Any], in_channels: list[int]):
        super().__init__()
        first, second = br["type"].split("-")
        self.src1, self.src2 = br["src1"], br["src2"]
        op1, c1 = _branch_op(first, in_channels[self.src1], br)
        self.op1 = op1 if op1 is not None else nn.Identity()
        c1 = c1 if op1 is not None else in_channels[self.src1]
        self.op2, c2 = _branch_op(second, in_channels[self.src2], br)
        self.out_c = c1 + c2

    def forward(self, states: list[torch.Tensor]):
        y = self.op1(states[self.src1])
        if self.op2 is not None:
            y = torch.cat([y, self.op2(states[self.src2])], 1)
        return y


class Cell(nn.Module):
    def __init__(self, branches: Sequence[Mapping[str, Any]], cin: int, width: int):
        super().__init__()
        chans = [cin]
        self.branches = nn.ModuleList()
        for br in branches:
            m = Branch(br, chans)
            self.branches.append(m)
            chans.append(m.out_c)
        self.keep = [i for i, br in enumerate(branches) if br["propagate"]]
        cat = sum(self.branches[i].out_c for i in self.keep)
        self.proj = nn.Sequential(nn.Conv2d(cat, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())

    def forward(self, x):
        states = [x]
        for br in self.branches:
            states.append(br(states))
        return self.proj(torch.cat([states[i + 1] for i in self.keep], 1))


class EpnasNetwork(nn.Module):
    """A fixed network for one architecture: stem, searched layers (or stacked cells), head.

    ``shareable()`` maps parameter-sharing keys ``"<layer>:<op type>"`` to the modules whose
    weights the sharing dictionary stores (Sec. 3.4: keys are layer number + operation type).
    """

    def __init__(self, arch: Mapping[str, Any], cfg: SpaceConfig, *, input_shape: Sequence[int] = (3, 32, 32),
                 num_classes: int = 10):
        super().__init__()
        arch = validate_arch(arch, cfg)
        self.arch = copy.deepcopy(arch)
        self.space = arch["space"]
        cin, h, w = int(input_shape[0]), int(input_shape[1]), int(input_shape[2])
        self._keys: list[str] = []
        if self.space == "layer":
            c = cfg.stem_channels
            self.stem = nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
            shapes: list[tuple[int, tuple[int, int]]] = []
            self.layers = nn.ModuleList()
            hw = (h, w)
            for i, spec in enumerate(arch["layers"]):
                srcs = [(s, *shapes[s]) for s in (spec["src1"], spec["src2"]) if s != NONE_SRC]
                layer = Layer(spec, c, hw, cfg.min_spatial, srcs)
                self.layers.append(layer)
                c, hw = layer.out_c, layer.out_hw
                shapes.append((c, hw))
                self._keys.append(f"{i}:{spec['type']}")
        else:
            width = cfg.cell_channels
            self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.layers = nn.ModuleList()
            c, hw, index = width, (h, w), 0
            for s in range(cfg.stages):
                if s > 0:
                    width *= 2
                    if min(hw) // 2 >= cfg.min_spatial:
                        self.layers.append(nn.AvgPool2d(2, 2))
                        hw = (hw[0] // 2, hw[1] // 2)
                        self._keys.append("")
                for _ in range(cfg.cells_per_stage):
                    self.layers.append(Cell(arch["branches"], c, width))
                    self._keys.append(str(index))
                    c = width
                    index += 1
        self.out_channels = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def shareable(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"stem": self.stem, "head": self.fc}
        for key, layer in zip(self._keys, self.layers):
            if self.space == "layer":
                out[key] = layer
            elif key:
                for b, (br, spec) in enumerate(zip(layer.branches, self.arch["branches"])):
                    out[f"{key}.{b}:{spec['type']}"] = br
                out[f"{key}:proj"] = layer.proj
        return out

    def forward(self, x):
        x = self.stem(x)
        if self.space == "layer":
            outputs: list[torch.Tensor] = []
            for layer in self.layers:
                x = layer(x, outputs)
                outputs.append(x)
        else:
            for layer in self.layers:
                x = layer(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def build_network(arch: Mapping[str, Any], cfg: SpaceConfig, *, input_shape: Sequence[int] = (3, 32, 32),
                  num_classes: int = 10) -> EpnasNetwork:
    """A plain ``nn.Module`` for ``arch``; :class:`InvalidArchitecture` (with the reason) if invalid."""
    return EpnasNetwork(arch, cfg, input_shape=input_shape, num_classes=num_classes)


def arch_cost(arch: Mapping[str, Any], cfg: SpaceConfig, input_shape: Sequence[int], num_classes: int) -> costmodel.Cost:
    """params / FLOPs / bytes / intensity of ``arch`` (built on the meta device: no memory, no compute)."""
    with torch.device("meta"):
        net = build_network(arch, cfg, input_shape=input_shape, num_classes=num_classes)
    return costmodel.profile(net, tuple(input_shape))


# ---------------------------------------------------------------------------------- sampling


def _rand_layer(i: int, rng: random.Random, skip_prob: float = 0.3) -> dict:
    t = rng.choice(LAYER_TYPES if i > 0 else LAYER_TYPES[:-1])
    src = lambda: rng.randrange(i) if i > 0 and rng.random() < skip_prob else NONE_SRC  # noqa: E731
    layer = {"type": t, "filter": rng.choice(FILTER_WIDTHS), "pool": rng.choice(POOL_WIDTHS),
             "channels": rng.choice(LAYER_CHANNELS), "act": rng.choice(ACTIVATIONS), "src1": src(), "src2": src()}
    if t == "add" and layer["src1"] == NONE_SRC and layer["src2"] == NONE_SRC:
        layer["src1"] = rng.randrange(i)
    return layer


def _rand_branch(b: int, rng: random.Random) -> dict:
    return {"type": rng.choice(BRANCH_TYPES), "filter": rng.choice(FILTER_WIDTHS), "pool": rng.choice(POOL_WIDTHS),
            "channels": rng.choice(CELL_CHANNELS), "src1": rng.randint(0, b), "src2": rng.randint(0, b),
            "propagate": rng.choice(PROPAGATE)}


def random_arch(cfg: SpaceConfig, rng: random.Random, *, units: int | None = None) -> dict:
    """A uniformly drawn *valid* architecture with ``units`` layers/branches (random count if None)."""
    if cfg.kind == "layer":
        n = units or rng.randint(1, cfg.max_layers)
        return {"space": "layer", "layers": [_rand_layer(i, rng) for i in range(n)]}
    n = units or rng.randint(1, cfg.max_branches)
    branches = [_rand_branch(b, rng) for b in range(n)]
    if not any(b["propagate"] for b in branches):
        branches[-1]["propagate"] = 1
    return {"space": "module", "branches": branches}


# ---------------------------------------------------------------------------------- NNI space
#
# Valid by construction: a count choice (``num_layers`` / ``num_branches``) says how many slots are
# live, and every slot's source choices hold only what exists before it (layer ``i``: -1 or
# ``0..i-1``; branch ``b``: ``0..b``), so no source can point at a missing unit whatever the count.
# Slots at or beyond the count are ignored (NNI 3.0 has no conditional mutables: its own ``Repeat``
# keeps the mutables of unused blocks the same way).  Slot 0 of the layer space has no ``add``
# (it would have no source).  Two conditions cannot be expressed per choice -- an ``add`` layer
# with both sources -1, and a cell in which no live branch propagates -- so one NNI
# :class:`~nni.mutable.Constraint` (label ``valid_arch``) rejects them: NNI's ``Random`` and
# ``RegularizedEvolution`` retry on its ``ConstraintViolation`` and ``GridSearch`` skips the points.

_LAYER_FIELDS = (("type", LAYER_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS), ("channels", LAYER_CHANNELS),
                 ("act", ACTIVATIONS))
_BRANCH_FIELDS = (("type", BRANCH_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS), ("channels", CELL_CHANNELS),
                  ("propagate", PROPAGATE))
COUNT_LABELS = {"layer": "num_layers", "module": "num_branches"}
CONSTRAINT_LABEL = "valid_arch"


def _slots(cfg: SpaceConfig) -> tuple[str, str, int]:
    """(label prefix, architecture key, number of slots) of ``cfg``'s space."""
    if cfg.kind == "layer":
        return "layer", "layers", cfg.max_layers
    return "branch", "branches", cfg.max_branches


def _slot_fields(cfg: SpaceConfig, i: int) -> list[tuple[str, tuple]]:
    """``(field, values)`` of slot ``i``: the unit's features, then its two sources."""
    if cfg.kind == "layer":
        types = LAYER_TYPES if i > 0 else tuple(t for t in LAYER_TYPES if t != "add")
        srcs: tuple = (NONE_SRC, *range(i))
        fields = [("type", types), *_LAYER_FIELDS[1:]]
    else:
        srcs = tuple(range(i + 1))
        fields = list(_BRANCH_FIELDS)
    return fields + [("src1", srcs), ("src2", srcs)]


def nni_choices(cfg: SpaceConfig) -> dict[str, tuple]:
    """``label -> values`` of every choice of ``cfg``'s NNI space, in a stable order: the count
    (``num_layers`` / ``num_branches``), then slot by slot ``layer03_channels``, ``branch01_src2`` ..."""
    prefix, _, slots = _slots(cfg)
    out: dict[str, tuple] = {COUNT_LABELS[cfg.kind]: tuple(range(1, slots + 1))}
    for i in range(slots):
        for field, values in _slot_fields(cfg, i):
            out[f"{prefix}{i:02d}_{field}"] = tuple(values)
    return out


def nni_search_space(cfg: SpaceConfig) -> dict[str, dict]:
    """The same choices as an nnictl ``searchSpace`` (``{label: {"_type": "choice", "_value": [...]}}``).

    The ``valid_arch`` constraint has no nnictl form: a tuner sampling this dict independently
    must still check samples with :func:`check_sample` (the EPNAS tuner proposes architectures,
    valid by its masks, and does not sample it)."""
    return {label: {"_type": "choice", "_value": list(values)} for label, values in nni_choices(cfg).items()}


def sample_to_arch(sample: Mapping[str, Any], cfg: SpaceConfig) -> dict:
    """NNI sample (label -> value) -> architecture: the first ``num_layers`` (``num_branches``)
    slots; the other slots' labels may be absent and are ignored.

    A sample outside the space raises :class:`InvalidArchitecture` (a :class:`UserError`, one line):
    a missing label of a live slot (with a close unknown label named, for typos) or a value that is
    not one of its choice's values.  Labels that are not the space's are ignored (they may belong to
    other mutables, e.g. a mutable evaluator's).  The result can still fail :func:`check_arch` (an
    ``add`` without a source, no propagated branch): see :func:`check_sample`."""
    import difflib

    choices = nni_choices(cfg)
    prefix, key, _ = _slots(cfg)

    def value(label: str) -> Any:
        if label not in sample:
            unknown = [k for k in sample if isinstance(k, str) and k not in choices and not k.startswith("__")]
            close = difflib.get_close_matches(label, unknown, n=1)
            hint = f" (is {close[0]!r} a typo of it?)" if close else ""
            raise InvalidArchitecture(f"invalid sample for the {cfg.kind} space: label {label!r} is missing{hint}")
        v, values = sample[label], choices[label]
        if isinstance(v, bool) or v not in values:
            raise InvalidArchitecture(f"invalid sample for the {cfg.kind} space: {label}={v!r} is not one of "
                                      f"{list(values)}")
        return values[values.index(v)]  # the choice's own value (a numpy int becomes a Python int)

    n = value(COUNT_LABELS[cfg.kind])
    units = [{field: value(f"{prefix}{i:02d}_{field}") for field, _ in _slot_fields(cfg, i)} for i in range(n)]
    return {"space": cfg.kind, key: units}


def check_sample(sample: Mapping[str, Any], cfg: SpaceConfig) -> str | None:
    """The reason an NNI sample is not a buildable architecture of ``cfg``'s space, or ``None``."""
    try:
        arch = sample_to_arch(sample, cfg)
    except InvalidArchitecture as exc:
        return str(exc)
    return check_arch(arch, cfg)


def arch_to_sample(arch: Mapping[str, Any], cfg: SpaceConfig) -> dict:
    """Architecture -> NNI sample: the count, its units in the first slots, every other slot at its
    choices' first values.  ``sample_to_arch(arch_to_sample(a, cfg), cfg) == a`` for every valid ``a``."""
    validate_arch(arch, cfg)
    prefix, key, slots = _slots(cfg)
    units = arch[key]
    out: dict[str, Any] = {COUNT_LABELS[cfg.kind]: len(units)}
    for i in range(slots):
        for field, values in _slot_fields(cfg, i):
            out[f"{prefix}{i:02d}_{field}"] = units[i][field] if i < len(units) else values[0]
    return out


def _make_constraint_class():
    from nni.mutable import Constraint, ConstraintViolation

    class ArchConstraint(Constraint):
        """NNI constraint (label ``valid_arch``): the sample decodes to an architecture that builds
        (:func:`check_sample`).  It adds no dimension to the space."""

        def __init__(self, cfg: SpaceConfig, choices: Mapping[str, Any]):
            self.label = CONSTRAINT_LABEL
            self.cfg = cfg
            self.choices = dict(choices)

        def leaf_mutables(self, is_leaf):
            for mutable in self.choices.values():
                yield from mutable.leaf_mutables(is_leaf)
            yield self

        def check_contains(self, sample):
            for mutable in self.choices.values():
                err = mutable.check_contains(sample)
                if err is not None:
                    return err
            reason = check_sample(sample, self.cfg)
            return None if reason is None else ConstraintViolation(reason)

        def grid(self, memo=None, granularity=None):
            memo = {} if memo is None else memo
            if any(label not in memo for label in self.choices):
                # Called alone (GridSearch probes every mutable's grid to tell whether the space is
                # finite): enumerating the choices here would walk the whole product space.
                yield None
                return
            if self.contains(memo):
                yield self.freeze(memo)

        def extra_repr(self) -> str:
            return f"{self.cfg.kind!r}, label={self.label!r}"

    ArchConstraint.__module__, ArchConstraint.__qualname__ = __name__, "ArchConstraint"  # picklable by name
    return ArchConstraint


def _make_space_class():
    from nni.nas.nn.pytorch import ModelSpace

    class EpnasSpace(ModelSpace):
        """The NNI model space: the choices of :func:`nni_choices` (labels ``num_layers``,
        ``layer03_channels``, ``branch01_src2`` ...) and the ``valid_arch`` constraint, so every
        sample NNI's strategies draw builds.  Inside ``nni.nas.space.model_context(sample)`` (or via
        ``space.freeze(sample)``) it builds that architecture; outside it builds ``default_arch``
        (a valid seed network) so the space itself is a usable module."""

        def __init__(self, cfg: SpaceConfig = SpaceConfig(), *, input_shape: Sequence[int] = (3, 32, 32),
                     num_classes: int = 10, default_arch: Mapping[str, Any] | None = None):
            super().__init__()
            from nni.mutable import Categorical
            from nni.nas.space import current_model

            self.cfg = cfg
            self._init_args = dict(input_shape=tuple(input_shape), num_classes=num_classes, default_arch=default_arch)
            # NNI dry-runs a space with every choice at its default, and the constraint must hold
            # there: a cell whose branches all default to propagate=0 would not build.
            # Registration order (the labels stay those of nni_choices): GridSearch varies the last
            # mutable fastest, so the count goes last and slot 0 -- live in every network -- just
            # before it; registered first, the count and the first slots would stay fixed while the
            # grid walks the settings of slots the count ignores (the same network over and over).
            count = COUNT_LABELS[cfg.kind]
            labelled = nni_choices(cfg)
            prefix, _, slots = _slots(cfg)
            order = [label for i in reversed(range(slots)) for label in labelled
                     if label.startswith(f"{prefix}{i:02d}_")] + [count]
            assert len(order) == len(labelled)
            choices = {label: self.add_mutable(Categorical(list(labelled[label]), label=label,
                                                           **({"default": 1} if label.endswith("_propagate") else {})))
                       for label in order}
            self.add_mutable(__getattr__("ArchConstraint")(cfg, choices))
            ctx = current_model()  # None in NNI's dry run (building the space itself)
            if ctx is not None:
                arch = sample_to_arch(ctx, cfg)
            else:
                arch = default_arch or random_arch(cfg, random.Random(0), units=1)
            self.net = build_network(arch, cfg, input_shape=input_shape, num_classes=num_classes)

        def freeze(self, sample: Mapping[str, Any]) -> "EpnasSpace":
            """The network of ``sample``; :class:`InvalidArchitecture` (one line) when it is outside
            the space or does not build."""
            from nni.nas.space import model_context

            validate_arch(sample_to_arch(sample, self.cfg), self.cfg)
            with model_context(dict(sample)):
                return self.__class__(self.cfg, **self._init_args)

        def forward(self, x):
            return self.net(x)

    # picklable by name (NNI's engines other than the sequential one send the space to trials)
    EpnasSpace.__module__, EpnasSpace.__qualname__ = __name__, "EpnasSpace"
    return EpnasSpace


_lazy: dict[str, type] = {}
_FACTORIES = {"EpnasSpace": _make_space_class, "ArchConstraint": _make_constraint_class}


def __getattr__(name: str):
    # ``EpnasSpace`` subclasses NNI's ModelSpace, whose import pulls in pytorch-lightning (seconds);
    # it is created on first access so that the nnictl tuner process, which only needs the
    # encoding, connects to the NNI manager within its 10 s start-up window.
    if name in _FACTORIES:
        if name not in _lazy:
            _lazy[name] = _FACTORIES[name]()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------- feasibility


def intensity_upper_bound(input_shape: Sequence[int]) -> float:
    """No network here exceeds ``H*W/2`` FLOPs/byte: every weight is used at most H*W times per
    sample (2 FLOPs each) and is itself moved once (4 bytes), so FLOPs <= 2*params*H*W and
    bytes >= 4*params."""
    return input_shape[1] * input_shape[2] / 2


def _extreme_archs(cfg: SpaceConfig) -> tuple[dict, dict]:
    if cfg.kind == "layer":
        small = {"space": "layer", "layers": [dict(type="avgpool2d", filter=1, pool=2, channels=16, act="relu",
                                                   src1=-1, src2=-1)]}
        big = {"space": "layer", "layers": [dict(type="conv2d", filter=7, pool=2, channels=256, act="relu",
                                                 src1=-1, src2=-1) for _ in range(cfg.max_layers)]}
        return small, big
    small = {"space": "module", "branches": [dict(type="none-none", filter=1, pool=2, channels=8, src1=0, src2=0,
                                                  propagate=1)]}
    big = {"space": "module", "branches": [dict(type="conv-conv", filter=7, pool=2, channels=32, src1=b, src2=b,
                                                propagate=1) for b in range(cfg.max_branches)]}
    return small, big


def check_constraints_feasible(constraints: Mapping[str, tuple[float | None, float | None]], cfg: SpaceConfig,
                               input_shape: Sequence[int], num_classes: int) -> None:
    """Raise :class:`UserError` (before launching) when no architecture can meet ``constraints``
    (``{"params"|"flops"|"intensity": (lower, upper)}``, ``None`` = unbounded)."""
    small, big = _extreme_archs(cfg)
    lo_cost, hi_cost = arch_cost(small, cfg, input_shape, num_classes), arch_cost(big, cfg, input_shape, num_classes)
    for name, (lo, hi) in constraints.items():
        if lo is not None and hi is not None and lo > hi:
            raise UserError(f"constraint {name}: lower bound {lo:g} is above upper bound {hi:g}")
        if name in ("params", "flops"):
            least, most = getattr(lo_cost, name), getattr(hi_cost, name)
            if hi is not None and hi < least:
                raise UserError(f"constraint {name} <= {hi:g} is unsatisfiable: the smallest {cfg.kind} network "
                                f"for input {tuple(input_shape)} already has {least:,}")
            if lo is not None and lo > 2 * most:
                raise UserError(f"constraint {name} >= {lo:g} is unsatisfiable: {cfg.kind} networks for input "
                                f"{tuple(input_shape)} have at most about {most:,}")
        elif name == "intensity":
            bound = intensity_upper_bound(input_shape)
            if lo is not None and lo > bound:
                raise UserError(f"constraint intensity >= {lo:g} FLOPs/byte is unsatisfiable for input "
                                f"{tuple(input_shape)}: no network exceeds H*W/2 = {bound:g}")
        else:
            raise UserError(f"unknown constraint {name!r}; valid: params, flops, intensity")
