"""EPNAS (issue #4): search spaces, controller, reward, sharing dictionary, tuner, trial runner, baselines."""
import copy
import json
import math
import multiprocessing as mp
import random
import warnings
from pathlib import Path

import pytest
import torch

from experiments.config import build_config
from experiments.harness import execute
from experiments.methods.epnas import EpnasTrialConfig, run
from strategies.epnas_sharing import SharedWeights, copy_sliced
from search_spaces.epnas import (EpnasSpace, InvalidArchitecture, SpaceConfig, arch_cost, arch_to_json, arch_to_sample,
                                 build_network, check_arch, check_constraints_feasible, nni_search_space, random_arch,
                                 sample_to_arch)
from search_spaces.errors import UserError
from strategies.epnas import (KINDS, EpnasConfig, EpnasController, PolicyNet, constrained_reward, insert_unit,
                              remove_unit, run_policy)
from strategies.epnas_nni import EpnasTuner, check_class_args, main as check_main
from strategies.search_baselines import BASELINES

REPO = Path(__file__).resolve().parents[1]
SMALL = (1, 8, 8)
LAYER = SpaceConfig(kind="layer", max_layers=6)
MODULE = SpaceConfig(kind="module", max_branches=4, cells_per_stage=1, stages=2, cell_channels=8)


def _layer(t="conv2d", **kw):
    return {"type": t, "filter": 3, "pool": 2, "channels": 16, "act": "relu", "src1": -1, "src2": -1, **kw}


def _branch(t="conv-conv", **kw):
    return {"type": t, "filter": 3, "pool": 2, "channels": 8, "src1": 0, "src2": 0, "propagate": 1, **kw}


# ------------------------------------------------------------------------------------------ spaces


@pytest.mark.parametrize("space", [LAYER, MODULE], ids=["layer", "module"])
def test_every_sampled_architecture_builds_and_runs(space):
    for seed in range(40):
        arch = random_arch(space, random.Random(seed))
        assert check_arch(arch, space) is None
        net = build_network(arch, space, input_shape=SMALL, num_classes=10)
        out = net(torch.randn(2, *SMALL))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert "stem" in net.shareable() and len(net.shareable()) > 2
        # morphs of it stay valid (the controller's insert/remove/scale actions)
        child = random_arch(space, random.Random(seed + 1000))
        assert check_arch(child, space) is None


def test_downsampling_policy_and_skip_alignment():
    arch = {"space": "layer", "layers": [_layer(channels=32), _layer("maxpool2d"), _layer("maxpool2d"),
                                         _layer("avgpool2d", pool=3), _layer("add", src1=0, src2=1)]}
    net = build_network(arch, LAYER, input_shape=(1, 32, 32))
    hw = [layer.out_hw for layer in net.layers]
    assert hw == [(32, 32), (16, 16), (8, 8), (4, 4), (4, 4)]  # stops at min_spatial=4
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("arch, reason", [
    ({"space": "layer", "layers": []}, "at least one layer"),
    ({"space": "layer", "layers": [_layer("transformer")]}, "unknown type 'transformer'"),
    ({"space": "layer", "layers": [_layer(channels=48)]}, "unknown channels 48"),
    ({"space": "layer", "layers": [_layer(filter=9)]}, "unknown filter 9"),
    ({"space": "layer", "layers": [_layer(act="gelu")]}, "unknown act 'gelu'"),
    ({"space": "layer", "layers": [_layer(), _layer(src1=1)]}, "src1=1 must be -1 (none) or an earlier layer"),
    ({"space": "layer", "layers": [_layer(), _layer("add")]}, "'add' layer needs at least one source"),
    ({"space": "layer", "layers": [_layer()] * 7}, "exceed max_layers=6"),
    ({"space": "module", "branches": [_branch(propagate=0)]}, "no branch propagates"),
    ({"space": "module", "branches": [_branch(src2=2)]}, "src2=2 must be 0"),
    ({"space": "module", "branches": [_branch("conv-identity")]}, "unknown type 'conv-identity'"),
    ({"space": "cnn"}, "space in"),
])
def test_invalid_architectures_rejected_with_reason(arch, reason):
    space = LAYER if arch.get("space") == "layer" else MODULE
    assert reason in (check_arch(arch, space) or "")
    with pytest.raises(InvalidArchitecture, match="invalid architecture"):
        build_network(arch, space, input_shape=SMALL)


@pytest.mark.parametrize("space", [LAYER, MODULE], ids=["layer", "module"])
def test_nni_model_space(space):
    model_space = EpnasSpace(space, input_shape=SMALL)
    labels = model_space.simplify()
    assert "layer00_type" in labels if space.kind == "layer" else "branch00_type" in labels
    arch = random_arch(space, random.Random(3))
    frozen = model_space.freeze(arch_to_sample(arch, space))
    assert frozen.net.arch == arch and frozen(torch.randn(1, *SMALL)).shape == (1, 10)
    assert sample_to_arch(arch_to_sample(arch, space), space) == arch
    # NNI's own sampling: a sample is either rejected by the space's constraint (NNI's strategies
    # retry on it) or it builds -- never a network that fails to build
    from nni.mutable import ConstraintViolation
    from numpy.random import RandomState

    rs, built = RandomState(0), 0
    for _ in range(20):
        try:
            net = model_space.random(random_state=rs)
        except ConstraintViolation as exc:
            assert "needs at least one source" in str(exc) or "no branch propagates" in str(exc)
            continue
        assert net(torch.randn(1, *SMALL)).shape == (1, 10)
        built += 1
    assert built >= 10


