"""ResNet-50 with a *search scope* of searchable *unit blocks* (NNI model space).

Paper: "Search Space Adaptation for Differentiable Neural Architecture Search in Image
Classification" (``../shared/seeds/003_364944a1cb8aa754.txt``), Sec. III:

* **search unit block** - a ResNet-50 bottleneck whose spatial conv kernel is chosen from
  {3, 5} and whose activation (after conv1, after conv2 and after the residual add) is chosen
  from {ReLU, LeakyReLU, Mish}: one NNI ``LayerChoice`` over the 6 full candidate blocks.
* **search scope** - ResNet-50's four stages (3-4-6-3 bottlenecks, widths 64-128-256-512) are
  grouped by channel count; scope ``s`` replaces the bottlenecks of the deepest stage, ``m`` the
  deepest two, ``l`` three and ``f`` all four (deep-to-shallow).  Blocks outside the scope stay
  plain ReLU/3x3 bottlenecks.

Labels are stable and numbered from the deepest block: ``block01`` is the last bottleneck of
stage 4, ``block16`` the first of stage 1, whatever the scope.  Candidate names are
``k{kernel}_{act}`` (``k3_relu`` ... ``k5_mish``).

Stems: ``cifar`` (3x3 conv, stride 1, no max-pool; for 32x32 and smaller inputs) and
``imagenet`` (torchvision's 7x7/2 conv + 3x3/2 max-pool; the paper resizes random crops to a
larger size that was lost in extraction).  Golden numbers: the plain baseline with the
``imagenet`` stem, width 1 and 10 classes has 23,528,522 parameters (paper Table I: 23.53M);
the ``cifar`` stem has 7,680 fewer (3x3 instead of 7x7 stem conv).  A k=5 candidate in a stage of
bottleneck width w adds exactly 16*w^2 parameters (25-9 per weight of a w->w conv); an
activation choice adds none.

The module reads like torchvision's ``resnet.py``: helpers, the block, the model, builders.
"""
from __future__ import annotations

import itertools
from typing import Mapping

import torch
import torch.nn as nn
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.space import model_context

from .errors import UserError

__all__ = [
    "SCOPES",
    "KERNELS",
    "ACTIVATIONS",
    "CANDIDATES",
    "STAGE_BLOCKS",
    "Bottleneck",
    "ScopedResNet",
    "block_labels",
    "scoped_resnet",
    "build_resnet",
    "baseline_arch",
    "parse_candidate",
]

SCOPES = {"s": 1, "m": 2, "l": 3, "f": 4}  # number of stages searched, counted from the deepest
KERNELS = (3, 5)
ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "mish": nn.Mish}
CANDIDATES = tuple(f"k{k}_{a}" for k, a in itertools.product(KERNELS, ACTIVATIONS))
STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet-50
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEMS = ("cifar", "imagenet")


def parse_candidate(name: str) -> tuple[int, str]:
    """``'k5_mish'`` -> ``(5, 'mish')``."""
    k, act = name.split("_", 1)
    kernel = int(k[1:])
    if kernel not in KERNELS or act not in ACTIVATIONS:
        raise ValueError(f"unknown candidate {name!r}; valid: {', '.join(CANDIDATES)}")
    return kernel, act


def _check_scope(scope: str) -> int:
    if scope not in SCOPES and scope != "none":
        raise UserError(f"unknown scope {scope!r}; valid scopes: s, m, l, f (or none for the plain baseline)")
    return SCOPES.get(scope, 0)


def block_labels(scope: str, stage_blocks: tuple[int, ...] = STAGE_BLOCKS) -> list[str]:
    """Labels of the searchable blocks in ``scope``, deepest first (``block01`` ...)."""
    n_stages = _check_scope(scope)
    n = sum(stage_blocks[len(stage_blocks) - n_stages:])
    return [f"block{i:02d}" for i in range(1, n + 1)]


def _scaled(width: float, c: int) -> int:
    return max(1, int(round(c * width)))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3x3, "ResNet v1.5") with a chosen
    spatial kernel and activation."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 kernel: int = 3, act: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.act = ACTIVATIONS[act]()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))


class ScopedResNet(ModelSpace):
    """ResNet-50 model space with the bottlenecks inside ``scope`` as ``LayerChoice`` unit blocks.

    ``scope='none'`` gives the plain baseline (no mutables).  Build a fixed network with
    :func:`build_resnet` (an ``nni.nas.space.model_context`` around this constructor, so only
    the chosen candidate is ever instantiated).
    """

    def __init__(self, scope: str = "s", *, num_classes: int = 10, width: float = 1.0, stem: str = "cifar",
                 in_channels: int = 3, stage_blocks: tuple[int, ...] = STAGE_BLOCKS):
        super().__init__()
        n_search = _check_scope(scope)
        if not width > 0:
            raise UserError(f"width must be > 0, got {width}")
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
        if len(stage_blocks) != 4 or any(b < 1 for b in stage_blocks):
            raise UserError(f"stage_blocks must be 4 positive integers, got {stage_blocks}")
        self.scope = scope
        inplanes = _scaled(width, 64)
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, inplanes, 3, padding=1, bias=False), nn.BatchNorm2d(inplanes), nn.ReLU())
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, inplanes, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(inplanes),
                nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        total = sum(stage_blocks)
        first_searched_stage = 4 - n_search
        stages = []
        index = 0  # global block index, shallow to deep
        for s, (n_blocks, base) in enumerate(zip(stage_blocks, STAGE_WIDTHS)):
            planes = _scaled(width, base)
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (b == 0 and s > 0) else 1
                label = f"block{total - index:02d}"
                if s >= first_searched_stage:
                    block = LayerChoice(
                        {c: Bottleneck(inplanes, planes, stride, _downsample(inplanes, planes * EXPANSION, stride),
                                       *parse_candidate(c)) for c in CANDIDATES},
                        label=label)
                else:
                    block = Bottleneck(inplanes, planes, stride, _downsample(inplanes, planes * EXPANSION, stride))
                blocks.append(block)
                inplanes = planes * EXPANSION
                index += 1
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def scoped_resnet(scope: str, **kwargs) -> ScopedResNet:
    """The search space (a ``ModelSpace`` with one ``LayerChoice`` per unit block in scope)."""
    return ScopedResNet(scope, **kwargs)


def baseline_arch(scope: str) -> dict[str, str]:
    """The plain ResNet-50 expressed as an architecture of ``scope`` (3x3 kernels, ReLU)."""
    return {label: "k3_relu" for label in block_labels(scope)}


def build_resnet(arch: Mapping[str, str], scope: str, **kwargs) -> nn.Module:
    """A fixed, plain ``nn.Module`` for ``arch`` (labels -> candidate names) in ``scope``.

    Only the chosen candidate of every block is constructed (NNI's ``model_context``).
    """
    labels = block_labels(scope)
    missing = [lb for lb in labels if lb not in arch]
    extra = [lb for lb in arch if lb not in labels]
    if missing or extra:
        raise UserError(f"architecture does not match scope {scope!r}: missing {missing}, unexpected {extra}")
    for lb in labels:
        if arch[lb] not in CANDIDATES:
            raise UserError(f"{lb}: unknown candidate {arch[lb]!r}; valid: {', '.join(CANDIDATES)}")
    with model_context(dict(arch)):
        return ScopedResNet(scope, **kwargs)
