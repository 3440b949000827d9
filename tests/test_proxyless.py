"""The customized ProxylessNAS strategy: estimator, rescaling, export, cost term, toy optimum."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.mutable import frozen_context
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from torch.utils.data import DataLoader, TensorDataset

from search_spaces.errors import UserError
from search_spaces.resnet_scoped import scoped_resnet
from strategies.proxyless import BinaryGateLayer, CompactProxyless, ProxylessConfig, ProxylessSearch, SearchExit


class Zero(nn.Module):
    def forward(self, x):
        return x * 0


class Scramble(nn.Module):
    """A fixed random rank-1 projection: destroys the information the labels need."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("u", torch.randn(d, 1))
        self.register_buffer("v", torch.randn(1, d))

    def forward(self, x):
        return x @ self.u @ self.v / x.shape[1]


class ToySpace(ModelSpace):
    """Labels = argmax of a fixed projection of x: only the identity path keeps the information."""

    def __init__(self, d=8, classes=4):
        super().__init__()
        self.choice = LayerChoice({"zero": Zero(), "identity": nn.Identity(), "scramble": Scramble(d)}, label="block01")
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.choice(x))


def _toy_data(n=512, d=8, classes=4, seed=0):
    """Same labelling function for every seed; ``seed`` draws other inputs (val vs train)."""
    w = torch.randn(d, classes, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    y = (x @ w).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))


def _search(space, **kw):
    cfg = ProxylessConfig(**{"search_epochs": 5, **kw})
    return ProxylessSearch(space, cfg, input_shape=(8,), seed=0)


def test_supernet_built_through_nni_mutation_hooks():
    net = CompactProxyless().mutate_model(ToySpace())
    layers = [m for m in net.modules() if isinstance(m, BinaryGateLayer)]
    assert len(layers) == 1 and layers[0].label == "block01" and layers[0].names == ["zero", "identity", "scramble"]


def test_toy_search_finds_the_known_optimum():
    loader = _toy_data()
    val = _toy_data(seed=2)
    search = _search(ToySpace(), search_epochs=8, arch_lr=0.05)
    for epoch in range(8):
        row = search.run_epoch(epoch, loader, val)
    assert search.export() == {"block01": "identity"}
    probs = search.probs()["block01"]
    assert probs["identity"] > 0.5 > probs["zero"]
    assert row["val_acc"] > 0.6


def test_two_path_gradient_is_the_proxyless_estimator():
    """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the two sampled paths."""
    torch.manual_seed(0)
    ops = {"a": nn.Linear(3, 2), "b": nn.Linear(3, 2), "c": nn.Linear(3, 2)}
    alpha = nn.Parameter(torch.tensor([0.3, -0.2, 0.5]))
    with frozen_context():
        layer = BinaryGateLayer(ops, alpha, "block01")
    layer.sample("arch", torch.Generator().manual_seed(3), "two")
    pair, active = layer._pair, layer._active
    x = torch.randn(4, 3)
    target = torch.randn(4, 2)
    out = layer(x)
    assert torch.allclose(out, ops[layer.names[active]](x))  # forward value = the active path only
    loss = ((out - target) ** 2).sum()
    loss.backward()
    # manual estimator
    p = F.softmax(alpha.detach()[pair], 0)
    dl_dout = 2 * (out.detach() - target)
    dl_dg = torch.stack([(dl_dout * ops[layer.names[i]](x).detach()).sum() for i in pair])
    expected = torch.zeros(3)
    for a, i in enumerate(pair):
        expected[i] = sum(dl_dg[b] * p[b] * (float(a == b) - p[a]) for b in range(2))
    assert torch.allclose(alpha.grad, expected, atol=1e-5)
    assert alpha.grad[[k for k in range(3) if k not in pair][0]] == 0


def test_rescale_keeps_unsampled_probabilities():
    ops = {n: nn.Linear(3, 2) for n in "abcd"}
    alpha = nn.Parameter(torch.tensor([0.1, 0.4, -0.3, 0.2]))
    with frozen_context():
        layer = BinaryGateLayer(ops, alpha, "block01")
    layer.sample("arch", torch.Generator().manual_seed(0), "two")
    before = F.softmax(alpha.detach(), 0).clone()
    out = layer(torch.randn(5, 3)).sum()
    opt = torch.optim.Adam([alpha], lr=0.1)
    out.backward()
    opt.step()
    layer.rescale_pair()
    after = F.softmax(alpha.detach(), 0)
    others = [k for k in range(4) if k not in layer._pair]
    assert torch.allclose(before[others], after[others], atol=1e-6)
    assert not torch.allclose(before[layer._pair], after[layer._pair])