def test_cost_comes_from_cost_model():
    from search_spaces import cost as costmodel

    arch = random_arch(LAYER, random.Random(1))
    net = build_network(arch, LAYER, input_shape=SMALL)
    assert arch_cost(arch, LAYER, SMALL, 10) == costmodel.profile(net, SMALL)


def test_morph_actions_renumber_sources():
    arch = {"space": "layer", "layers": [_layer(), _layer(), _layer("add", src1=0, src2=1)]}
    ins = insert_unit(arch, 1, _layer("maxpool2d"))
    assert ins["layers"][3]["src1"] == 0 and ins["layers"][3]["src2"] == 2 and check_arch(ins, LAYER) is None
    rem = remove_unit(arch, 1)
    assert rem["layers"][1] == _layer("add", src1=0, src2=-1) and check_arch(rem, LAYER) is None
    assert check_arch(remove_unit(remove_unit(arch, 1), 0), LAYER) is not None  # add left without a source
    cell = {"space": "module", "branches": [_branch(propagate=0), _branch(src1=1, src2=1)]}
    assert remove_unit(cell, 0)["branches"] == [_branch(src1=0, src2=0)]  # redirected to the removed input
    assert insert_unit(cell, 0, _branch())["branches"][2]["src1"] == 2


# ------------------------------------------------------------------------------------------ reward


def test_reward_formula_at_known_points():
    c = {"params": (None, 1000.0), "flops": (100.0, None), "intensity": (10.0, 20.0)}
    ok = {"params": 900, "flops": 150, "intensity": 15}
    assert constrained_reward(0.8, ok, c) == pytest.approx(0.8)                              # feasible
    assert constrained_reward(0.8, {**ok, "params": 1500}, c) == pytest.approx(0.8 * 0.9 ** 1.5)  # upper +50%
    assert constrained_reward(0.8, {**ok, "flops": 50}, c) == pytest.approx(0.8 * 0.9 ** 1.5)     # lower -50%
    assert constrained_reward(0.8, {**ok, "intensity": 5}, c) == pytest.approx(0.8 * 0.9 ** 1.5)
    assert constrained_reward(0.8, {**ok, "intensity": 30}, c) == pytest.approx(0.8 * 0.9 ** 1.5)
    both = constrained_reward(0.8, {**ok, "params": 2000, "flops": 50}, c)
    assert both == pytest.approx(0.8 * 0.9 ** 2 * 0.9 ** 1.5)                               # penalties multiply
    # less violation -> more reward; any violation costs at least the base penalty
    assert constrained_reward(0.8, {**ok, "params": 1001}, c) < 0.8 * 0.9 + 1e-9
    assert constrained_reward(0.8, {**ok, "params": 1100}, c) > constrained_reward(0.8, {**ok, "params": 1200}, c)
    assert constrained_reward(0.8, ok, c, base_penalty=0.5) == 0.8
    assert constrained_reward(0.8, {**ok, "params": 2000}, c, base_penalty=0.5) == pytest.approx(0.8 * 0.5 ** 2)


# ------------------------------------------------------------------------------------------ policy


def _kind_of(names, actions):
    return KINDS[actions[names.index("kind")]]


def test_masked_actions_never_chosen():
    cfg = EpnasConfig(seed=0)
    space = SpaceConfig(kind="layer", max_layers=3)
    policy = PolicyNet(space, cfg)
    with torch.no_grad():  # bias the heads hard toward the actions the masks must forbid
        policy.heads["h_kind"].bias[:] = torch.tensor([50.0, 50.0, -50.0])
        policy.heads["h_type"].bias[4] = 50.0   # 'add'
        policy.heads["h_src1"].bias[-1] = 50.0  # the last layer slot
    gen = torch.Generator().manual_seed(0)
    full = {"space": "layer", "layers": [_layer(), _layer(), _layer()]}
    single = {"space": "layer", "layers": [_layer()]}
    for _ in range(60):
        for arch in (full, single):
            child, actions, logp, _, names = run_policy(policy, arch, cfg, gen=gen)
            assert check_arch(child, space) is None and torch.isfinite(logp)
            kind = _kind_of(names, actions)
            assert not (arch is full and kind == "insert")
            assert not (arch is single and kind == "remove")
            if kind == "insert" and actions[names.index("position")] == 0:
                assert child["layers"][0]["type"] != "add"
    # removing layer 0 would leave the later 'add' without a source: masked
    chain = {"space": "layer", "layers": [_layer(), _layer("add", src1=0)]}
    policy.heads["h_kind"].bias.data[:] = torch.tensor([-50.0, 50.0, -50.0])
    policy.heads["h_position"].bias.data[0] = 50.0
    for _ in range(30):
        child, actions, *_ , names = run_policy(policy, chain, cfg, gen=gen)
        assert actions[names.index("position")] == 1 and check_arch(child, space) is None


def test_reinforce_moves_policy_toward_rewarded_action():
    cfg = EpnasConfig(seed=0, lr=0.02, entropy_weight=0.0)
    space = SpaceConfig(kind="layer", max_layers=4)
    ctl = EpnasController(cfg, space)
    arch = {"space": "layer", "layers": [_layer(), _layer()]}
    gen = torch.Generator().manual_seed(1)

    def p_remove(n=200):
        with torch.no_grad():
            picks = [_kind_of(r[4], r[1]) for r in (run_policy(ctl.policy, arch, cfg, gen=gen) for _ in range(n))]
        return picks.count("remove") / n

    before = p_remove()
    for _ in range(25):
        recs = []
        for _ in range(8):
            with torch.no_grad():
                _, actions, _, _, names = run_policy(ctl.policy, arch, cfg, gen=gen)
            recs.append({"parent_arch": arch, "actions": actions,
                         "reward": 1.0 if _kind_of(names, actions) == "remove" else 0.0})
        ctl.update_policy(recs)
    assert before < 0.5 and p_remove() > 0.9


