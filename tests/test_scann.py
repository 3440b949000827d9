"""SCANN: the feed-forward graph space, the grow/prune operations, schemes, Algorithm 2, the trial.

Fast and seeded.  Paper: ``shared/seeds/002_d08e71b4be716ba4.txt``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from experiments import nni_bridge
from experiments.config import build_config
from experiments.errors import UserError, exit_on_error
from experiments.data import load_tabular_dataset
from experiments.harness import execute
from experiments.methods.scann import ScannTrialConfig, run as scann_run
from search_spaces import cost
from search_spaces.feedforward import (
    FeedForwardNet,
    FeedForwardSpec,
    PrunedFeedForward,
    split_groups,
    synthesis_mutables,
    synthesis_search_space,
)
from search_spaces.lenet import ImageScannModel, LeNet5, LeNet5Features
from strategies.scann import (
    SCHEME_PRESETS,
    Checkpoint,
    ScannConfig,
    ScannSynthesis,
    TensorData,
    at_min_ratio,
    cv_choice,
    network_cost,
    pooled_se,
    seed_network,
    synthesize,
    train_mlp,
)
from strategies.scann.operations import (
    connection_scores,
    full_growth,
    grow_connections,
    grow_neurons,
    install_mask_hook,
    make_optimizer,
    prune_connections,
)
from strategies.training import TensorLoader, train_epoch

ROOT = Path(__file__).resolve().parents[1]


def one_line_user_error(fn, match: str):
    with pytest.raises(UserError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return info


def random_net(seed=0, groups=(4, 3, 5), keep=0.35, mlp=False, inputs=6, outputs=3):
    g = torch.Generator().manual_seed(seed)
    net = FeedForwardNet(FeedForwardSpec(num_inputs=inputs, num_outputs=outputs, groups=groups, mlp=mlp,
                                         wiring="dense"), generator=g)
    with torch.no_grad():
        net.mask &= torch.rand(net.mask.shape, generator=g) < keep
        net.bias.copy_(torch.rand(net.bias.shape, generator=g))  # positive: constant neurons matter
    net.apply_mask_()
    return net


def toy_data(n, seed, features=8):
    """Label depends on features 0 and 1 only: the known optimum uses just those inputs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, features, generator=g)
    return X, ((X[:, 0] + X[:, 1]) > 1).long()


def toy_split(seed=0):
    Xtr, ytr = toy_data(512, seed)
    Xva, yva = toy_data(256, 100 + seed)
    Xte, yte = toy_data(256, 200 + seed)
    return TensorData(Xtr, ytr, Xva, yva, Xte, yte)


def train(net, opt, data, epochs, generator):
    loader = TensorLoader(data.X_train, data.y_train, batch_size=64, generator=generator)
    for _ in range(epochs):
        train_epoch(net, loader, opt)


def optimizer_settings(kind, **kw):
    """A resolved optimizer config for the operations' own tests."""
    return ScannConfig.for_scheme("B", baseline_neurons=12, optimizer=kind, **kw)


# --------------------------------------------------------------------------- the space


def test_allowed_connections_general_vs_mlp():
    net = FeedForwardNet(FeedForwardSpec(num_inputs=2, num_outputs=1, groups=(1, 1, 1), wiring="dense"))
    # rows h0 h1 h2 y; cols x0 x1 h0 h1 h2: any earlier layer feeds any later one
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(net.allowed(), expected)
    assert torch.equal(net.mask, expected)
    mlp = FeedForwardNet(FeedForwardSpec(num_inputs=2, num_outputs=1, groups=(1, 1, 1), mlp=True, wiring="dense"))
    expected_mlp = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(mlp.allowed(), expected_mlp)
    assert net.pair_mask(0, 4).shape == (1, 2) and net.pair_mask(1, 3).shape == (1, 1)


def test_depth_emerges_from_wiring_fig4():
    """Three hidden neurons form one, two or three hidden layers depending on the wiring (Fig. 4)."""
    def net_with(edges):
        net = FeedForwardNet(FeedForwardSpec(num_inputs=1, num_outputs=1, groups=(1, 1, 1), wiring="empty"))
        with torch.no_grad():
            net.bias.zero_()
            for r, c in edges:  # (row, col): rows h0 h1 h2 y, cols x h0 h1 h2
                net.mask[r, c] = True
                net.weight[r, c] = 1.0
        return net

    parallel = net_with([(0, 0), (1, 0), (2, 0), (3, 1), (3, 2), (3, 3)])
    two = net_with([(0, 0), (1, 0), (2, 1), (2, 2), (3, 3)])
    chain = net_with([(0, 0), (1, 1), (2, 2), (3, 3), (3, 1)])  # plus one skip h0 -> y
    assert (parallel.depth, two.depth, chain.depth) == (1, 2, 3)
    assert chain.neuron_depths().tolist() == [1, 2, 3]
    assert chain.skip_connections() == 1 and parallel.skip_connections() == 0
    x = torch.tensor([[2.0]])
    assert float(chain(x).detach()) == pytest.approx(2.0 + 2.0)  # relu chain of identities + skip


def test_forward_equals_explicit_neuron_by_neuron_evaluation():
    net = random_net(1)
    x = torch.randn(7, 6)
    w, b = net.effective_weight().detach(), net.bias.detach()
    D, H = 6, net.num_hidden
    nodes = torch.cat([x, torch.zeros(7, H)], 1)
    for h in range(H):
        nodes[:, D + h] = torch.relu(nodes @ w[h] + b[h])
    ref = nodes @ w[H:].T + b[H:]
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_exports_equal_masked_model_and_costs_count_biases():
    net = random_net(2)
    x = torch.randn(32, 6)
    y = net(x).detach()
    clean = net.cleaned()
    assert clean.num_hidden < net.num_hidden  # some neurons lost one side at keep=0.35
    assert (clean(x) - y).abs().max() < 1e-5  # removal (with constant folding) keeps the function
    pruned = clean.to_pruned()
    assert (pruned(x) - y).abs().max() < 1e-5
    rebuilt = PrunedFeedForward(6, pruned.shapes)
    rebuilt.load_state_dict(pruned.state_dict())
    assert (rebuilt(x) - y).abs().max() < 1e-5
    sparse = clean.to_sparse()
    assert (sparse(x) - y).abs().max() < 1e-5
    params, flops = network_cost(net)
    assert params == clean.connections + clean.num_hidden + 3 == cost.count_params(sparse)
    assert flops == 2 * clean.connections == cost.count_flops(sparse, (6,))


def test_dense_mlp_counts_match_torch_linear_stack():
    net = FeedForwardNet(FeedForwardSpec(num_inputs=30, num_outputs=2, groups=(64,), mlp=True, wiring="mlp"))
    ref = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2))
    params, flops = network_cost(net)
    assert params == cost.count_params(ref) == 30 * 64 + 64 + 64 * 2 + 2 == 2114
    assert flops == cost.count_flops(ref, (30,)) == 2 * (30 * 64 + 64 * 2)


