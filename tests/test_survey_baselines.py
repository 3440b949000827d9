"""The survey's baselines (strategies.survey): cost model, pruning, regularisers, compressors."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from search_spaces import cost as costmodel
from search_spaces.errors import TrialFailed, UserError
from search_spaces.growth_spaces import build_compact, compact_arch, full_arch, make_layout
from strategies.survey import (
    COMPRESSORS,
    PUBLISHED,
    GroupLassoConfig,
    MorphNetCompressor,
    VariationalDropoutCompressor,
    WidthCost,
    group_norms,
    make_compressor,
    prune_channels,
    vd_kl,
)

SHAPE = (3, 16, 16)


def tiny_layout():
    return make_layout("resnet20", width=0.25, stage_blocks=(1, 1, 1), num_classes=4)


def loader(n=64, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, *SHAPE, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float() - 1.5     # a learnable signal
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def random_keep(layout, gen):
    return {g: torch.sort(torch.randperm(n, generator=gen)[: int(torch.randint(1, n + 1, (1,), generator=gen))])[0]
            for g, n in layout.groups.items()}


@pytest.mark.parametrize("family,kw", [
    ("resnet20", dict(width=0.25, stage_blocks=(1, 1, 1))),
    ("vgg16", dict(width=0.0625)),
    ("bottleneck4resnet", dict(width=0.125, stage_blocks=(1, 1, 1, 1))),
    ("plain3net", dict(width=0.25, stage_blocks=(2, 1, 1))),
])
def test_width_cost_equals_cost_model(family, kw):
    layout = make_layout(family, num_classes=4, **kw)
    wc = WidthCost(layout, SHAPE)
    full = build_compact(full_arch(layout))
    assert wc.full_flops == costmodel.count_flops(full, SHAPE)
    assert wc.full_params == costmodel.count_params(full)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        keep = random_keep(layout, gen)
        net = build_compact(compact_arch(layout, {g: k.tolist() for g, k in keep.items()},
                                         [u.name for u in layout.units if u.convs]))
        widths = {g: k.numel() for g, k in keep.items()}
        assert wc.flops(widths) == costmodel.count_flops(net, SHAPE)
        assert wc.params(widths) == costmodel.count_params(net)
    # wider than the layout (MorphNet's expansion) is still exact
    wide = {g: n + 3 for g, n in layout.groups.items()}
    import dataclasses
    net = build_compact(full_arch(dataclasses.replace(layout, groups=wide)))
    assert wc.flops(wide) == costmodel.count_flops(net, SHAPE)


def _randomise(net, gen):
    with torch.no_grad():
        for mod in net.convs.values():
            bn = mod[1]
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)


def test_prune_channels_is_exact_for_dead_channels():
    layout = tiny_layout()
    net = build_compact(full_arch(layout))
    gen = torch.Generator().manual_seed(3)
    _randomise(net, gen)
    keep = random_keep(layout, gen)
    with torch.no_grad():     # kill the dropped channels: gamma = beta = 0 in every producer
        for g, prods in layout.producers().items():
            dead = torch.ones(layout.groups[g], dtype=torch.bool)
            dead[keep[g]] = False
            for p in prods:
                net.convs[p][1].weight[dead] = 0
                net.convs[p][1].bias[dead] = 0
    small, arch = prune_channels(net, keep)
    assert arch["widths"] == {g: k.numel() for g, k in keep.items()}
    assert arch["channels"] == {g: k.tolist() for g, k in keep.items()}
    x = torch.randn(5, *SHAPE, generator=gen)
    net.eval(), small.eval()
    torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)
    # a bool mask works the same; an empty group is a user error
    masks = {g: torch.zeros(layout.groups[g], dtype=torch.bool).index_fill_(0, k, True) for g, k in keep.items()}
    torch.testing.assert_close(prune_channels(net, masks)[0].eval()(x), small(x))
    with pytest.raises(UserError, match="keeps no channel"):
        prune_channels(net, {"stage1": torch.tensor([], dtype=torch.long)})
    with pytest.raises(UserError, match="unknown channel groups"):
        prune_channels(net, {"nope": torch.tensor([0])})


def test_group_lasso_norm_has_the_square_root():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5, 3, 3, 3, generator=gen)
    fn, cn = group_norms(w)
    for n in range(5):
        assert float(fn[n]) == pytest.approx(math.sqrt(sum(float(v) ** 2 for v in w[n].flatten())), rel=1e-5)
    for c in range(3):
        assert float(cn[c]) == pytest.approx(math.sqrt(sum(float(v) ** 2 for v in w[:, c].flatten())), rel=1e-5)
    fn2, _ = group_norms(2 * w)
    torch.testing.assert_close(fn2, 2 * fn)        # a norm, not a sum of squares
    # the compressor's regulariser is the sum of these over every conv (no input-channel term on the stem)
    for bn_in_group in (False, True):
        comp = make_compressor("group_lasso", tiny_layout(), target_flops=10**5, input_shape=SHAPE, seed=0,
                               epochs=2, config_overrides={"bn_in_group": bn_in_group})
        with torch.no_grad():
            for mod in comp.net.convs.values():
                mod[1].bias.uniform_(-1, 1)
        reg, lam = comp._reg(0.0)
        hand = 0.0
        for c in comp.layout.convs():
            wt = comp.net.convs[c.name][0].weight.detach()
            bn = comp.net.convs[c.name][1]
            extra = (bn.weight.detach() ** 2 + bn.bias.detach() ** 2) if bn_in_group else torch.zeros(wt.shape[0])
            hand += sum(math.sqrt(float((wt[n] ** 2).sum() + extra[n])) for n in range(wt.shape[0]))
            if c.cin != "input":
                hand += sum(math.sqrt(float((wt[:, i] ** 2).sum())) for i in range(wt.shape[1]))
        assert float(reg.detach()) == pytest.approx(hand, rel=1e-5)
        assert lam == GroupLassoConfig().strength
    reg.backward()                                   # finite gradients even for a zero group
    with torch.no_grad():
        comp.net.convs["stem"][0].weight[0] = 0
    comp.net.zero_grad()
    comp._reg(0.0)[0].backward()
    assert torch.isfinite(comp.net.convs["stem"][0].weight.grad).all()


def test_vd_kl_matches_the_paper_formula():
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    for la in (-8.0, -3.0, 0.0, 1.5, 3.0, 8.0):
        neg = k1 / (1 + math.exp(-(k2 + k3 * la))) - 0.5 * math.log1p(math.exp(-la)) - k1
        assert float(vd_kl(torch.tensor(la, dtype=torch.float64))) == pytest.approx(-neg, rel=1e-9, abs=1e-12)
    v = vd_kl(torch.linspace(-8, 8, 50))
    assert (v[1:] < v[:-1]).all() and float(vd_kl(torch.tensor(30.0))) == pytest.approx(0, abs=1e-6)


def test_vd_layer_log_alpha_and_drop_rule():
    comp = make_compressor("variational_dropout", tiny_layout(), target_flops=10**5, input_shape=SHAPE, seed=0,
                           epochs=2)
    conv = comp.net.convs["stem"][0]
    with torch.no_grad():
        conv.log_sigma2[0] = 20.0                     # filter 0 fully dropped
    la = conv.log_alpha()
    hand = torch.clamp(conv.log_sigma2 - torch.log(conv.weight ** 2 + 1e-8), -8, 8)
    torch.testing.assert_close(la, hand)
    assert float(la.detach().max()) <= 8 and (conv.sparse_weight()[0] == 0).all()
    assert float(comp._scores()["stage1"][0]) <= -1 / 3     # stem is one of stage1's 3 producers


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_compressor_trains_and_exports(method):
    layout = tiny_layout()
    full = WidthCost(layout, SHAPE).full_flops
    target = full // 3
    comp = make_compressor(method, layout, target_flops=target, input_shape=SHAPE, seed=0, epochs=2)
    data = loader()
    rows = [comp.train_epoch(e, data) for e in range(2)]
    for r in rows:
        assert {"loss", "reg", "strength", "est_flops", "alive", "time"} <= set(r)
        assert all(math.isfinite(float(v)) for v in r.values())
    net, arch, info = comp.export()
    flops = costmodel.count_flops(net, SHAPE)
    assert info["flops"] == flops and info["params"] == costmodel.count_params(net)
    assert info["deviation"] == pytest.approx(flops / target - 1)
    assert info["reached"] == (flops <= target)
    assert info["method"] == method and info["target_flops"] == target
    assert info["reinit"] is (method == "morphnet")
    assert flops == WidthCost(layout, SHAPE).flops(arch["widths"])
    if method == "morphnet":
        assert info["reached"] and info["deviation"] > -0.25     # expansion comes back near the target
    out = net.eval()(torch.randn(2, *SHAPE))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    rebuilt = build_compact(arch)
    rebuilt.load_state_dict(net.state_dict())


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_state_dict_resume_gives_the_same_next_epoch(method):
    layout = tiny_layout()
    kw = dict(target_flops=WidthCost(layout, SHAPE).full_flops // 3, input_shape=SHAPE, seed=5, epochs=3)
    data = loader(n=32)
    a = make_compressor(method, layout, **kw)
    a.train_epoch(0, data)
    state = copy.deepcopy(a.state_dict())
    ra = a.train_epoch(1, data)
    b = make_compressor(method, layout, **kw)
    b.load_state_dict(state)
    rb = b.train_epoch(1, data)
    ra.pop("time"), rb.pop("time")
    assert ra == rb
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_vd_threshold_chosen_toward_target():
    layout = tiny_layout()
    wc = WidthCost(layout, SHAPE)
    comp = make_compressor("variational_dropout", layout, target_flops=wc.full_flops - 1, input_shape=SHAPE,
                           seed=0, epochs=2)
    with torch.no_grad():       # drop 10 of s3u0_c1's 16 filters entirely
        comp.net.convs["s3u0_c1"][0].log_sigma2[:10] = 20.0
    net, arch, info = comp.export()
    assert info["reached"] and arch["widths"]["s3u0_c1"] == layout.groups["s3u0_c1"] - 10
    assert info["threshold"] < 1.0 and info["threshold"] >= VariationalDropoutCompressor.config_cls().min_sparsity
    # a target that needs more than the dropped filters: closest export, reached=False
    comp2 = make_compressor("variational_dropout", layout, target_flops=wc.full_flops // 10, input_shape=SHAPE,
                            seed=0, epochs=2)
    net2, arch2, info2 = comp2.export()
    assert not info2["reached"] and arch2["widths"] == dict(layout.groups)
    assert info2["deviation"] == pytest.approx(wc.full_flops / (wc.full_flops // 10) - 1)


def test_group_lasso_controller_and_fit():
    layout = tiny_layout()
    full = WidthCost(layout, SHAPE).full_flops
    comp = make_compressor("group_lasso", layout, target_flops=full // 3, input_shape=SHAPE, seed=0, epochs=2)
    lam0 = comp.lam
    comp.train_epoch(0, loader(n=16))
    assert comp.lam == pytest.approx(lam0 * 1.5)        # nothing pruned yet -> stronger
    fit = make_compressor("group_lasso", layout, target_flops=full // 3, input_shape=SHAPE, seed=0, epochs=2,
                          config_overrides={"fit_threshold": True, "controller": False})
    net, _, info = fit.export()
    assert info["reached"] and info["threshold"] > 1e-2 and info["flops"] <= full // 3


def test_morphnet_expansion_is_maximal_and_regulariser_is_bilinear():
    layout = tiny_layout()
    wc = WidthCost(layout, SHAPE)
    comp = make_compressor("morphnet", layout, target_flops=wc.full_flops // 3, input_shape=SHAPE, seed=0, epochs=2)
    assert isinstance(comp, MorphNetCompressor)
    # all gammas 1: the relaxation equals 2 x FLOPs of the convs between groups + stem and head terms
    reg, strength = comp._reg(0.0)
    hand = wc.head_coef * layout.groups[layout.head]
    for _, ci, co, coef in wc.conv_coefs():
        hand += coef * layout.groups[co] * (1 if ci == "input" else 2 * layout.groups[ci])
    assert float(reg.detach()) * wc.full_flops == pytest.approx(hand, rel=1e-6)
    half = {g: max(1, n // 2) for g, n in layout.groups.items()}
    m, widths = comp.expand_widths(half)
    assert wc.flops(widths) <= comp.target_flops
    bigger = {g: max(1, int(round((m + 1e-3) * w))) for g, w in half.items()}
    assert bigger == widths or wc.flops(bigger) > comp.target_flops


def test_bad_input_is_a_user_error():
    layout = tiny_layout()
    full = WidthCost(layout, SHAPE).full_flops
    kw = dict(input_shape=SHAPE, seed=0, epochs=2)
    for t in (0, -5, full + 1):
        with pytest.raises(UserError, match="target_flops"):
            make_compressor("morphnet", layout, target_flops=t, **kw)
    with pytest.raises(UserError, match="genetic"):
        make_compressor("genetic", layout, target_flops=full // 3, **kw)
    with pytest.raises(UserError, match="strenght"):
        make_compressor("group_lasso", layout, target_flops=full // 3, config_overrides={"strenght": 1}, **kw)
    with pytest.raises(UserError, match="min_sparsity"):
        make_compressor("variational_dropout", layout, target_flops=full // 3,
                        config_overrides={"min_sparsity": 1.5}, **kw)
    with pytest.raises(UserError, match="epochs"):
        make_compressor("morphnet", layout, target_flops=full // 3, input_shape=SHAPE, seed=0, epochs=0)
    comp = make_compressor("group_lasso", layout, target_flops=full // 3, **kw)
    x, y = next(iter(loader(n=8)))
    with pytest.raises(TrialFailed, match="non-finite"):
        comp.train_epoch(0, [(x * float("nan"), y)])


def test_published_rows():
    methods = {"baseline", "group_lasso", "morphnet", "variational_dropout", "generative_synthesis"}
    assert {m for _, m in PUBLISHED} == methods
    assert len(PUBLISHED) == 20 and all(r["published"] for r in PUBLISHED.values())
    assert PUBLISHED[("cifar10/resnet32", "morphnet")]["mflops"] == 46.280
    # targets were one third of the baseline
    for key in ("cifar10/resnet32", "cifar100/resnet50"):
        assert PUBLISHED[(key, "group_lasso")]["mflops"] == pytest.approx(PUBLISHED[(key, "baseline")]["mflops"] / 3,
                                                                          rel=0.05)


@pytest.mark.parametrize("method", ["group_lasso", "variational_dropout"])
def test_export_keeping_everything_matches_the_trained_net(method):
    layout = tiny_layout()
    full = WidthCost(layout, SHAPE).full_flops
    comp = make_compressor(method, layout, target_flops=full, input_shape=SHAPE, seed=0, epochs=2,
                           config_overrides={"controller": False} if method == "group_lasso" else {})
    comp.train_epoch(0, loader(n=32))
    net, arch, info = comp.export()
    assert info["reached"] and info["deviation"] == 0 and arch["widths"] == dict(layout.groups)
    x = torch.randn(4, *SHAPE)
    comp.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), comp.net(x))