def test_weight_step_runs_only_the_sampled_path():
    calls = {}

    class Counting(nn.Linear):
        def forward(self, x):
            calls[id(self)] = calls.get(id(self), 0) + 1
            return super().forward(x)

    ops = {n: Counting(3, 3) for n in "abc"}
    with frozen_context():
        layer = BinaryGateLayer(ops, nn.Parameter(torch.zeros(3)), "block01")
    layer.sample("weight", torch.Generator().manual_seed(0))
    layer(torch.randn(2, 3)).sum().backward()
    assert sum(calls.values()) == 1
    assert sum(p.grad is not None for op in ops.values() for p in op.parameters()) == 2  # weight+bias of one path


def test_export_is_deterministic_argmax():
    search = ProxylessSearch(scoped_resnet("s", width=0.0625, in_channels=1), ProxylessConfig(search_epochs=1),
                             input_shape=(1, 8, 8), seed=0)
    with torch.no_grad():
        for m in search.layers:
            m._arch_alpha.copy_(torch.tensor([0.0, 0.1, 0.0, 0.0, 2.0, 0.0]))
    assert search.export() == search.export() == {m.label: "k5_leakyrelu" for m in search.layers}


def test_expected_flops_term_gives_alpha_gradients_and_prefers_cheap_kernels():
    space = scoped_resnet("s", width=0.0625, in_channels=1)
    cfg = ProxylessConfig(search_epochs=1, cost_term="flops", cost_weight=1.0)
    search = ProxylessSearch(space, cfg, input_shape=(1, 8, 8), seed=0)
    cost = search.expected_cost()
    cost.backward()
    for m in search.layers:
        g = m._arch_alpha.grad
        assert g is not None and g.abs().sum() > 0
        # gradient descent lowers the k5 logits relative to k3 ones
        assert g[3:].mean() > g[:3].mean()
    assert all((m.candidate_cost[3:] > m.candidate_cost[:3]).all() for m in search.layers)


def test_search_exit_criterion():
    ex = SearchExit(patience=2, entropy_delta=0.01)
    a, b = {"x": "k3"}, {"x": "k5"}
    assert not ex.update(1, a, 1.0)
    assert not ex.update(2, b, 0.9)
    assert not ex.update(3, b, 0.895)   # stable 1
    assert ex.update(4, b, 0.894)       # stable 2 and |dH| < 0.01
    assert ex.exit_epoch == 4
    assert not ex.update(5, b, 0.893)   # fires once


@pytest.mark.parametrize("kw,msg", [
    (dict(search_epochs=0), "search_epochs"),
    (dict(grad_mode="three"), "grad_mode"),
    (dict(cost_term="energy"), "cost_term"),
    (dict(weight_lr=0.0), "weight_lr"),
    (dict(warmup_epochs=5, search_epochs=2), "warmup_epochs"),
])
def test_config_validation(kw, msg):
    with pytest.raises(UserError, match=msg):
        ProxylessConfig(**kw)


def test_warmup_keeps_alpha_fixed():
    loader = _toy_data(n=128)
    search = _search(ToySpace(), search_epochs=2, warmup_epochs=1)
    before = [m._arch_alpha.detach().clone() for m in search.layers]
    search.run_epoch(0, loader, loader)
    assert all(torch.equal(b, m._arch_alpha.detach()) for b, m in zip(before, search.layers))
    search.run_epoch(1, loader, loader)
    assert not all(torch.equal(b, m._arch_alpha.detach()) for b, m in zip(before, search.layers))


def test_usable_as_strategy_in_nni_nas_experiment(tmp_path, monkeypatch):
    """CompactProxyless in NNI's NasExperiment (sequential engine, Lightning loop) finds the toy optimum."""
    from nni.nas.evaluator.pytorch import Classification
    from nni.nas.evaluator.pytorch import DataLoader as NniDataLoader
    from nni.nas.experiment import NasExperiment

    monkeypatch.setenv("HOME", str(tmp_path))  # NNI registers experiments under ~/nni-experiments
    train, val = _toy_data().dataset, _toy_data(seed=2).dataset
    evaluator = Classification(
        train_dataloaders=NniDataLoader(train, batch_size=64, shuffle=True),
        val_dataloaders=NniDataLoader(val, batch_size=64), num_classes=4, max_epochs=8, learning_rate=0.05,
        accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False)
    exp = NasExperiment(ToySpace(), evaluator, CompactProxyless(arc_learning_rate=0.05))
    exp.config.experiment_working_directory = str(tmp_path)
    try:
        exp.run()
        assert exp.export_top_models(formatter="dict") == [{"block01": "identity"}]
    finally:
        exp.stop()