def test_from_linears_copies_weights():
    torch.manual_seed(0)
    lin = [nn.Linear(5, 4), nn.Linear(4, 3), nn.Linear(3, 2)]
    net = FeedForwardNet.from_linears(lin)
    x = torch.randn(6, 5)
    ref = lin[2](torch.relu(lin[1](torch.relu(lin[0](x)))))
    assert torch.allclose(net(x), ref, atol=1e-6) and net.mlp and net.depth == 2


def test_mutables_and_search_space():
    m = synthesis_mutables(scheme=["A", "C"])
    assert m["scheme"].label == "scheme" and list(m["scheme"].values) == ["A", "C"]
    space = synthesis_search_space(["scheme", "prune_keep"], prune_keep=[0.05])
    assert space == {"scheme": {"_type": "choice", "_value": ["A", "B", "C"]},
                     "prune_keep": {"_type": "choice", "_value": [0.05]}}
    fields = set(ScannTrialConfig.__dataclass_fields__)
    assert set(synthesis_search_space()) <= fields  # every label is a trial config key
    one_line_user_error(lambda: synthesis_mutables(schem=["A"]), "unknown synthesis setting")
    assert split_groups(10, 3) == (4, 3, 3)


# --------------------------------------------------------------------------- operations


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_masks_hold_after_optimizer_steps(kind):
    """Momentum and weight decay must not revive pruned weights; their state is zeroed too."""
    data = toy_split()
    net = random_net(3, groups=(6, 6), keep=1.0, inputs=8, outputs=2)
    cfg = optimizer_settings(kind, lr=0.05, momentum=0.9 if kind == "sgd" else 0.0, weight_decay=1e-2)
    opt = make_optimizer(net, cfg)
    g = torch.Generator().manual_seed(0)
    train(net, opt, data, 1, g)  # state everywhere
    install_mask_hook(opt, net)
    prune_connections(net, fraction=0.7, optimizer=opt)
    dormant = ~net.mask
    assert dormant.any()
    train(net, opt, data, 2, g)
    assert torch.count_nonzero(net.weight.detach()[dormant]) == 0
    for value in opt.state[net.weight].values():
        if torch.is_tensor(value) and value.shape == dormant.shape:
            assert torch.count_nonzero(value[dormant]) == 0


def _revived_pruned_weights(kind, hook):
    """A synthesis's weights and optimizer state at the positions a mask change made dormant, after
    one more epoch; the change bypasses prune_connections' own clean-up, so only the step hook
    (``hook``: the synthesis's own; else removed) can zero them."""
    data = toy_split()
    net = random_net(3, groups=(6, 6), keep=1.0, inputs=8, outputs=2)
    cfg = optimizer_settings(kind, lr=0.05, momentum=0.9 if kind == "sgd" else 0.0, weight_decay=1e-2)
    synth = ScannSynthesis(net, cfg, data, seed=0)
    if not hook:
        synth._hook.remove()
    synth._train(1, "seed")  # momentum buffers / Adam moments everywhere
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        dormant = (torch.rand(net.mask.shape, generator=g) < 0.5) & net.mask
        net.mask &= ~dormant
    synth._train(1, "recovery")
    state = [v[dormant] for v in synth.optimizer.state[net.weight].values()
             if torch.is_tensor(v) and v.shape == dormant.shape]
    return net.weight.detach()[dormant], state


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_the_synthesis_re_masks_weights_and_optimizer_state_after_every_step(kind):
    """Dormant weights and their momentum / Adam moments are zero after every step of the
    synthesis's optimizer (its mask hook), so neither momentum nor weight decay revives a pruned
    weight and a regrown one starts from zero; without the hook they are not."""
    weights, state = _revived_pruned_weights(kind, hook=True)
    assert weights.numel() > 0 and torch.count_nonzero(weights) == 0
    assert state and all(torch.count_nonzero(s) == 0 for s in state)
    weights, state = _revived_pruned_weights(kind, hook=False)  # control: the test sees the hook
    assert torch.count_nonzero(weights) > 0 and all(torch.count_nonzero(s) > 0 for s in state)


def test_connection_growth_takes_largest_gradients_and_resets_state():
    data = toy_split()
    net = random_net(4, groups=(5, 5), keep=1.0, inputs=8, outputs=2)
    opt = make_optimizer(net, optimizer_settings("adam", lr=1e-2))
    install_mask_hook(opt, net)
    g = torch.Generator().manual_seed(0)
    train(net, opt, data, 1, g)
    prune_connections(net, fraction=0.6, optimizer=opt)
    before = net.mask.clone()
    kept_state = opt.state[net.weight]["exp_avg"][before].clone()
    scores = connection_scores(net, data.X_train, data.y_train)
    dormant = net.allowed() & ~before
    grown = grow_connections(net, data.X_train, data.y_train, count=7, optimizer=opt)
    assert grown == 7
    new = net.mask & ~before
    assert int(new.sum()) == 7 and not (new & ~dormant).any()
    assert scores[new].min() >= scores[dormant & ~new].max()  # the top |dL/dw| among dormant ones
    assert torch.count_nonzero(net.weight.detach()[new]) == 0  # new weights start at 0
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[net.weight][key][new]) == 0  # fresh state
    assert torch.equal(opt.state[net.weight]["exp_avg"][before], kept_state)  # others untouched
    # growth up to a share of all allowed connections, and full growth
    grow_connections(net, data.X_train, data.y_train, to=0.9, optimizer=opt)
    assert net.connections == round(0.9 * net.allowed_connections())
    full_growth(net, opt)
    assert torch.equal(net.mask, net.allowed())


def test_neuron_growth_duplicates_most_active_neurons():
    data = toy_split()
    net = random_net(5, groups=(4, 4), keep=0.8, inputs=8, outputs=2)
    opt = make_optimizer(net, optimizer_settings("sgd", lr=0.01, momentum=0.9))
    install_mask_hook(opt, net)
    g = torch.Generator().manual_seed(0)
    train(net, opt, data, 1, g)
    _, act = net.forward_hidden(data.X_train)
    top = torch.topk(act.mean(0), 2).indices.tolist()
    old_w, old_m = net.weight.detach().clone(), net.mask.clone()
    old_buf = opt.state[net.weight]["momentum_buffer"].clone()
    parents = grow_neurons(net, data.X_train, 2, max_neurons=10, noise=0.05, generator=g, optimizer=opt)
    assert parents == top and net.num_hidden == 10
    # each copy joins its parent's group, right after the group's old members
    group_of = [0] * 4 + [1] * 4
    order = [h for grp in (0, 1) for h in list(range(4 * grp, 4 * grp + 4)) + [p for p in parents if group_of[p] == grp]]
    is_new = [False] * 4 + [True] * sum(group_of[p] == 0 for p in parents) + [False] * 4 + \
             [True] * sum(group_of[p] == 1 for p in parents)
    buf = opt.state[net.weight]["momentum_buffer"]
    D = 8
    for new_idx, (old_idx, fresh) in enumerate(zip(order, is_new)):
        new_cols = [c for c in range(D)]  # compare the input side (columns of inputs do not move)
        assert torch.equal(net.mask[new_idx, new_cols], old_m[old_idx, new_cols])
        if fresh:
            active = old_m[old_idx, new_cols]
            assert torch.allclose(net.weight.detach()[new_idx, new_cols], old_w[old_idx, new_cols], atol=0.3)
            assert not torch.equal(net.weight.detach()[new_idx, new_cols][active], old_w[old_idx, new_cols][active])
            assert torch.count_nonzero(buf[new_idx]) == 0  # fresh optimizer state
        else:
            assert torch.equal(net.weight.detach()[new_idx, new_cols], old_w[old_idx, new_cols])
            assert torch.equal(buf[new_idx, new_cols], old_buf[old_idx, new_cols])  # state moved along
    assert grow_neurons(net, data.X_train, 5, max_neurons=10, optimizer=opt) == []  # at the cap
    assert len(grow_neurons(net, data.X_train, 5, max_neurons=11, optimizer=opt)) == 1


