"""Layout nets as width/skip choice spaces: exact export FLOPs, skip placement, a FLOPs-target search."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.growth_spaces import build_compact, make_layout
from search_spaces.layout_choice import (arch_flops, baseline_choices, build_choice_net, candidate_names,
                                         choice_labels, choice_space, choices_to_arch, copy_chosen_weights)
from strategies.proxyless import ProxylessConfig, ProxylessSearch

SHAPE = (3, 16, 16)


def _small(**kw):
    return make_layout("resnet20", width=0.25, stage_blocks=(2, 2, 2), num_classes=4, **kw)


def _random_choices(layout, seed):
    g = torch.Generator().manual_seed(seed)
    return {label: names[int(torch.randint(len(names), (1,), generator=g))]
            for label, names in candidate_names(layout).items()}


def test_labels_candidates_and_skip_only_where_shape_is_kept():
    layout = make_layout("resnet20", stage_blocks=(5, 5, 5))  # ResNet-32
    names = candidate_names(layout)
    assert choice_labels(layout) == [u.name for u in layout.units] == list(names)
    for u in layout.units:
        assert names[u.name][:3] == ["w100", "w50", "w25"]
        assert ("skip" in names[u.name]) == (not u.changes_shape)
    assert [lb for lb in names if "skip" not in names[lb]] == ["s2u0", "s3u0"]  # stride-2 stage starts
    space = choice_space(layout, allow_skip=False)
    assert all(space.units[lb].branch.names == ["w100", "w50", "w25"] for lb in names)
    with pytest.raises(UserError, match="skip"):
        choices_to_arch(layout, {**baseline_choices(layout), "s2u0": "skip"})


@pytest.mark.parametrize("family,kw,shape", [
    ("resnet20", dict(width=0.25, stage_blocks=(2, 2, 2), num_classes=4), SHAPE),
    ("bottleneck4resnet", dict(width=0.125, stage_blocks=(1, 2, 1, 1), num_classes=3), (3, 32, 32)),
])
def test_rebuilt_arch_has_the_chosen_paths_flops_and_outputs(family, kw, shape):
    layout = make_layout(family, **kw)
    space = choice_space(layout)
    search = ProxylessSearch(space, ProxylessConfig(search_epochs=1), input_shape=shape, seed=0)
    base = arch_flops(layout, baseline_choices(layout), shape)
    assert base == costmodel.count_flops(build_compact(choices_to_arch(layout, baseline_choices(layout))), shape)
    x = torch.randn(2, *shape)
    for seed in range(4):
        choices = _random_choices(layout, seed)
        arch = choices_to_arch(layout, choices)
        net = build_compact(arch)
        fixed = build_choice_net(layout, choices)
        flops = costmodel.count_flops(net, shape)
        assert flops == arch_flops(layout, choices, shape) == costmodel.count_flops(fixed, shape)
        assert search.arch_cost(choices) == {"params": costmodel.count_params(net), "flops": flops}
        assert flops <= base
        assert sorted(arch["active_units"]) == sorted(lb for lb, c in choices.items() if c != "skip")
        copy_chosen_weights(fixed, choices, net)
        fixed.eval(), net.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), fixed(x), rtol=0, atol=1e-6)
        # the one-shot supernet holds the same candidates: its weights copy too
        copy_chosen_weights(search.supernet, choices, build_compact(arch))


def test_inner_widths_keep_the_first_channels():
    layout = _small()
    arch = choices_to_arch(layout, {**baseline_choices(layout), "s3u1": "w25", "s1u1": "skip"})
    assert arch["channels"]["s3u1_c1"] == [0, 1, 2, 3]          # 16 * 0.25
    assert arch["channels"]["stage3"] == list(range(16))        # stage groups stay full
    assert "s1u1" not in arch["active_units"] and "s1u0" in arch["active_units"]


@pytest.mark.parametrize("kw,msg", [
    (dict(ratios=(0.5, 0.25)), "first ratio"),
    (dict(ratios=(1.0, 0.25, 0.5)), "decreasing"),
    (dict(ratios=(1.0, 0.333)), "whole percentage"),
    (dict(ratios=(1.0, 0.0)), r"\(0, 1\]"),
    (dict(ratios=(1.0, 1.5)), r"\(0, 1\]"),
    (dict(ratios=()), "at least one"),
])
def test_bad_ratios(kw, msg):
    with pytest.raises(UserError, match=msg):
        choice_space(_small(), **kw)


def test_bad_layouts_and_choices():
    with pytest.raises(UserError, match="residual families"):
        choice_space(make_layout("plain3net", stage_blocks=(1, 1, 1)))
    with pytest.raises(UserError, match="Layout"):
        choice_space("resnet20")
    layout = _small()
    good = baseline_choices(layout)
    with pytest.raises(UserError, match="missing"):
        choices_to_arch(layout, {k: v for k, v in good.items() if k != "s1u0"})
    with pytest.raises(UserError, match="unexpected"):
        choices_to_arch(layout, {**good, "s9u9": "w100"})
    with pytest.raises(UserError, match="unknown candidate"):
        choices_to_arch(layout, {**good, "s1u0": "w150"})
    with pytest.raises(UserError, match="not in this space"):
        build_choice_net(layout, {**good, "s1u0": "w75"})


def test_cost_target_config_and_penalty():
    with pytest.raises(UserError, match="cost_target"):
        ProxylessConfig(cost_target=0.3)                      # cost_term none
    with pytest.raises(UserError, match="cost_target"):
        ProxylessConfig(cost_term="flops", cost_target=0.0)
    layout = _small()
    with pytest.raises(UserError, match="cheapest"):
        ProxylessSearch(choice_space(layout), ProxylessConfig(cost_term="flops", cost_weight=1.0, cost_target=0.05),
                        input_shape=SHAPE, seed=0)
    s = ProxylessSearch(choice_space(layout), ProxylessConfig(cost_term="flops", cost_weight=1.0, cost_target=0.25),
                        input_shape=SHAPE, seed=0)
    # E[FLOPs] = fixed part + every block's probability-weighted candidate FLOPs, over the baseline's
    base = arch_flops(layout, baseline_choices(layout), SHAPE)
    probs = s.probs()
    expected = s._fixed_flops + sum(p * f for lb, v in s.candidate_flops.items()
                                    for p, f in zip(probs[lb].values(), v))
    assert float(s.expected_cost_fraction().detach()) == pytest.approx(expected / base, rel=1e-5)
    assert float(s.cost_penalty().detach()) == pytest.approx(expected / base / 0.25 - 1, rel=1e-5)
    s.cost_penalty().backward()
    assert all(m._arch_alpha.grad is not None and m._arch_alpha.grad.abs().sum() > 0 for m in s.layers)
    # inside the budget the hinge is zero and gives no gradient
    loose = ProxylessSearch(choice_space(layout), ProxylessConfig(cost_term="flops", cost_weight=1.0, cost_target=0.9),
                            input_shape=SHAPE, seed=0)
    assert float(loose.cost_penalty()) == 0.0


def _data(n, seed):
    """4 classes, each a fixed random template plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    templates = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(7))
    x = torch.randn(n, *SHAPE, generator=g) + 0.7 * templates[y]
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_search_with_flops_target_lands_at_or_below_the_target():
    """cost_target 1/3, as in the survey's comparison.  Both checks can fail: with this seed and no
    cost term the search ends at E[FLOPs] = 0.52 of the baseline and exports 0.37 (> 1.1/3); the
    paper-style linear term (cost_weight 10 or 1, no target) drives E[FLOPs] to 0.20 / 0.24, below
    the 0.7/3 floor, instead of holding it at the target.  The exported argmax undershoots here
    (about 0.14-0.18): alpha is still soft after 6 epochs (see strategies/proxyless.py)."""
    layout = _small()
    target = 1 / 3
    cfg = ProxylessConfig(search_epochs=6, arch_lr=0.05, cost_term="flops", cost_weight=10.0, cost_target=target)
    search = ProxylessSearch(choice_space(layout), cfg, input_shape=SHAPE, seed=0)
    train, val = _data(256, 0), _data(128, 1)
    for epoch in range(cfg.search_epochs):
        row = search.run_epoch(epoch, train, val)
    arch = search.export()
    base = arch_flops(layout, baseline_choices(layout), SHAPE)
    flops = arch_flops(layout, arch, SHAPE)
    assert flops == row["flops"]
    assert flops <= 1.1 * target * base
    assert 0.7 * target <= float(search.expected_cost_fraction().detach()) <= 1.05 * target