def _toy(arch):  # known optimum 1.0: every slot a 256-channel conv2d
    return sum(layer["type"] == "conv2d" and layer["channels"] == 256 for layer in arch["layers"]) / 4


def test_controller_finds_known_optimum_on_toy_reward():
    space = SpaceConfig(kind="layer", max_layers=4)
    ctl = EpnasController(EpnasConfig(branches=8, episodes=16, steps=3, seed=0, init_units=1, lr=0.01), space)
    n = 0
    while not ctl.finished:
        proposals = ctl.propose()
        assert proposals
        for key, arch, meta in proposals:
            assert check_arch(arch, space) is None and meta["episode"] == ctl.episode
            ctl.tell(key, _toy(arch))
            n += 1
    assert n == 16 * 3 * 8 and len(ctl.history) == 16  # (first reached in episode 11)
    assert ctl.best["reward"] == 1.0
    assert ctl.history[-1]["mean_reward"] > ctl.history[0]["mean_reward"] + 0.5


def test_results_any_order_failures_and_progressive_branches():
    space = SpaceConfig(kind="layer", max_layers=5)
    ctl = EpnasController(EpnasConfig(branches=3, episodes=2, steps=2, seed=4, failure_reward=-0.5), space)
    first = ctl.propose()
    assert [m["branch"] for _, _, m in first] == [0, 1, 2] and ctl.propose() == []  # all branches busy
    k0, k1, k2 = (k for k, _, _ in first)
    parent1 = copy.deepcopy(ctl.branches[1]["arch"])
    assert ctl.tell(k2, 0.7) and ctl.tell(k0, 0.5)
    assert not ctl.tell(k0, 0.9) and not ctl.tell("t99999", 0.1)  # repeats and unknown keys ignored
    assert ctl.tell(k1, None)  # failed / killed trial
    assert ctl.records[k1]["reward"] == -0.5 and ctl.records[k1]["status"] == "failed"
    assert ctl.branches[1]["arch"] == parent1 and ctl.branches[0]["arch"] == ctl.records[k0]["arch"]
    second = {m["branch"]: (k, m) for k, _, m in ctl.propose()}
    assert second[0][1]["parent"] == first[0][2]["trial"] and second[0][1]["step"] == 1
    for k, _ in second.values():
        ctl.tell(k, 0.1)
    assert ctl.episode == 1 and len(ctl.history) == 1  # episode ended, one accumulated update
    starts = [arch_to_json(b["arch"]) for b in ctl.branches]
    assert arch_to_json(ctl.records[k2]["arch"]) in starts  # the top network seeds the next episode


def test_controller_state_round_trip(tmp_path):
    space = SpaceConfig(kind="module", max_branches=4)
    cfg = EpnasConfig(branches=2, episodes=3, steps=2, seed=7)
    a = EpnasController(cfg, space)
    for _ in range(3):
        for key, arch, _ in a.propose():
            a.tell(key, len(arch["branches"]) / 4)
    pending = a.propose()
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = EpnasController(cfg, space)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert [k for k, _, _ in b.propose()] == [k for k, _, _ in pending]  # running trials re-proposed
    for ctl in (a, b):
        for key, arch, _ in pending:
            ctl.tell(key, 0.3)
    while not a.finished:
        pa, pb = a.propose(), b.propose()
        assert [(k, arch_to_json(x)) for k, x, _ in pa] == [(k, arch_to_json(x)) for k, x, _ in pb]
        for (k, x, _) in pa:
            a.tell(k, len(x["branches"]) / 4)
            b.tell(k, len(x["branches"]) / 4)
    assert b.finished and a.baseline == b.baseline
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------------ sharing


def _tiny_net(channels=16, filt=3):
    arch = {"space": "layer", "layers": [_layer(channels=channels, filter=filt), _layer("maxpool2d")]}
    return build_network(arch, LAYER, input_shape=SMALL)


def test_copy_sliced_slices_and_pads():
    dst = torch.zeros(4, 3)
    copy_sliced(dst, torch.ones(2, 5))
    assert dst[:2, :3].eq(1).all() and dst[2:].eq(0).all()
    big = torch.zeros(2, 2)
    copy_sliced(big, torch.arange(9.0).view(3, 3))
    assert big.tolist() == [[0, 1], [3, 4]]


def test_sharing_dictionary_best_score_wins_and_shapes_adapt(tmp_path):
    store = SharedWeights(tmp_path / "shared.pt")
    a, b = _tiny_net(), _tiny_net()
    assert store.update(a, 0.5) > 0
    assert store.update(b, 0.4) == 0          # worse model loses every clash
    entries = store.read()
    w = entries["0:conv2d"]["state"]["op.0.weight"]
    assert torch.equal(w, a.layers[0].op[0].weight) and entries["0:conv2d"]["score"] == 0.5
    store.update(b, 0.6)
    assert torch.equal(store.read()["0:conv2d"]["state"]["op.0.weight"], b.layers[0].op[0].weight)
    wide = _tiny_net(channels=32, filt=5)     # scaled layer: sliced/padded into the new shape
    assert store.load_into(wide) >= 2
    assert torch.equal(wide.layers[0].op[0].weight[:16, :, :3, :3], b.layers[0].op[0].weight)


