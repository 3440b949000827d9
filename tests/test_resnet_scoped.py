"""Golden numbers and shapes for the scoped ResNet-50 space (paper 003, Table I)."""
import itertools

import pytest
import torch

from search_spaces import cost
from search_spaces.errors import UserError
from search_spaces.resnet_scoped import (CANDIDATES, STAGE_BLOCKS, STAGE_WIDTHS, baseline_arch, block_labels,
                                         build_resnet, scoped_resnet)

BASELINE = 23_528_522  # torchvision layout, 10 classes (paper: 23.53M)


def test_baseline_parameter_count_imagenet_stem():
    assert cost.count_params(build_resnet({}, "none", stem="imagenet")) == BASELINE


def test_cifar_stem_is_7680_smaller():
    assert cost.count_params(build_resnet({}, "none", stem="cifar")) == BASELINE - (49 - 9) * 3 * 64


@pytest.mark.parametrize("scope,n", [("s", 3), ("m", 9), ("l", 13), ("f", 16)])
def test_scope_block_counts_and_labels_from_deepest(scope, n):
    labels = block_labels(scope)
    assert labels == [f"block{i:02d}" for i in range(1, n + 1)]
    space = scoped_resnet(scope, width=0.0625)
    assert sorted(space.simplify()) == labels
    for mutable in space.simplify().values():
        assert list(mutable.values) == list(CANDIDATES)


def test_block01_is_the_last_block_of_stage4():
    space = scoped_resnet("f", width=0.0625)
    assert space.layer4[-1].label == "block01"
    assert space.layer1[0].label == "block16"


def test_kernel5_adds_16_w2_and_activation_adds_nothing():
    # width 1, stage widths 64..512; block01 is in stage 4 (w=512), block16 in stage 1 (w=64)
    base = cost.count_params(build_resnet(baseline_arch("f"), "f", stem="imagenet"))
    assert base == BASELINE
    for label, w, act in (("block01", 512, "relu"), ("block04", 256, "leakyrelu"), ("block10", 128, "mish"),
                          ("block16", 64, "relu")):
        arch = baseline_arch("f") | {label: f"k5_{act}"}
        assert cost.count_params(build_resnet(arch, "f", stem="imagenet")) - base == 16 * w * w
    arch = baseline_arch("f") | {"block01": "k3_mish", "block16": "k3_leakyrelu"}
    assert cost.count_params(build_resnet(arch, "f", stem="imagenet")) == base


@pytest.mark.parametrize("scope,paper_m", [("s", 23.53), ("m", 24.58), ("l", 23.79), ("f", 25.23)])
def test_paper_searched_models_are_reachable(scope, paper_m):
    """PResNet-50-s/m/l/f (Table I) are architectures of their scope: some count of k=5 blocks
    per searched stage gives the published parameter count (to the paper's 2 decimals)."""
    n_stages = {"s": 1, "m": 2, "l": 3, "f": 4}[scope]
    stages = list(range(4 - n_stages, 4))
    found = None
    for counts in itertools.product(*[range(STAGE_BLOCKS[s] + 1) for s in stages]):
        total = BASELINE + sum(c * 16 * STAGE_WIDTHS[s] ** 2 for c, s in zip(counts, stages))
        if round(total / 1e6, 2) == paper_m:
            found = dict(zip(stages, counts))
            break
    assert found is not None
    # build that architecture for real and check its count
    arch = baseline_arch(scope)
    label_of_stage = {}
    idx = sum(STAGE_BLOCKS)
    for s, nb in enumerate(STAGE_BLOCKS):
        label_of_stage[s] = [f"block{idx - i:02d}" for i in range(nb)]
        idx -= nb
    for s, c in found.items():
        for lb in label_of_stage[s][:c]:
            arch[lb] = "k5_relu"
    assert round(cost.count_params(build_resnet(arch, scope, stem="imagenet")) / 1e6, 2) == paper_m


@pytest.mark.parametrize("scope", ["s", "m", "l", "f"])
@pytest.mark.parametrize("stem,shape", [("cifar", (3, 32, 32)), ("imagenet", (3, 64, 64)), ("cifar", (1, 8, 8))])
def test_shapes_and_costs_of_every_scope(scope, stem, shape):
    arch = {lb: CANDIDATES[i % len(CANDIDATES)] for i, lb in enumerate(block_labels(scope))}
    model = build_resnet(arch, scope, width=0.0625, stem=stem, num_classes=7, in_channels=shape[0])
    out = model(torch.zeros(2, *shape))
    assert out.shape == (2, 7)
    c = cost.profile(model, shape)
    assert c.params == cost.count_params(model) and c.flops > 0 and c.bytes > 4 * c.params
    assert c.intensity == pytest.approx(c.flops / c.bytes)


def test_frozen_model_is_plain_module_without_mutables():
    model = build_resnet(baseline_arch("m"), "m", width=0.0625)
    assert not any(type(m).__name__ == "LayerChoice" for m in model.modules())
    assert model.simplify() == {}


@pytest.mark.parametrize("kwargs,msg", [
    (dict(scope="x"), "unknown scope"),
    (dict(scope="s", width=0), "width must be > 0"),
    (dict(scope="s", width=-1.0), "width must be > 0"),
    (dict(scope="s", stem="vgg"), "unknown stem"),
])
def test_bad_space_arguments(kwargs, msg):
    with pytest.raises(UserError, match=msg):
        scoped_resnet(**kwargs)


def test_build_rejects_mismatched_arch():
    with pytest.raises(UserError, match="does not match scope"):
        build_resnet({"block01": "k3_relu"}, "m")
    with pytest.raises(UserError, match="unknown candidate"):
        build_resnet(baseline_arch("s") | {"block01": "k7_relu"}, "s")