def test_pruning_removes_neurons_without_connections():
    net = random_net(6, groups=(3, 3), keep=1.0)
    with torch.no_grad():  # neuron 1: every connection tiny -> pruned first -> removed
        net.weight[1, :] = 1e-6
        net.weight[:, 6 + 1] = 1e-6
    x = torch.randn(4, 6)
    pruned, removed = prune_connections(net, keep=net.connections - 12)
    assert removed >= 1 and net.num_hidden <= 5
    # one-sided neurons are kept by pruning (paper: removed only when *all* connections are gone),
    # but the clean-up of an evaluated/exported network drops them without changing the output
    net2 = random_net(7, groups=(3, 3), keep=1.0)
    with torch.no_grad():
        net2.mask[:, 6 + 0] = False  # neuron 0 feeds nobody
        net2.mask[1, :] = False      # neuron 1 reads nothing: a constant relu(bias)
    net2.apply_mask_()
    _, removed = prune_connections(net2, fraction=0.01)
    assert removed == 0 and net2.num_hidden == 6
    y = net2(x)
    clean = net2.cleaned()
    assert clean.num_hidden == 4 and (clean(x) - y).abs().max() < 1e-5


# --------------------------------------------------------------------------- schemes and Algorithm 2


def test_scheme_presets_are_the_papers_mnist_settings():
    a = ScannConfig.for_scheme("A", baseline_neurons=500)
    assert (a.initial_neurons, a.max_neurons, a.initial_prune, a.grow_to, a.neuron_growth, a.prune_fraction) == \
        (300, 500, 0.95, 0.35, 5, 0.25)
    b = ScannConfig.for_scheme("B", baseline_neurons=500)
    assert (b.initial_neurons, b.grow_to, b.prune_keep, b.neuron_growth) == (400, 0.9, 0.05, 0)
    c = ScannConfig.for_scheme("C", baseline_neurons=500)
    assert c.mlp and c.ops == ("full_growth", "prune") and c.prune_keep == SCHEME_PRESETS["C"]["prune_keep"]
    assert a.ops == ("grow_connections", "grow_neurons", "prune")
    one_line_user_error(lambda: ScannConfig.for_scheme("D", baseline_neurons=5), "unknown scheme")
    one_line_user_error(lambda: ScannConfig(prune_keep=1.5), "prune_keep")


def test_toy_problem_finds_the_two_relevant_inputs():
    """Sanity: y depends on x0 and x1 only; after synthesis only those inputs stay connected."""
    data = toy_split(0)
    cfg = ScannConfig.for_scheme("B", baseline_neurons=12, groups=2, iterations=3, initial_epochs=30,
                                 epochs_per_op=15, lr=1e-2, prune_keep=0.08)
    net = seed_network(cfg, 8, 2, generator=torch.Generator().manual_seed(0))
    best, synth = synthesize(net, cfg, data, seed=0)
    assert best.used_inputs() == [0, 1]
    assert synth.best.val_acc >= 0.97
    assert synth.best.val_acc == max(r["val_acc"] for r in synth.history)  # Algorithm 2's output
    assert best.connections <= 12


def test_the_trial_config_is_the_synthesis_config_plus_the_trial_keys():
    """ScannTrialConfig reuses ScannConfig's fields (None: the scheme's preset or the data kind's
    training default, resolved for the synthesis); choices are typed, so a bad one names its key."""
    import typing

    from search_spaces.feedforward import SCHEMES
    from strategies.scann.config import Scheme

    assert issubclass(ScannTrialConfig, ScannConfig) and typing.get_args(Scheme) == SCHEMES
    cfg = build_config(ScannTrialConfig, {"dataset": "breast_cancer", "scheme": "A", "lr": 0.02})
    scfg = cfg.scann_config(50)
    assert type(scfg) is ScannConfig and scfg.resolved and not ScannConfig().resolved
    assert (scfg.initial_neurons, scfg.max_neurons, scfg.initial_prune, scfg.prune_fraction) == (30, 50, 0.95, 0.25)
    assert (scfg.optimizer, scfg.lr, scfg.weight_decay, scfg.epochs_per_op, scfg.initial_epochs) == \
        ("adam", 0.02, 1e-4, 10, 20)  # Sec. 4.2's Adam, our lr; A and B train their fresh seed first
    image = build_config(ScannTrialConfig, {"dataset": "mnist5k"}).scann_config(500)
    assert (image.optimizer, image.lr, image.momentum, image.epochs_per_op, image.initial_epochs) == \
        ("sgd", 0.03, 0.9, 1, 0)  # Sec. 4.1; Scheme C starts from the trained baseline
    assert ScannConfig.for_scheme("A", baseline_neurons=500, initial_neurons=600).max_neurons == 600
    for key, bad in (("select", "smallest"), ("optimizer", "rmsprop"), ("recovery_schedule", "step")):
        one_line_user_error(lambda: build_config(ScannTrialConfig, {key: bad}), f"{key}: '{bad}' is not one of")
    with pytest.raises(ValueError, match="resolved config"):
        ScannSynthesis(random_net(), ScannConfig(), toy_split())