def test_corrupted_sharing_file_is_ignored_with_warning(tmp_path):
    path = tmp_path / "shared.pt"
    path.write_bytes(b"\x00not a torch file")
    store = SharedWeights(path)
    with pytest.warns(RuntimeWarning, match="ignoring unreadable parameter-sharing file"):
        assert store.load_into(_tiny_net()) == 0
    with pytest.warns(RuntimeWarning):
        store.update(_tiny_net(), 0.3)       # replaced by a good file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.read()


def _writer(path, seed, n):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    store = SharedWeights(path)
    for i in range(n):
        store.update(_tiny_net(), seed + i / 100)


def test_concurrent_writers_never_tear_the_file(tmp_path):
    path = tmp_path / "shared.pt"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), s, 4)) for s in range(4)]
    for p in procs:
        p.start()
    store = SharedWeights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn file would warn
        while any(p.is_alive() for p in procs):
            store.read()
        for p in procs:
            p.join()
            assert p.exitcode == 0
        entries = store.read()
    assert entries["0:conv2d"]["score"] == pytest.approx(3.03)  # the best write won
    assert not list(tmp_path.glob(".shared.pt.*"))             # no temp files left behind


# ------------------------------------------------------------------------------------------ tuner


def _tuner(tmp_path, **kw):
    args = dict(space="layer", branches=2, episodes=2, steps=2, max_layers=4, input_shape=[1, 8, 8],
                state_file=str(tmp_path / "tuner.pt"), seed=3)
    args.update(kw)
    return EpnasTuner(**args)


def test_tuner_state_round_trip_and_failed_trials(tmp_path):
    t = _tuner(tmp_path, params_max=5e4, failure_reward=0.0)
    params = t.generate_multiple_parameters([0, 1])
    assert len(params) == 2 and params[0]["params_max"] == 5e4 and params[0]["space"] == "layer"
    assert {"arch", "trial", "episode", "step", "branch", "parent", "max_layers"} <= set(params[0])
    t.receive_trial_result(1, params[1], {"default": 0.6, "accuracy": 0.6})
    t.trial_end(1, True)
    t.trial_end(0, False)                        # killed before reporting: failure, search goes on
    assert t.search.records["t00000"]["status"] == "failed"
    more = t.generate_multiple_parameters([2, 3])
    assert len(more) == 2
    # restart (nnictl resume): a new tuner process loads the saved state
    t2 = _tuner(tmp_path, params_max=5e4, failure_reward=0.0)
    assert t2.search.state_dict()["records"] == t.search.state_dict()["records"]
    again = t2.generate_multiple_parameters([10, 11])   # the running trials are proposed again
    assert [p["trial"] for p in again] == [p["trial"] for p in more]
    for pid, p in zip((10, 11), again):
        t2.receive_trial_result(pid, p, {"default": 0.5})
    t2.receive_trial_result(2, more[0], {"default": 0.9})  # a late result of the old process: ignored
    assert t2.search.episode == 1


def test_tuner_pays_owed_trials_at_episode_boundary(tmp_path, monkeypatch):
    t = _tuner(tmp_path, steps=1)
    sent = []
    first = t.generate_multiple_parameters([0, 1], st_callback=lambda pid, p: sent.append((pid, p)))
    t.receive_trial_result(0, first[0], {"default": 0.4})
    assert t.generate_multiple_parameters([2]) == [] and t.owed == 1   # episode waits for branch 1
    t.receive_trial_result(1, first[1], {"default": 0.5})               # -> next episode, owed trial sent
    assert len(sent) == 1 and sent[0][1]["episode"] == 1 and t.owed == 0


def test_tuner_class_args_typos_and_infeasible_constraints(tmp_path):
    with pytest.raises(UserError, match="unknown EPNAS tuner classArgs key 'branchs' \\(did you mean 'branches'\\?\\)"):
        check_class_args({"branchs": 8})
    with pytest.raises(UserError, match="intensity >= 80 FLOPs/byte is unsatisfiable"):
        _tuner(tmp_path, intensity_min=80)          # 8x8 input: no network exceeds 32 FLOPs/byte
    with pytest.raises(UserError, match="params <= 10 is unsatisfiable"):
        _tuner(tmp_path, params_max=10)
    with pytest.raises(UserError, match="params_min=5e\\+06 is above params_max=1e\\+06"):
        _tuner(tmp_path, params_min=5e6, params_max=1e6)
    with pytest.raises(UserError, match="unknown algorithm"):
        _tuner(tmp_path, algorithm="bayes")
    with pytest.raises(UserError, match="start architecture is invalid: 5 layers exceed max_layers=4"):
        EpnasController(EpnasConfig(branches=1), SpaceConfig(max_layers=4),
                        start_archs=[{"space": "layer", "layers": [_layer()] * 5}])


@pytest.mark.parametrize("name", ["epnas_layer.yml", "epnas_module.yml"])
def test_shipped_configs_check_out(name, capsys):
    assert check_main([str(REPO / "experiments" / "configs" / name)]) == 0
    assert "maxTrialNumber" in capsys.readouterr().out


def test_config_check_exits_2_with_one_line(tmp_path, capsys):
    import yaml

    cfg = yaml.safe_load((REPO / "experiments/configs/epnas_layer.yml").read_text())
    cfg["tuner"]["classArgs"]["episdoes"] = 3
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        check_main([str(bad)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "'episdoes'" in err and "episodes" in err


# ------------------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_same_encoding_budget_and_state(name, tmp_path):
    space = SpaceConfig(kind="layer", max_layers=4)
    cfg = EpnasConfig(branches=3, episodes=3, steps=2, seed=1, init_units=1)
    make = (lambda: BASELINES[name](cfg, space, population=4, sample=2)) if name == "evolution" else \
        (lambda: BASELINES[name](cfg, space))
    a = make()
    n = 0
    while not a.finished:
        proposals = a.propose()
        assert proposals and len(a.pending()) <= cfg.branches
        for key, arch, meta in proposals:
            assert check_arch(arch, space) is None and {"trial", "episode", "step", "branch", "parent"} <= set(meta)
            a.tell(key, _toy(arch))
            n += 1
        if n == 6:
            torch.save(a.state_dict(), tmp_path / "s.pt")
            b = make()
            b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
            assert b.records == a.records
    assert n == 3 * 2 * 3 and a.best is not None


# ------------------------------------------------------------------------------------------ trial


def _trial_cfg(**kw):
    base = dict(dataset="digits", limit=96, batch_size=32, batch_ref=32, lr=0.05, epochs=2, stop_epoch=1,
                max_layers=4, device="cpu", progress=False, threads=1, augment=False)
    base.update(kw)
    return build_config(EpnasTrialConfig, base)


def test_trial_runner_end_to_end_on_digits(tmp_path):
    arch = {"space": "layer", "layers": [_layer(), _layer("maxpool2d"), _layer(src1=0)]}
    cfg = _trial_cfg(arch=json.dumps(arch), params_max=100.0, trial=5, episode=1, step=2, branch=3, parent=1)
    s = execute("epnas", cfg, run, tmp_path / "trials" / "a")
    numeric = {"default", "accuracy", "params", "flops", "intensity", "episode", "step", "branch", "parent", "trial"}
    assert numeric <= set(s) and all(isinstance(s[k], (int, float)) for k in numeric)
    assert (s["episode"], s["step"], s["branch"], s["parent"]) == (1, 2, 3, 1)
    assert s["params"] > 100 and s["default"] == pytest.approx(
        constrained_reward(s["accuracy"], s, {"params": (None, 100.0)}))
    assert s["shared_loaded"] == 0 and s["shared_written"] > 0
    assert (tmp_path / "trials" / "epnas_shared.pt").exists()
    run_dir = tmp_path / "trials" / "a"
    assert json.loads((run_dir / "arch.json").read_text())["arch"] == arch
    assert (run_dir / "metrics.csv").exists() and (run_dir / "model.pt").exists()
    # a second (module) trial in the same experiment reuses shared weights (stem, head)
    s2 = execute("epnas", _trial_cfg(space="module", max_branches=3, stages=2, cells_per_stage=1, cell_channels=32),
                 run, tmp_path / "trials" / "b")
    assert s2["shared_loaded"] >= 1 and math.isfinite(s2["default"])
    # sharing switched off
    s3 = execute("epnas", _trial_cfg(share=False, seed=2), run, tmp_path / "solo" / "c")
    assert s3["shared_loaded"] == 0 and not (tmp_path / "solo" / "epnas_shared.pt").exists()


def test_trial_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'stop_epochs' \\(did you mean 'stop_epoch'\\?\\)"):
        _trial_cfg(stop_epochs=3)
    with pytest.raises(UserError, match="unknown type 'lstm'"):
        execute("epnas", _trial_cfg(arch=json.dumps({"space": "layer", "layers": [_layer("lstm")]})), run,
                tmp_path / "x")
    deep = {"space": "layer", "layers": [_layer()] * 5}
    with pytest.raises(UserError, match="5 layers exceed max_layers=4"):
        execute("epnas", _trial_cfg(arch=json.dumps(deep)), run, tmp_path / "y")
    with pytest.raises(UserError, match="not valid JSON"):
        execute("epnas", _trial_cfg(arch="{layers"), run, tmp_path / "z")
    with pytest.raises(UserError, match="stop_epoch"):
        _trial_cfg(stop_epoch=5, epochs=2)
    with pytest.raises(UserError, match="unknown EPNAS space"):
        _trial_cfg(space="cell")
    with pytest.raises(UserError, match="flops_min=10 is above flops_max=1"):
        _trial_cfg(flops_min=10, flops_max=1)


def test_feasibility_check_on_cifar_shape():
    check_constraints_feasible({"params": (None, 2e6), "flops": (None, 8e7), "intensity": (80, None)},
                               SpaceConfig(), (3, 32, 32), 10)
    with pytest.raises(UserError, match="flops <= 1000 is unsatisfiable"):
        check_constraints_feasible({"flops": (None, 1000)}, SpaceConfig(), (3, 32, 32), 10)


# ------------------------------------------------------------------------------------------ nnictl


@pytest.mark.nnictl
@pytest.mark.slow
def test_epnas_tuner_under_nnictl(tmp_path):
    """The customized tuner drives a real nnictl experiment: every trial trains one morphed network
    and the web UI shows its reward, accuracy, costs and episode/step/branch/parent."""
    import shlex
    import sys

    from experiments.launch import run_experiment

    config = {
        "experimentName": "test-epnas",
        # the real space, as in experiments/configs/epnas_*.yml (nnictl hands it to the tuner)
        "searchSpace": nni_search_space(SpaceConfig(kind="layer", max_layers=4)),
        "trialCommand": (f"{shlex.quote(sys.executable)} -m experiments.trial epnas --dataset digits --limit 64 "
                         "--batch_size 32 --batch_ref 32 --lr 0.05 --epochs 1 --stop_epoch 1 --threads 1 "
                         "--device cpu --progress false"),
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 2,
        "maxTrialNumber": 8,
        "tuner": {"codeDirectory": str(REPO), "className": "strategies.epnas_nni.EpnasTuner",
                  "classArgs": {"space": "layer", "branches": 2, "episodes": 2, "steps": 2, "max_layers": 4,
                                "params_max": 20000, "input_shape": [1, 8, 8], "seed": 0}},
        "trainingService": {"platform": "local", "useActiveGpu": False},
    }
    with run_experiment(config, tmp_path=tmp_path, timeout=900) as exp:
        jobs = exp.trial_jobs
        assert len(jobs) == 8 and all(j["status"] == "SUCCEEDED" for j in jobs), exp.log_tail()
        for job in jobs:
            tid = job["trialJobId"]
            shown = exp.hyper_parameters(tid)["parameters"]
            out = exp.trial_output_dir(tid)
            assert json.loads((out / "arch.json").read_text())["arch"] == json.loads(shown["arch"])
            final = exp.final_metric(tid)
            assert {"default", "accuracy", "params", "flops", "intensity", "episode", "step", "branch",
                    "parent"} <= set(final)
            assert final["episode"] == shown["episode"] and final["branch"] == shown["branch"]
        state = torch.load(exp.experiment_dir / "epnas_tuner_state.pt", weights_only=True)
        records = state["search"]["records"]
        assert len(records) == 8 and all(r["status"] == "done" for r in records.values())
        assert state["search"]["episode"] == 2 and len(state["search"]["history"]) == 2


def test_same_controller_as_nas_experiment_strategy(tmp_path, monkeypatch):
    """EpnasStrategy (the multi-trial Strategy adapter) in NNI's NasExperiment, sequential engine."""
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment
    from nni.nas.experiment.config import SequentialEngineConfig

    from search_spaces.epnas import EpnasSpace
    from strategies.epnas_nni import EpnasStrategy

    monkeypatch.setenv("HOME", str(tmp_path))  # NNI registers experiments under ~/nni-experiments
    seen = []

    def evaluate(model):
        seen.append(model.net.arch)
        nni.report_final_result(len(model.net.arch["layers"]) / 4)

    space = SpaceConfig(kind="layer", max_layers=4)
    strategy = EpnasStrategy(space="layer", branches=4, episodes=3, steps=2, max_layers=4, input_shape=[1, 8, 8],
                             init_units=1, seed=0)
    exp = NasExperiment(EpnasSpace(space, input_shape=(1, 8, 8)), FunctionalEvaluator(evaluate), strategy)
    exp.config.experiment_working_directory = str(tmp_path)
    exp.config.execution_engine = SequentialEngineConfig()
    try:
        exp.run()
    finally:
        exp.stop()
    search = strategy.search
    assert len(seen) == len(search.records) == 3 * 2 * 4 and search.episode == 3
    assert all(r["status"] == "done" for r in search.records.values())
    assert [r["arch"] for r in search.records.values()] == seen      # the engine trained what was proposed
    assert search.best["reward"] == 1.0                               # toy optimum: a 4-layer network


# ------------------------------------------------------------------------------------------ analysis


def test_analysis_report_study(tmp_path):
    from analysis.epnas import report_study

    dirs = []
    rng = random.Random(0)
    for i in range(12):
        d = tmp_path / "trials" / f"tr{i}"
        d.mkdir(parents=True)
        acc = 0.5 + 0.01 * i
        params = 1000 * (i + 1)
        reward = constrained_reward(acc, {"params": params}, {"params": (None, 6000.0)})
        (d / "config.json").write_text(json.dumps({"method": "epnas", "config": {"space": "layer", "params_max": 6000.0}}))
        (d / "summary.json").write_text(json.dumps({
            "method": "epnas", "default": reward, "reward": reward, "accuracy": acc, "params": params,
            "flops": 10 * params, "intensity": rng.uniform(1, 20), "trial": i, "episode": i // 4, "step": i % 2,
            "branch": i % 2, "parent": i - 2, "layers": 2}))
        (d / "arch.json").write_text(json.dumps({"arch": {"space": "layer", "layers": [_layer()]}}))
        dirs.append(d)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"method": "proxyless"}))
    files = report_study(dirs + [tmp_path / "other"], tmp_path / "out")
    names = {f.name for f in files}
    assert names == {"trials.csv", "episodes.csv", "search.png", "best_arch.json", "curves.csv", "curves.png",
                     "episodes.png", "lineage.png", "best_arch.png"}
    import pandas as pd

    t = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(t) == 12 and t["feasible"].sum() == 6
    e = pd.read_csv(tmp_path / "out" / "episodes.csv")
    assert list(e["episode"]) == [0, 1, 2] and e["trials"].tolist() == [4, 4, 4]
    best = json.loads((tmp_path / "out" / "best_arch.json").read_text())
    assert best["trial"] == 5 and best["feasible"] and best["arch"]["layers"][0]["type"] == "conv2d"
    assert (tmp_path / "out" / "search.png").stat().st_size > 10_000