@pytest.mark.parametrize("scheme", ["A", "C"])
def test_schemes_run_and_keep_their_shape(scheme):
    data = toy_split(1)
    base = None
    if scheme == "C":
        base, _ = train_mlp((12,), data, epochs=10, lr=1e-2)
    cfg = ScannConfig.for_scheme(scheme, baseline_neurons=12, groups=2, iterations=2, initial_epochs=5,
                                 epochs_per_op=3, lr=1e-2, neuron_growth=2,
                                 **({"prune_keep": 0.4} if scheme == "C" else {}))
    net = seed_network(cfg, 8, 2, baseline=base, generator=torch.Generator().manual_seed(0))
    synth = ScannSynthesis(net, cfg, data, seed=0, reference_acc=0.5)
    synth.run()
    assert [r["iteration"] for r in synth.history] == [0, 1, 2]
    if scheme == "A":
        assert synth.history[1]["neurons_added"] == 2 and synth.net.num_hidden <= cfg.max_neurons
    else:
        assert synth.net.mlp and all(r["skip_connections"] == 0 for r in synth.history)
        assert all(r["raw_connections"] <= round(0.4 * 120) for r in synth.history)
    assert synth.compact is not None and synth.compact.params == min(
        r["params"] for r in synth.history if r["val_acc"] >= 0.5 - 0.005)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_recovery_lr_applies_to_the_training_after_pruning_only(schedule):
    data = toy_split(2)
    base, _ = train_mlp((12,), data, epochs=5, lr=1e-2)
    cfg = ScannConfig.for_scheme("C", baseline_neurons=12, iterations=2, initial_epochs=2, epochs_per_op=3,
                                 lr=1e-2, recovery_lr=1e-3, recovery_schedule=schedule, prune_keep=0.4)
    net = seed_network(cfg, 8, 2, baseline=base, generator=torch.Generator().manual_seed(0))
    synth = ScannSynthesis(net, cfg, data, seed=0)
    seen, train = [], synth._train

    def spy(epochs, what):
        seen.append((what, synth.optimizer.param_groups[0]["lr"]))
        return train(epochs, what)

    synth._train = spy
    synth.run()
    recovery = [lr for what, lr in seen if what == "prune"]
    assert len(recovery) == 3 * 3  # 3 epochs after each of the 3 prunings
    if schedule == "constant":
        assert set(recovery) == {1e-3}
    else:  # cosine from recovery_lr down to 1% of it, restarted for every pruned size
        assert recovery[:3] == pytest.approx([1e-3, 0.505e-3, 1e-5]) and recovery[3:6] == recovery[:3]
    assert {lr for what, lr in seen if what != "prune"} == {1e-2}  # seed and full growth
    assert synth.optimizer.param_groups[0]["lr"] == 1e-2
    one_line_user_error(lambda: ScannConfig(recovery_lr=0.0), "recovery_lr")
    one_line_user_error(lambda: build_config(ScannConfig, {"recovery_schedule": "step"}), "recovery_schedule")


def test_scann_weight_decay_applies_to_the_synthesis_only():
    """``scann_weight_decay`` sets the synthesis's weight decay; the baseline (and the DR models, the
    benchmark's reference trainings) keep the trial's ``weight_decay``; a negative one is refused."""
    cfg = build_config(ScannTrialConfig, {"dataset": "breast_cancer", "scann_weight_decay": 1e-3})
    assert cfg.training()["weight_decay"] == 1e-4
    assert cfg.scann_config(16).weight_decay == 1e-3
    both = build_config(ScannTrialConfig, {"dataset": "breast_cancer", "weight_decay": 5e-4})
    assert both.training()["weight_decay"] == both.scann_config(16).weight_decay == 5e-4
    one_line_user_error(lambda: build_config(ScannTrialConfig, {"dataset": "breast_cancer",
                                                                "scann_weight_decay": -1.0}), "weight_decay")
    one_line_user_error(lambda: build_config(ScannTrialConfig, {"dataset": "breast_cancer",
                                                                "scann_weight_decay": float("inf")}), "weight_decay")