def test_bench_smoke(tmp_path, capsys):
    from bench.epnas_efficiency import BenchConfig, _spearman, auc, bootstrap_ci, main, summarise

    assert _spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert _spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert main(["--branches", "1", "--episodes", "1", "--steps", "2", "--proxy-epochs", "1", "--rank-archs", "2",
                 "--full-epochs", "2", "--max-layers", "3", "--seeds", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "epnas_efficiency.json").read_text())
    assert set(res["search"]) == {"epnas", "epnas_share", "random", "evolution", "morph"}
    assert all(len(a["rewards"]) == 2 and all(len(r) == 2 for r in a["rewards"]) for a in res["search"].values())
    s = res["summary"]
    assert len(s["fraction_of_budget_to_random_best"]) == 2 and set(s["auc"]) == set(res["search"])
    for v in s["auc"].values():
        assert v["ci95"][0] <= v["mean"] <= v["ci95"][1] and len(v["per_seed"]) == 2
    assert len(s["checks"]) == 4 and all(isinstance(ok, bool) for ok in s["checks"].values())
    out = capsys.readouterr().out
    assert "(i)" in out and "(iii)" in out and ("MET" in out)
    assert (tmp_path / "epnas_efficiency.png").stat().st_size > 5_000


def _fake_trial(d, *, algorithm, trial, episode, step, branch, parent, acc, params, entropy=None, action="",
                arch=None, epochs=2):
    d.mkdir(parents=True)
    reward = constrained_reward(acc, {"params": params}, {"params": (None, 6000.0)})
    (d / "config.json").write_text(json.dumps({"method": "epnas", "config": {
        "space": "layer", "params_max": 6000.0, "algorithm": algorithm, "stop_epoch": epochs}}))
    (d / "summary.json").write_text(json.dumps({
        "method": "epnas", "default": reward, "reward": reward, "accuracy": acc, "params": params,
        "flops": 10 * params, "intensity": 5.0, "trial": trial, "episode": episode, "step": step, "branch": branch,
        "parent": parent, "layers": 2, "algorithm": algorithm, "entropy": entropy, "action": action,
        "epochs_trained": epochs}))
    (d / "arch.json").write_text(json.dumps({"arch": arch or {"space": "layer", "layers": [_layer()]}}))
    return d


def test_analysis_compares_algorithms_entropy_lineage_and_best_arch(tmp_path):
    import pandas as pd
    from matplotlib.text import Annotation

    from analysis.epnas import plot_arch, report_study

    best_arch = {"space": "layer", "layers": [_layer(), _layer("maxpool2d"), _layer("add", src1=0),
                                              _layer(channels=64, src1=0, src2=1)]}
    dirs = []
    # EPNAS: 2 episodes x 2 steps x 2 branches; parents form chains; trial 6 is the best feasible one
    for i in range(8):
        ep, st, br = i // 4, (i % 4) // 2, i % 2
        parent = -1 if i < 2 else i - 2
        params = 8000 if i == 7 else 1000 + 100 * i          # trial 7: best accuracy but infeasible
        acc = 0.9 if i == 7 else 0.5 + 0.05 * i
        dirs.append(_fake_trial(tmp_path / "exp_epnas" / "trials" / f"t{i}", algorithm="epnas", trial=i, episode=ep,
                                step=st, branch=br, parent=parent, acc=acc, params=params, entropy=1.0 - 0.1 * ep,
                                action=f"insert conv2d@{i % 3}", arch=best_arch if i == 6 else None))
    # random search: same budget, flat rewards, half infeasible
    for i in range(8):
        dirs.append(_fake_trial(tmp_path / "exp_random" / "trials" / f"t{i}", algorithm="random", trial=i,
                                episode=i // 4, step=(i % 4) // 2, branch=i % 2, parent=-1, acc=0.55,
                                params=1000 if i % 2 else 9000, action="random", epochs=3))
    files = report_study(dirs, tmp_path / "out")
    assert {"curves.csv", "curves.png", "episodes.png", "lineage.png", "best_arch.png"} <= {f.name for f in files}
    c = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert set(c["algorithm"]) == {"epnas", "random"}
    for algo, g in c.groupby("algorithm"):
        assert g["models"].tolist() == list(range(1, 9))
        assert g["epochs"].tolist() == [(2 if algo == "epnas" else 3) * m for m in range(1, 9)]
        assert g["best_so_far"].tolist() == g["reward"].cummax().tolist()
    assert c[c["algorithm"] == "epnas"]["best_so_far"].iloc[-1] > c[c["algorithm"] == "random"]["best_so_far"].iloc[-1]
    e = pd.read_csv(tmp_path / "out" / "episodes.csv")
    ep = e[e["algorithm"] == "epnas"].set_index("episode")
    assert ep["mean_entropy"].tolist() == pytest.approx([1.0, 0.9])
    assert ep["feasible_fraction"].tolist() == [1.0, 0.75]
    rnd = e[e["algorithm"] == "random"]
    assert rnd["feasible_fraction"].tolist() == [0.5, 0.5] and rnd["mean_entropy"].isna().all()
    t = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert {"algorithm", "entropy", "action", "epochs", "study"} <= set(t.columns)
    for name in ("curves.png", "episodes.png", "lineage.png", "best_arch.png"):
        assert (tmp_path / "out" / name).stat().st_size > 5_000
    # the diagram: one box per layer + the input, sequential arrows and one arrow per Src1 / Src2
    fig = plot_arch(best_arch)
    ax = fig.axes[0]
    arrows = [a for a in ax.texts if isinstance(a, Annotation)]
    boxes = [a for a in ax.texts if not isinstance(a, Annotation)]
    assert len(boxes) == 5 and len(arrows) == 4 + 3
    assert any("conv2d" in b.get_text() and "64 ch" in b.get_text() for b in boxes)
    fig = plot_arch({"space": "module", "branches": [_branch(), _branch(src1=1, src2=0)]})
    assert len([a for a in fig.axes[0].texts if isinstance(a, Annotation)]) == 4   # src arrows only


def test_algorithm_entropy_and_action_reach_the_run_folder(tmp_path):
    from analysis.epnas import trials_table

    dirs = []
    for algorithm in ("epnas", "random"):
        t = _tuner(tmp_path, algorithm=algorithm, state_file=str(tmp_path / f"{algorithm}.pt"), steps=1, episodes=1,
                   branches=1)
        (p,) = t.generate_multiple_parameters([0])
        assert p["algorithm"] == algorithm and "action" in p
        d = tmp_path / algorithm / "trials" / "a"
        s = execute("epnas", _trial_cfg(**{k: v for k, v in p.items()}), run, d)
        assert s["algorithm"] == algorithm and s["action"] == p["action"]
        dirs.append(d)
    t = trials_table(dirs).set_index("algorithm")
    assert t.loc["epnas", "entropy"] > 0 and math.isnan(t.loc["random", "entropy"])
    assert t.loc["random", "action"] == "random" and t.loc["epnas", "action"]