def test_epoch_plan_replays_the_epochs_validation_chose(monkeypatch):
    """A run given the epochs another run's validation chose (``epoch_plan``) keeps exactly those
    checkpoints without looking at validation data; a plan too short for the iterations is refused."""
    data = toy_split(3)
    base, _ = train_mlp((12,), data, epochs=5, lr=1e-2)
    cfg = ScannConfig.for_scheme("C", baseline_neurons=12, iterations=3, initial_epochs=2, epochs_per_op=4,
                                 lr=1e-2, prune_keep=0.4)

    def fresh(**kw):
        net = seed_network(cfg, 8, 2, baseline=base, generator=torch.Generator().manual_seed(0))
        return ScannSynthesis(net, cfg, data, seed=0, keep_all=True, **kw)

    chosen = fresh()
    chosen.run()
    plan = [r["epoch"] for r in chosen.history]
    assert all(1 <= e <= 4 for e in plan)
    replay = fresh(epoch_plan=plan)
    import strategies.scann.networks as networks
    import strategies.scann.synthesis as synthesis

    calls, real = [], synthesis.evaluate
    for module in (synthesis, networks):
        monkeypatch.setattr(module, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(cfg.iterations + 1):
        n = len(calls)
        replay.step()
        assert len(calls) - n == 2  # the record's validation and test scores only: no per-epoch choice
    assert [r["epoch"] for r in replay.history] == plan
    for a, b in zip(chosen.checkpoints, replay.checkpoints):
        assert (a.params, a.val_acc, a.test_acc) == (b.params, b.val_acc, b.test_acc)
        assert torch.equal(a.snapshot["weight"], b.snapshot["weight"])
    with pytest.raises(ValueError, match="epoch_plan"):
        fresh(epoch_plan=plan[:2])
    # train_mlp(keep="last") keeps the last of the epochs it is given, without scoring any epoch
    calls.clear()
    net, fig = train_mlp((12,), data, epochs=3, lr=1e-2, keep="last")
    assert fig["epochs"] == 3 and len(calls) == 2  # the final validation and test scores only


def test_synthesis_state_dict_resumes_identically():
    data = toy_split(2)
    cfg = ScannConfig.for_scheme("B", baseline_neurons=10, groups=2, iterations=3, initial_epochs=4,
                                 epochs_per_op=2, lr=1e-2)

    def fresh():
        net = seed_network(cfg, 8, 2, generator=torch.Generator().manual_seed(0))
        return ScannSynthesis(net, cfg, data, seed=0)

    full = fresh()
    full.run()
    first = fresh()
    first.step(), first.step()
    state = first.state_dict()
    second = fresh()
    second.load_state_dict(state)
    second.run()
    assert [r["val_acc"] for r in second.history] == [r["val_acc"] for r in full.history]
    assert second.net.connections == full.net.connections
    assert torch.equal(second.net.weight, full.net.weight)


# --------------------------------------------------------------------------- the trial


def tiny(**kw):
    base = dict(dataset="breast_cancer", baseline_hidden=[16], baseline_epochs=5, iterations=2,
                epochs_per_op=2, progress=False, device="cpu", scheme="B")
    base.update(kw)
    return build_config(ScannTrialConfig, base)


def test_trial_end_to_end_breast_cancer(tmp_path):
    nni_bridge._reset_for_tests()
    cfg = tiny()
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    folder = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "structure.csv", "arch.json", "model.pt", "masked.pt",
                 "preprocess.pkl", "summary.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "prep.pt").exists() and not (folder / "checkpoint.pt").exists()
    for key in ("default", "test_acc", "connections", "params", "flops", "compression_ratio", "baseline_params",
                "ha_test_acc", "mc_params", "depth", "dr_ratio"):
        assert isinstance(summary[key], (int, float)) and np.isfinite(summary[key]), key
    assert summary["compression_ratio"] == pytest.approx(summary["baseline_params"] / summary["params"])
    import pandas as pd

    structure = pd.read_csv(folder / "structure.csv")
    assert list(structure["iteration"]) == [0, 1, 2]
    assert {"neurons", "connections", "depth"} <= set(structure.columns)
    metrics = pd.read_csv(folder / "metrics.csv")
    assert list(metrics[metrics.phase == "scann"]["epoch"]) == [0, 1, 2]
    # model.pt rebuilds from arch.json and equals the masked network on normalised data
    arch = json.loads((folder / "arch.json").read_text())
    model = PrunedFeedForward(arch["num_inputs"], arch["pruned_shapes"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    masked = FeedForwardNet.from_snapshot(torch.load(folder / "masked.pt", weights_only=True))
    x = torch.rand(20, 30)
    assert (model(x) - masked(x)).abs().max() < 1e-5
    assert arch["connections"] == summary["connections"] == len(arch["edges"])
    # a second execute on the finished folder returns the stored summary
    assert execute("scann", cfg, scann_run, folder)["default"] == summary["default"]


def test_trial_resumes_after_a_crash(tmp_path, monkeypatch):
    nni_bridge._reset_for_tests()
    cfg = tiny(iterations=3)
    ref = execute("scann", cfg, scann_run, tmp_path / "ref")
    real_step = ScannSynthesis.step

    def crashing(self):
        if self.iteration == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self)

    monkeypatch.setattr(ScannSynthesis, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        execute("scann", cfg, scann_run, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    monkeypatch.setattr(ScannSynthesis, "step", real_step)
    nni_bridge._reset_for_tests()
    resumed = execute("scann", cfg, scann_run, tmp_path / "run")
    for key in ("test_acc", "val_acc", "connections", "params"):
        assert resumed[key] == ref[key], key
    import pandas as pd

    assert list(pd.read_csv(tmp_path / "run" / "structure.csv")["iteration"]) == [0, 1, 2, 3]


def test_size_chosen_by_cross_validation_on_training_data_only(tmp_path):
    """select_folds: every iteration gets a pooled accuracy over every training + validation sample
    once (the folds' held-out chunks of the training split plus the main run's validation
    predictions); the output is the smallest checkpoint within tolerance of the baseline's pooled
    accuracy (never test)."""
    nni_bridge._reset_for_tests()
    cfg = tiny(select="most_compressed", select_folds=3, scheme="C", dr_method="pca", dr_ratio=0.5,
               prune_keep_schedule=[0.5, 0.2, 0.05], tolerance=0.02)
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    import pandas as pd

    cv = pd.read_csv(tmp_path / "run" / "cv.csv")
    assert list(cv["iteration"]) == [0, 1, 2]
    # 398 training samples held out in two chunks (199 + 199) and the main run's 57 validation ones
    assert set(cv["pooled_n"]) == {455} and "fold2_acc" not in cv
    pooled = (cv["fold0_acc"] * 199 + cv["fold1_acc"] * 199 + cv["val_acc"] * 57) / 455
    assert np.allclose(cv["cv_acc"], pooled, atol=1e-9), cv.to_dict()
    assert np.allclose(cv["cv_acc"] * 455, (cv["cv_acc"] * 455).round(), atol=1e-6)
    # each run's baseline accuracy on the same held-out samples, pooled = the reference; the gap's SE
    base = (cv["fold0_baseline_acc"] * 199 + cv["fold1_baseline_acc"] * 199 + cv["val_baseline_acc"] * 57) / 455
    assert np.allclose(cv["cv_baseline_acc"], base, atol=1e-12)
    w = np.array([57, 199, 199]) / 455
    for _, r in cv.iterrows():
        g = np.array([r.val_acc - r.val_baseline_acc, r.fold0_acc - r.fold0_baseline_acc,
                      r.fold1_acc - r.fold1_baseline_acc])
        want = np.sqrt(3 / 2 * np.sum(w ** 2 * (g - w @ g) ** 2))
        assert r.cv_gap_se == pytest.approx(want, abs=1e-12)
        assert w @ g == pytest.approx(r.cv_acc - r.cv_baseline_acc, abs=1e-12)
    assert (cv["cv_gap_se"] > 0).any()
    # the main run records the epoch each checkpoint was kept at (the folds replay them)
    structure = pd.read_csv(tmp_path / "run" / "structure.csv")
    assert structure["epoch"].between(1, cfg.epochs_per_op).all()
    # the analysis draws why this size was chosen: pooled curve, tolerance line, the chosen size ringed
    from analysis.scann import load_scann_runs, plot_selection, report

    fig = plot_selection(load_scann_runs([tmp_path / "run"]))
    ax = fig.axes[0]
    pooled = ax.lines[0]
    ratio = summary["baseline_params"] / cv["params"]
    assert np.allclose(pooled.get_xdata(), ratio) and np.allclose(
        pooled.get_ydata(), 100 * (cv["cv_acc"] - cv["cv_baseline_acc"]))
    ring = ax.collections[-1].get_offsets()[0]
    assert ring[0] == pytest.approx(summary["baseline_params"] / summary["params"])
    assert any(np.allclose(line.get_ydata(), -2.0) for line in ax.lines)  # tolerance 0.02 = 2 points
    written = report([tmp_path / "run"], tmp_path / "analysis")
    assert tmp_path / "analysis" / "scann_selection.png" in written
    ok = cv["cv_acc"] >= cv["cv_baseline_acc"] - 0.02 - 1e-12
    assert list(cv["eligible"]) == list(ok.astype(int))
    if ok.any():
        row = cv[ok].sort_values("params").iloc[0]
        assert summary["selected_iteration"] == row["iteration"] and summary["params"] == row["params"]
        assert summary["selection_acc"] == pytest.approx(row["cv_acc"])
        assert summary["mc_met"] == 1
    assert summary["selection_baseline_acc"] == pytest.approx(cv["cv_baseline_acc"].iloc[0])
    one_line_user_error(lambda: tiny(select_folds=3), "select_folds applies to tabular data sets with "
                                                      "select=most_compressed")
    for k in (1, 2):
        one_line_user_error(lambda: tiny(select="most_compressed", select_folds=k), "select_folds must be")


def test_algorithm1_is_scored_on_the_pooled_accuracy_with_select_folds(tmp_path, monkeypatch):
    """With select_folds, every DR model Algorithm 1 trains is judged on its pooled accuracy (the main
    validation split + the chunk runs: 455 breast_cancer predictions), against the baseline's pooled
    the same way; the validation split's own accuracy is kept as ``split_val_acc``."""
    import experiments.methods.scann as method
    from strategies import dimred

    seen = {}
    real_search = dimred.dr_search

    def spy_search(*a, **kw):
        seen["reference"] = kw["reference_acc"]
        return real_search(*a, **kw)

    monkeypatch.setattr(method, "dr_search", spy_search)
    fold_trainings, real_train = [], method.train_mlp

    def spy_train(hidden, data, **kw):
        if kw.get("keep") == "last":
            fold_trainings.append(tuple(hidden))
        return real_train(hidden, data, **kw)

    monkeypatch.setattr(method, "train_mlp", spy_train)
    nni_bridge._reset_for_tests()
    cfg = tiny(select="most_compressed", select_folds=3, scheme="C", dr_method="search",
               dr_methods=["pca", "rp_gaussian"], dr_ratios=[0.5], prune_keep_schedule=[0.5, 0.2, 0.05])
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    import pandas as pd

    dr = pd.read_csv(tmp_path / "run" / "dr.csv")
    assert list(dr["dr_method"]) == ["pca", "rp_gaussian"] and set(dr["pooled_n"]) == {455}
    assert np.allclose(dr["val_acc"] * 455, (dr["val_acc"] * 455).round(), atol=1e-6)  # counts of 455
    assert np.allclose(dr["split_val_acc"] * 57, (dr["split_val_acc"] * 57).round(), atol=1e-6)  # counts of 57
    # the 2 chunk runs train the baseline and each of the 2 DR models once; the size's cross-validation
    # reuses the chosen DR model's and the baseline's networks instead of training them again
    assert sorted(fold_trainings) == sorted([(16,)] * 2 + [(8,)] * 4)
    best = dr.sort_values(["val_acc", "dr_ratio"], ascending=[False, True]).iloc[0]
    assert summary["dr_method"] == best["dr_method"] and summary["dr_selection"] == "pooled"
    assert summary["dr_val_acc"] == pytest.approx(best["split_val_acc"])
    ref = seen["reference"]  # the baseline's pooled accuracy: a count out of 455, not of the 57 validation samples
    assert abs(ref * 455 - round(ref * 455)) < 1e-6 and ref != pytest.approx(summary["baseline_val_acc"], abs=1e-9)
    # without select_folds Algorithm 1 decides on the validation split, as in the paper
    nni_bridge._reset_for_tests()
    plain = execute("scann", tiny(dr_method="search", dr_methods=["pca"], dr_ratios=[0.5]), scann_run,
                    tmp_path / "plain")
    assert plain["dr_selection"] == "validation"
    assert "split_val_acc" not in pd.read_csv(tmp_path / "plain" / "dr.csv")


def test_dr_select_most_compressed_starts_scann_from_the_smallest_dr_model_that_holds(tmp_path):
    """``dr_select=most_compressed``: Algorithm 1's best method at its smallest ratio within
    ``tolerance`` of the baseline (the paper's DR (M.C.)); the summary also names Algorithm 1's own
    best model.  Only Algorithm 1 has a choice to make: with a fixed DR method it is refused."""
    import pandas as pd

    nni_bridge._reset_for_tests()
    cfg = tiny(dr_method="search", dr_methods=["pca", "fa"], dr_ratios=[0.5, 0.25], dr_select="most_compressed",
               tolerance=1.0)  # every DR model holds: the smallest ratio of the best method
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    dr = pd.read_csv(tmp_path / "run" / "dr.csv")
    top = dr.sort_values(["val_acc", "dr_ratio"], ascending=[False, True]).iloc[0]
    assert (summary["dr_highest_method"], summary["dr_highest_ratio"]) == (top["dr_method"], top["dr_ratio"])
    assert top["dr_ratio"] == 0.5  # Algorithm 1's own pick is the milder ratio here, so the choice shows
    assert (summary["dr_method"], summary["dr_ratio"], summary["dr_select"]) == (top["dr_method"], 0.25,
                                                                                 "most_compressed")
    assert summary["dr_n_components"] == 8 and summary["dr_neurons"] == 4  # 0.25 x 30 features, 0.25 x 16
    mine = dr[(dr["dr_method"] == top["dr_method"]) & (dr["dr_ratio"] == 0.25)].iloc[0]
    assert summary["dr_val_acc"] == pytest.approx(mine["val_acc"])
    nni_bridge._reset_for_tests()
    plain = execute("scann", tiny(dr_method="pca", dr_ratio=0.5), scann_run, tmp_path / "plain")
    assert (plain["dr_select"], plain["dr_highest_method"], plain["dr_highest_ratio"]) == ("fixed", "pca", 0.5)
    one_line_user_error(lambda: tiny(dr_method="pca", dr_select="most_compressed"), "applies to dr_method=search")
    one_line_user_error(lambda: tiny(dr_method="search", dr_select="smallest"), r"dr_select: .smallest. is not one of")


@pytest.mark.parametrize("dr_method", ["none", "pca"])
def test_cv_fold_scores_on_data_that_chose_nothing(monkeypatch, dr_method):
    """A fold's held-out chunk is disjoint from the data every network trains on, chooses no epoch
    (each network keeps the epoch the main run chose: ``keep="last"`` after the main run's epochs,
    SCANN's ``epoch_plan``), and the fold trains on as many samples as the main run (k = 8 on
    breast_cancer: 398 training / 57 validation samples); the chunks cover the training split once."""
    import experiments.methods.scann as method

    seen, calls = [], []
    real_train, real_synth = method.train_mlp, method.ScannSynthesis

    def spy_train(hidden, data, **kw):
        seen.append(data)
        calls.append(("mlp", kw["epochs"], kw.get("keep")))
        return real_train(hidden, data, **kw)

    class SpySynth(real_synth):
        def __init__(self, net, cfg, data, **kw):
            seen.append(data)
            calls.append(("scann", kw.get("epoch_plan")))
            super().__init__(net, cfg, data, **kw)

    monkeypatch.setattr(method, "train_mlp", spy_train)
    monkeypatch.setattr(method, "ScannSynthesis", SpySynth)
    cfg = tiny(select="most_compressed", select_folds=8, scheme="C", dr_method=dr_method, dr_ratio=0.5,
               prune_keep_schedule=[0.5, 0.2, 0.05])
    prep = {"baseline": {"hidden": [16], "epochs": 4}, "num_classes": 2,
            "dr": None if dr_method == "none" else {"method": "pca", "ratio": 0.5, "hidden": [8], "epochs": 3}}
    plan = [2, 1, 2]
    splits = load_tabular_dataset("breast_cancer", seed=cfg.seed)
    rows = lambda t: {tuple(r) for r in np.round(np.asarray(t), 5).tolist()}  # noqa: E731
    held_total = 0
    for fold in range(7):
        seen.clear(), calls.clear()
        out = method._cv_fold(cfg, prep, fold, torch.device("cpu"), plan)
        want = [("mlp", 4, "last")] + ([("mlp", 3, "last")] if dr_method != "none" else []) + [("scann", plan)]
        assert calls == want
        assert abs(out["n_train"] - len(splits.y_train)) <= 1  # 398 - 57 + 57
        for data in seen:
            held = rows(data.X_test.numpy())
            assert len(held) == len(data.y_test) == out["n"] and len(data.y_train) == out["n_train"]
            assert not held & rows(data.X_train.numpy())
        if dr_method != "none":
            assert seen[1].num_features == 15  # the DR model's data: fit on the fold's training part
        assert len(out["acc"]) == 3 and all(0 <= a <= 1 for a in out["acc"])
        held_total += out["n"]
    assert held_total == len(splits.y_train)


def test_cv_choice_one_pooled_criterion_not_a_57_sample_veto():
    """One validation error more than a 100 %-scoring baseline (1.75 points on breast_cancer's 57
    validation samples) no longer vetoes a size whose out-of-fold accuracy holds; a size that loses
    more than ``tolerance`` of the pooled predictions is still refused."""
    from types import SimpleNamespace

    def ck(i, params, val):
        return Checkpoint(i, val, None, params, params, 2 * params, 1, 1, {})

    folds = [{"fold": f, "n": n, "baseline_acc": 0.98, "acc": accs, "params": [400, 100, 40]}
             for f, (n, accs) in enumerate([(228, [0.98, 0.98, 0.96]), (227, [0.98, 0.98, 0.96])])]
    synth = SimpleNamespace(checkpoints=[ck(0, 400, 1.0), ck(1, 100, 56 / 57), ck(2, 40, 1.0)])
    chosen, met, rows, base = cv_choice(synth.checkpoints, folds, reference_acc=1.0, n_val=57, tolerance=0.005)
    assert met and chosen.iteration == 1  # one pooled prediction of 512 = 0.2 points < 0.5
    assert base == pytest.approx((0.98 * 455 + 57) / 512)
    assert [r["eligible"] for r in rows] == [1, 1, 0]  # iteration 2: -2 points out-of-fold
    assert rows[1]["cv_acc"] == pytest.approx((0.98 * 455 + 56) / 512)
    # tighter than one pooled prediction: the one extra validation error counts
    chosen, met, rows, _ = cv_choice(synth.checkpoints, folds, reference_acc=1.0, n_val=57, tolerance=0.001)
    assert met and chosen.iteration == 0 and [r["eligible"] for r in rows] == [1, 0, 0]
    # the pooled gap's standard error: sd / sqrt(k) for equal shares (Hastie et al., ESL 7.10)
    gaps = [0.01, -0.02, 0.0, 0.03]
    assert pooled_se(gaps, [0.25] * 4) == pytest.approx(np.std(gaps, ddof=1) / 2)


def _csv(tmp_path, text, name="data.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _table(rows=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((rows, 3))
    y = (X[:, 0] > 0.5).astype(int)
    lines = ["a,b,c,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{'yes' if t else 'no'}" for (a, b, c), t in zip(X, y)]
    return "\n".join(lines) + "\n"


def test_bad_input_is_a_one_line_user_error(tmp_path):
    good = _table()
    missing = good.replace("\n0.", "\n,", 1)
    text = good.splitlines()
    nonnum = "\n".join([text[0]] + [l.replace(",", ",x", 1) if i == 1 else l for i, l in enumerate(text[1:], 1)]) + "\n"
    constant = "\n".join([text[0]] + [l.rsplit(",", 1)[0] + ",same" for l in text[1:]]) + "\n"
    few = "a,b,label\n" + "".join(f"{i},{i},{i % 4}\n" for i in range(4))
    cases = {
        "missing value": (dict(csv=str(_csv(tmp_path, missing, "m.csv")), label="label"), "missing value"),
        "non-numeric": (dict(csv=str(_csv(tmp_path, nonnum, "n.csv")), label="label"), "non-numeric"),
        "no label column": (dict(csv=str(_csv(tmp_path, good, "g.csv")), label="target"), "label column"),
        "constant label": (dict(csv=str(_csv(tmp_path, constant, "c.csv")), label="label"), "single value"),
        "fewer samples than classes": (dict(csv=str(_csv(tmp_path, few, "f.csv")), label="label"), "sample"),
        "more folds than samples": (dict(csv=str(_csv(tmp_path, good, "k.csv")), label="label",
                                         select="most_compressed", select_folds=40), "select_folds=40 cannot cut"),
    }
    for what, (kw, match) in cases.items():
        cfg = tiny(dataset="csv", **kw)
        nni_bridge._reset_for_tests()
        one_line_user_error(lambda: execute("scann", cfg, scann_run, tmp_path / what.replace(" ", "_")), match)
    for ratio in (0, 1, 1.5, -0.2):
        one_line_user_error(lambda: tiny(dr_method="pca", dr_ratio=ratio), "dr_ratio")
    one_line_user_error(lambda: tiny(dr_method="spectral"), "transductive")
    one_line_user_error(lambda: tiny(dr_method="tsne"), "unknown dr_method")
    one_line_user_error(lambda: tiny(scheme="Z"), "scheme")
    one_line_user_error(lambda: tiny(dataset="digits"), "digits_flat")
    one_line_user_error(lambda: tiny(dataset="mnist5k", dr_method="pca"), "tabular")
    one_line_user_error(lambda: tiny(prune_keep=2.0), "prune_keep")
    one_line_user_error(lambda: tiny(schemee="A"), "did you mean 'scheme'")


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    cfg = tiny(dataset="csv", csv=str(tmp_path / "nope.csv"), label="y")
    with pytest.raises(SystemExit) as info:
        exit_on_error(execute, "scann", cfg, scann_run, tmp_path / "run")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_user_csv_runs_and_the_raw_file_is_never_modified(tmp_path):
    path = _csv(tmp_path, _table(rows=90))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stat = path.stat()
    nni_bridge._reset_for_tests()
    # 90 rows, 5 epochs: at chance, exported anyway (this test is about the file)
    summary = execute("scann", tiny(dataset="csv", csv=str(path), label="label", dr_method="pca", dr_ratio=0.67,
                                    allow_degenerate=True), scann_run, tmp_path / "run")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and path.stat().st_mtime == stat.st_mtime
    assert summary["dr_n_components"] == 2 and summary["dr_method"] == "pca"


def test_nnictl_config_sweeps_valid_trial_configs():
    path = ROOT / "experiments" / "configs" / "scann_schemes.yml"
    conf = yaml.safe_load(path.read_text())
    assert conf["tuner"]["name"] == "GridSearch" and conf["trainingService"]["platform"] == "local"
    assert (path.parent / conf["trialCodeDirectory"]).resolve() == ROOT
    assert "experiments.trial scann" in conf["trialCommand"] and "breast_cancer" in conf["trialCommand"]
    space = conf["searchSpace"]
    assert set(space) == {"scheme", "dr_method"}  # dr_ratio is nested under each DR method
    from nni.algorithms.hpo.gridsearch_tuner import GridSearchTuner
    from nni import NoMoreTrialError

    from experiments.trial import flatten_nested_choices

    tuner = GridSearchTuner()
    tuner.update_search_space(space)  # what nnictl hands the tuner
    configs = []
    while True:
        try:
            params = tuner.generate_parameters(len(configs))
        except NoMoreTrialError:
            break
        configs.append(build_config(ScannTrialConfig, flatten_nested_choices(params)))  # every point is valid
    keys = {(c.scheme, c.dr_method, c.dr_method != "none" and c.dr_ratio) for c in configs}
    assert len(keys) == len(configs) == conf["maxTrialNumber"] == 3 * (1 + 9 * 3)  # no run repeated
    assert {c.dr_method for c in configs} == {"none", "pca", "fa", "ica", "kpca", "isomap", "rp_gaussian",
                                              "rp_binary", "rp_achlioptas", "rp_li"}


def test_nested_choices_are_flattened_and_clashes_are_errors():
    from experiments.trial import flatten_nested_choices, resolve_config

    assert flatten_nested_choices({"scheme": "B", "dr_method": {"_name": "pca", "dr_ratio": 0.5}}) == \
        {"scheme": "B", "dr_method": "pca", "dr_ratio": 0.5}
    assert flatten_nested_choices({"a": {"_name": "x", "b": {"_name": "y", "c": 1}}}) == {"a": "x", "b": "y", "c": 1}
    assert flatten_nested_choices({"dr_method": {"_name": "none"}}) == {"dr_method": "none"}
    one_line_user_error(lambda: flatten_nested_choices({"dr_ratio": 0.25, "dr_method": {"_name": "pca", "dr_ratio": 0.5}}),
                        "NNI parameter 'dr_ratio' is set twice")
    _, cfg = resolve_config("scann", overrides={"dr_ratio": 0.25},
                            nni_params={"dr_method": {"_name": "ica", "dr_ratio": 0.75}})
    assert (cfg.dr_method, cfg.dr_ratio) == ("ica", 0.75)  # NNI's record wins over the command line


def test_image_mode_lenet5_on_mnist5k(tmp_path):
    """LeNet-5 (Caffe) baseline, frozen convolutions, SCANN on the fully connected part."""
    assert cost.count_params(LeNet5()) == 431_080  # 520 + 25,050 + 400,500 + 5,010 (paper: 430.5K)
    nni_bridge._reset_for_tests()
    cfg = build_config(ScannTrialConfig, dict(dataset="mnist5k", limit=300, conv_epochs=1, iterations=1,
                                              scheme="C", progress=False, device="cpu", batch_size=64))
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    assert summary["mode"] == "image" and summary["baseline_params"] == 431_080
    fc_baseline = 400_500 + 5_010
    assert summary["compression_ratio"] == pytest.approx(fc_baseline / summary["fc_params"])
    assert summary["params"] == summary["fc_params"] + 520 + 25_050
    assert summary["connections"] <= round(0.023 * 405_000)  # Scheme C keeps 2.3% of the FC weights
    arch = json.loads((tmp_path / "run" / "arch.json").read_text())
    model = ImageScannModel(LeNet5Features(), PrunedFeedForward(arch["num_inputs"], arch["pruned_shapes"]))
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_select_min_ratio_exports_the_least_compressed_network_at_the_ratio(tmp_path, monkeypatch):
    """select=min_ratio: the exported network is the least compressed checkpoint at least min_ratio x
    smaller than the baseline, picked by size alone -- the one bench.scann_compression judges."""
    import pandas as pd

    from bench import scann_compression as bench

    nni_bridge._reset_for_tests()
    # the size rule alone (allow_degenerate: no fallback to another checkpoint at these tiny settings)
    cfg = tiny(select="min_ratio", min_ratio=4.0, scheme="C", prune_keep_schedule=[0.5, 0.2, 0.1, 0.03],
               iterations=3, allow_degenerate=True)
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    st = pd.read_csv(tmp_path / "run" / "structure.csv")
    ratios = summary["baseline_params"] / st["params"]
    want = st[ratios >= 4.0].sort_values("params").iloc[-1]
    assert (ratios < 4.0).any() and (ratios >= 4.0).sum() >= 2  # the choice is not the first or the last
    assert summary["selected_iteration"] == want["iteration"] and summary["params"] == want["params"]
    assert summary["compression_ratio"] >= 4.0 and summary["mc_met"] == 1
    monkeypatch.setattr(bench, "TARGET_RATIO", 4.0)  # the benchmark's rule picks the same network
    at = bench._at_target(tmp_path / "run", summary)
    assert at["iteration"] == summary["selected_iteration"] and at["test_acc"] == summary["test_acc"]
    nni_bridge._reset_for_tests()
    far = execute("scann", tiny(select="min_ratio", min_ratio=1e6, scheme="C", iterations=1, allow_degenerate=True),
                  scann_run, tmp_path / "far")
    far_st = pd.read_csv(tmp_path / "far" / "structure.csv")
    assert far["mc_met"] == 0 and far["params"] == far_st["params"].min()
    one_line_user_error(lambda: tiny(select="min_ratio", min_ratio=0.5), "min_ratio must be >= 1")


def test_min_ratio_counts_the_fully_connected_part_in_image_mode():
    """Image mode: the ratio is that of the part SCANN synthesises (the convolutions' params are not
    SCANN's); ties in size go to the better validation accuracy."""
    from types import SimpleNamespace

    cks = [SimpleNamespace(iteration=i, params=p, val_acc=v)
           for i, (p, v) in enumerate([(1300, 0.99), (420, 0.98), (395, 0.97), (395, 0.975), (340, 0.9)])]
    # FC parts 1000, 120, 95, 95, 40: 95 is the first >= 10x
    ck, met = at_min_ratio(cks, 10.0, baseline_params=1000, fixed_params=300)
    assert met and ck.iteration == 3
    assert at_min_ratio(cks, 3.0, baseline_params=1300)[0].iteration == 1  # 1300 / 420 = 3.1x
    ck, met = at_min_ratio(cks, 100.0, baseline_params=1300)
    assert not met and ck.iteration == 4


def test_baseline_test_accs_first_training_is_the_trials_baseline(tmp_path):
    """The benchmark's reference trainings use the trial's own recipe: the first reproduces the
    trial's baseline network exactly, the others are other initialisations."""
    from experiments.methods.scann import baseline_test_accs

    nni_bridge._reset_for_tests()
    cfg = tiny(dr_method="none")
    summary = execute("scann", cfg, scann_run, tmp_path / "run")
    accs = baseline_test_accs(cfg, [16], 3)
    assert accs[0] == summary["baseline_test_acc"] and len(accs) == 3
    assert all(0 < a <= 1 for a in accs)
    with pytest.raises(UserError, match="tabular"):
        baseline_test_accs(build_config(ScannTrialConfig, dict(dataset="mnist5k", limit=300)), [500], 2)