def test_bench_summary_figures_on_known_curves():
    from bench.epnas_efficiency import auc, bootstrap_ci, paired_ratio_ci, summarise

    assert auc([0.2, 0.5, 0.4, 0.9]) == pytest.approx((0.2 + 0.5 + 0.5 + 0.9) / 4)
    est, lo, hi = bootstrap_ci([1.0, 2.0, 3.0])
    assert est == 2.0 and 1.0 <= lo <= 2.0 <= hi <= 3.0
    assert paired_ratio_ci([2.0, 2.0], [1.0, 1.0]) == (2.0, 2.0, 2.0)

    def arm(rewards):
        return {"auc": auc(rewards), "best_reward": max(rewards), "feasible_fraction": 1.0, "rewards": rewards}

    seeds = []
    for hit in (2, 3, None):  # EPNAS reaches random's best (0.6) at model 2, 3, never
        ep = [0.1] * 8
        if hit:
            ep[hit - 1:] = [0.7] * (8 - hit + 1)
        s = {"epnas": arm(ep), "epnas_share": arm(ep), "random": arm([0.3, 0.6] + [0.5] * 6),
             "evolution": arm([0.5] * 8), "morph": arm([0.5] * 8)}
        for a in s.values():
            hits = [i for i, r in enumerate(a["rewards"]) if r >= 0.6]
            a["trials_to_random_best"] = hits[0] + 1 if hits else None
        seeds.append(s)
    out = summarise(seeds, budget=8)
    assert out["fraction_of_budget_to_random_best"] == [0.25, 0.375, None]
    assert out["median_fraction"] == 0.375
    assert out["checks"]["epnas_reaches_random_best_within_half_budget (median fraction <= 0.5)"]
    assert out["auc_ratio_share_on_over_off"]["ratio"] == pytest.approx(1.0)


_RESUME_DRIVER = r'''
import json, sys
import torch

def drive(tuner, limit, pid=0):
    """The same protocol everywhere: keep `branches` trials running, finish the oldest first."""
    running, log, told = [], [], 0
    while told < limit:
        want = tuner.settings.controller.branches - len(running)
        got = tuner.generate_multiple_parameters(list(range(pid, pid + want))) if want else []
        for p in got:
            running.append((pid, p))
            log.append(p)
            pid += 1
        if not running:
            break
        q, p = running.pop(0)
        arch = json.loads(p["arch"])
        reward = 0.1 * len(arch["layers"]) + 0.01 * (p["trial"] % 3)   # deterministic in the network
        tuner.receive_trial_result(q, p, {"default": reward})
        told += 1
    return log

def main(state, limit, out):
    from strategies.epnas_nni import EpnasTuner

    tuner = EpnasTuner(space="layer", branches=2, episodes=3, steps=2, max_layers=4, input_shape=[1, 8, 8],
                       state_file=state, seed=7)
    log = drive(tuner, limit, pid=1000 * len(tuner.search.records))
    result = {"log": log, "episode": tuner.search.episode, "finished": tuner.search.finished,
              "records": len(tuner.search.records)}
    with open(out, "w") as f:
        json.dump(result, f)
    return result

if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[4])
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
'''


def test_tuner_resumes_in_a_new_process_and_continues_consistently(tmp_path):
    """``nnictl resume`` without nnictl: a tuner process is stopped mid-search (trials running,
    inside an episode), a NEW process builds a new tuner on the same state file, re-proposes the
    running trials and finishes the search exactly as an uninterrupted run does."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "driver.py"
    script.write_text(_RESUME_DRIVER)

    def proc(state, limit, out):
        r = subprocess.run([sys.executable, str(script), str(state), str(limit), str(out), root],
                           capture_output=True, text=True, timeout=240, cwd=root)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(Path(out).read_text())

    driver: dict = {"__name__": "epnas_resume_driver"}
    exec(compile(_RESUME_DRIVER, str(script), "exec"), driver)
    full = driver["main"](str(tmp_path / "ref.pt"), 10**6, str(tmp_path / "ref.json"))   # uninterrupted, here
    first = proc(tmp_path / "cut.pt", 5, tmp_path / "a.json")                  # stopped in episode 1
    assert not first["finished"] and first["episode"] == 1 and first["records"] < 12
    second = proc(tmp_path / "cut.pt", 10**6, tmp_path / "b.json")            # a new process resumes
    assert full["finished"] and second["finished"] and full["records"] == second["records"] == 12
    keys = ("trial", "arch", "episode", "step", "branch", "parent", "action")
    resumed = {p["trial"]: {k: p[k] for k in keys} for p in first["log"] + second["log"]}
    reference = {p["trial"]: {k: p[k] for k in keys} for p in full["log"]}
    assert resumed == reference                       # same networks, same lineage, same morphs
    told_first = {p["trial"] for p in first["log"]}
    rerun = [p["trial"] for p in second["log"] if p["trial"] in told_first]
    assert rerun and rerun == sorted(rerun)           # the trials that were running are proposed again, first
    assert [p["trial"] for p in second["log"][:len(rerun)]] == rerun
    assert torch.load(tmp_path / "cut.pt", weights_only=True)["search"]["episode"] == 3
