"""EPNAS spaces as NNI mutables (issue #20, parts 1, 5, 6): valid by construction for NNI's own
strategies and ours, the NNI sample encoding round-trips with the controller's morph actions, the
check-table prior on the insert position, one-line errors (exit 2) for bad samples and classArgs."""
import logging
import random
from pathlib import Path

import pytest
import torch
import yaml

from search_spaces.epnas import (COUNT_LABELS, InvalidArchitecture, SpaceConfig, arch_to_json, arch_to_sample,
                                 build_network, check_arch, check_sample, nni_choices, nni_search_space, random_arch,
                                 sample_to_arch)
from search_spaces.errors import UserError, exit_on_error
from strategies.epnas import (KINDS, EpnasConfig, PolicyNet, check_table, insert_unit, random_morph, remove_unit,
                              run_policy, scale_group)
from strategies.epnas_nni import check_class_args, main as check_main
from test_epnas import _layer

REPO = Path(__file__).resolve().parents[1]
SMALL = (1, 8, 8)
LAYER = SpaceConfig(kind="layer", max_layers=4)
MODULE = SpaceConfig(kind="module", max_branches=3, cells_per_stage=1, stages=2, cell_channels=8)
SPACES = {"layer": LAYER, "module": MODULE}


# ------------------------------------------------------------------------------- NNI strategies


def _strategy(name: str, space: SpaceConfig, n: int):
    from nni.nas.strategy import GridSearch, Random, RegularizedEvolution

    if name == "random":
        return Random(seed=0)
    if name == "grid":
        # shuffle=False: NNI 3.0's grid hands every model the same sample dict, which it keeps
        # mutating, and GridSearch's shuffle buffer submits 100 models after generating them all, so
        # they would all train the buffer's last point (upstream; a model submitted as soon as it is
        # generated runs the right one)
        return GridSearch(shuffle=False)
    if name == "evolution":
        return RegularizedEvolution(population_size=20, sample_size=5, seed=0)
    from strategies.epnas_nni import EpnasStrategy

    steps = 10 if space.kind == "layer" else 5
    return EpnasStrategy(space=space.kind, branches=8, episodes=-(-n // (8 * steps)), steps=steps,
                         input_shape=list(SMALL), seed=0,
                         **({"max_layers": space.max_layers} if space.kind == "layer" else
                            {"max_branches": space.max_branches, "cells_per_stage": 1, "stages": 2,
                             "cell_channels": 8}))


def _buildable_fraction(name: str, space: SpaceConfig, n: int) -> tuple[float, int, int]:
    """Run an NNI strategy over ``EpnasSpace`` on NNI's SequentialExecutionEngine with a
    FunctionalEvaluator for ``n`` models: (fraction that built and ran, models, distinct archs)."""
    import nni
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import ModelStatus, RawFormatModelSpace

    from search_spaces.epnas import EpnasSpace

    archs = []

    def evaluate(model):
        out = model(torch.randn(2, *SMALL))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        archs.append(arch_to_json(model.net.arch))
        units = model.net.arch["layers" if space.kind == "layer" else "branches"]
        nni.report_final_result(len(units) / 10 + random.Random(len(archs)).random() / 100)

    logging.getLogger("nni").setLevel(logging.ERROR)  # NNI logs every individual at INFO
    model_space = RawFormatModelSpace.from_model(EpnasSpace(space, input_shape=SMALL), FunctionalEvaluator(evaluate))
    engine = SequentialExecutionEngine(max_model_count=n, continue_on_failure=True)
    torch.manual_seed(0)
    _strategy(name, space, n)(model_space, engine)
    models = list(engine.list_models())
    built = sum(m.status == ModelStatus.Trained for m in models)
    return built / max(1, len(models)), len(models), len(set(archs))


STRATEGIES = ["random", "grid", "evolution", "epnas"]


@pytest.mark.parametrize("kind", ["layer", "module"])
@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("n", [250, pytest.param(1000, marks=pytest.mark.slow)])
def test_nni_strategies_sample_only_buildable_architectures(name, kind, n):
    """NNI's Random, GridSearch (max_layers=4 / max_branches=3), RegularizedEvolution and our
    controller as an NNI strategy: every model builds and runs (issue: >= 99 % of 1,000, the slow
    variant; 4-11 s each).  Before the count/sources encoding and the ``valid_arch`` constraint,
    Random built 0 of 40."""
    fraction, models, distinct = _buildable_fraction(name, SPACES[kind], n)
    assert models == n and fraction >= 0.99, (fraction, models)
    assert fraction == 1.0  # valid by construction + constraint: not one failure
    assert distinct > n // 10


def test_space_labels_are_stable_and_sources_exist_by_construction():
    choices = nni_choices(SpaceConfig(kind="layer", max_layers=3))
    assert list(choices)[:8] == ["num_layers", "layer00_type", "layer00_filter", "layer00_pool", "layer00_channels",
                                 "layer00_act", "layer00_src1", "layer00_src2"]
    assert choices["num_layers"] == (1, 2, 3) and "add" not in choices["layer00_type"]
    assert choices["layer00_src1"] == (-1,) and choices["layer02_src2"] == (-1, 0, 1)
    cell = nni_choices(SpaceConfig(kind="module", max_branches=3))
    assert cell["num_branches"] == (1, 2, 3) and cell["branch00_src1"] == (0,) and cell["branch02_src2"] == (0, 1, 2)
    assert nni_search_space(SpaceConfig(kind="layer", max_layers=3))["layer01_src1"] == \
        {"_type": "choice", "_value": [-1, 0]}


@pytest.mark.parametrize("kind", ["layer", "module"])
def test_every_sample_of_the_choices_decodes_and_only_the_constraint_cases_fail(kind):
    """Uniform independent draws of the choices (what an HPO tuner reading the nnictl searchSpace
    does): every one decodes; the only invalid ones are the two the ``valid_arch`` constraint names."""
    space = SPACES[kind]
    rng = random.Random(0)
    reasons = set()
    for _ in range(300):
        sample = {label: rng.choice(values) for label, values in nni_choices(space).items()}
        arch = sample_to_arch(sample, space)
        reason = check_arch(arch, space)
        assert reason == check_sample(sample, space)
        if reason is None:
            build_network(arch, space, input_shape=SMALL)
        else:
            reasons.add("source" if "needs at least one source" in reason else reason)
    assert reasons <= {"source", "no branch propagates to the cell output (set propagate=1 on at least one)"}


# ------------------------------------------------------------------------------- round trips


def _morphs(arch, space, rng):
    n = len(arch["layers" if space.kind == "layer" else "branches"])
    yield random_morph(arch, space, rng)
    yield scale_group(arch, 0, 4, rng.choice(["channels+", "channels-", "filter+", "filter-"]))
    if n < (space.max_layers if space.kind == "layer" else space.max_branches):
        unit = random_arch(space, rng, units=n + 1)["layers" if space.kind == "layer" else "branches"][n]
        yield insert_unit(arch, n, unit)
    for p in range(n):
        yield remove_unit(arch, p)


@pytest.mark.parametrize("kind", ["layer", "module"])
def test_morph_actions_and_sample_encoding_round_trip(kind):
    from search_spaces.epnas import EpnasSpace

    space = SPACES[kind]
    model_space = EpnasSpace(space, input_shape=SMALL)
    policy = PolicyNet(space, EpnasConfig(seed=0))
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    checked = 0
    for seed in range(25):
        arch = random_arch(space, random.Random(seed))
        children = list(_morphs(arch, space, rng))
        with torch.no_grad():
            children += [run_policy(policy, arch, EpnasConfig(), gen=gen)[0] for _ in range(3)]
        for child in [arch] + children:
            if check_arch(child, space) is not None:
                continue   # e.g. removing the only propagated branch: the controller masks it
            sample = arch_to_sample(child, space)
            assert model_space.check_contains(sample) is None          # inside the NNI space
            assert sample_to_arch(sample, space) == child              # and back
            assert model_space.freeze(sample).net.arch == child
            checked += 1
    assert checked > 100
    # NNI's samples round-trip too (slots beyond the count come back at their first value)
    from numpy.random import RandomState

    rs = RandomState(0)
    for _ in range(20):
        sample = {}
        try:
            model_space.random(memo=sample, random_state=rs)
        except ValueError:
            continue
        arch = sample_to_arch(sample, space)
        again = arch_to_sample(arch, space)
        n = sample[COUNT_LABELS[kind]]
        live = [k for k in nni_choices(space) if k == COUNT_LABELS[kind] or int(k.split("_")[0][-2:]) < n]
        assert {k: again[k] for k in live} == {k: sample[k] for k in live}
        assert sample_to_arch(again, space) == arch


# ------------------------------------------------------------------------------- bad samples


def test_sample_outside_the_space_is_a_one_line_error_exit_2(capsys):
    good = arch_to_sample({"space": "layer", "layers": [_layer(), _layer(src1=0)]}, LAYER)
    cases = [
        ({**good, "layer01_src1": 3}, "layer01_src1=3 is not one of [-1, 0]"),
        ({**good, "num_layers": 9}, "num_layers=9 is not one of [1, 2, 3, 4]"),
        ({**good, "layer00_type": "add"}, "layer00_type='add' is not one of"),
        ({**good, "layer01_channels": True}, "layer01_channels=True is not one of"),
    ]
    typo = dict(good)
    typo["layr01_act"] = typo.pop("layer01_act")
    cases.append((typo, "label 'layer01_act' is missing (is 'layr01_act' a typo of it?)"))
    for sample, message in cases:
        with pytest.raises(InvalidArchitecture) as exc:
            sample_to_arch(sample, LAYER)
        assert message in str(exc.value) and isinstance(exc.value, UserError)
        with pytest.raises(SystemExit) as stop:
            exit_on_error(sample_to_arch, sample, LAYER)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and message in err
    # slots beyond the count may be left out; an 'add' without a source is named by the constraint
    short = {k: v for k, v in good.items() if not k.startswith(("layer02", "layer03"))}
    assert sample_to_arch(short, LAYER) == sample_to_arch(good, LAYER)
    assert "needs at least one source" in check_sample({**good, "layer01_type": "add", "layer01_src1": -1}, LAYER)
    from search_spaces.epnas import EpnasSpace

    with pytest.raises(InvalidArchitecture, match="needs at least one source"):
        EpnasSpace(LAYER, input_shape=SMALL).freeze({**good, "layer01_type": "add", "layer01_src1": -1})


# ------------------------------------------------------------------------------- nnictl configs


@pytest.mark.parametrize("name", ["epnas_layer.yml", "epnas_module.yml"])
def test_nnictl_search_space_is_the_tuners_space(name):
    """The configs' searchSpace is the space the tuner's classArgs define, choice by choice."""
    config = yaml.safe_load((REPO / "experiments" / "configs" / name).read_text())
    settings = check_class_args(config["tuner"]["classArgs"])
    assert config["searchSpace"] == nni_search_space(settings.space_config)
    assert COUNT_LABELS[settings.space] in config["searchSpace"]


# ------------------------------------------------------------------------------- check table


def _insert_positions(prior: str, n: int, max_layers: int = 8, draws: int = 300) -> list[int]:
    space = SpaceConfig(kind="layer", max_layers=max_layers)
    cfg = EpnasConfig(seed=0, prior=prior)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = PolicyNet(space, cfg)
    with torch.no_grad():  # always insert, so that every draw has a position
        policy.heads["h_kind"].bias[:] = torch.tensor([50.0, -50.0, -50.0])
    arch = {"space": "layer", "layers": [_layer() for _ in range(n)]}
    gen = torch.Generator().manual_seed(1)
    out = []
    with torch.no_grad():
        for _ in range(draws):
            child, actions, logp, _, names = run_policy(policy, arch, cfg, gen=gen)
            assert KINDS[actions[names.index("kind")]] == "insert" and check_arch(child, space) is None
            raw = actions[names.index("position")]
            out.append(min(raw, n))
            # replaying the actions gives the same log-probability (REINFORCE needs it)
            _, _, again, _, _ = run_policy(policy, arch, cfg, forced=actions)
            assert torch.allclose(logp, again)
    return out


def test_check_table_rows():
    table = check_table(4)
    assert table.shape == (5, 5) and torch.allclose(table.sum(1), torch.ones(5))
    assert torch.allclose(table[2], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0, 0]))
    assert (table.triu(1) == 0).all()   # lower triangular: no place beyond the end


@pytest.mark.parametrize("n", [1, 4])
def test_check_table_prior_shifts_the_insert_position(n):
    """The prior depends on the layer count n: the check table spreads the place over 0..n
    (append about 1/(n+1)); without it (prior: none) the head's 9 places fold onto the end and
    an n-layer network appends about (9-n)/9 of the time."""
    table = _insert_positions("check_table", n)
    none = _insert_positions("none", n)
    append_table = table.count(n) / len(table)
    append_none = none.count(n) / len(none)
    assert abs(append_table - 1 / (n + 1)) < 0.1 and abs(append_none - (9 - n) / 9) < 0.1
    assert append_none > append_table + 0.2
    assert set(table) == set(range(n + 1))                    # every inner place is used
    inner = [p for p in none if p < n]
    assert len(inner) < len([p for p in table if p < n])


def test_prior_is_a_class_arg_and_typos_are_errors(tmp_path, capsys):
    assert check_class_args({"prior": "none"}).controller.prior == "none"
    assert check_class_args({}).controller.prior == "check_table"
    with pytest.raises(UserError, match="prior must be one of check_table, none"):
        EpnasConfig(prior="uniform")
    config = yaml.safe_load((REPO / "experiments/configs/epnas_layer.yml").read_text())
    for key, value, message in [("prior", "uniform", "'prior' must be one of 'check_table', 'none', got 'uniform'"),
                                ("branches", "8", "'branches' must be an integer, got '8'"),
                                ("params_max", "2M", "'params_max' must be a number or null, got '2M'"),
                                ("input_shape", [3, 32], "'input_shape' must be [C, H, W]"),
                                ("tournament", 40, "'tournament' (40) must be <= 'population' (16)"),
                                ("prior_", "none",
                                 "unknown EPNAS tuner classArgs key 'prior_' (did you mean 'prior'?)")]:
        bad = dict(config, tuner=dict(config["tuner"], classArgs={**config["tuner"]["classArgs"], key: value}))
        path = tmp_path / "bad.yml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(SystemExit) as stop:
            check_main([str(path)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("algorithm", ["epnas", "random", "evolution", "morph"])
def test_tuner_proposals_are_samples_of_the_space(algorithm, tmp_path):
    """What the nnictl tuner sends (its ``arch`` parameter), for every algorithm, is a sample of
    the NNI space (the configs' searchSpace) that builds."""
    import json

    from strategies.epnas_nni import EpnasTuner

    tuner = EpnasTuner(space="layer", algorithm=algorithm, branches=4, episodes=3, steps=3, max_layers=4,
                       input_shape=list(SMALL), state_file=str(tmp_path / "s.pt"), seed=0)
    pid, seen = 0, 0
    for _ in range(9):
        params = tuner.generate_multiple_parameters(list(range(pid, pid + 4)))
        for p in params:
            arch = json.loads(p["arch"])
            sample = arch_to_sample(arch, LAYER)
            assert check_sample(sample, LAYER) is None and sample_to_arch(sample, LAYER) == arch
            tuner.receive_trial_result(pid, p, {"default": random.Random(pid).random()})
            pid, seen = pid + 1, seen + 1
    assert seen == 36


def test_space_and_constraint_pickle_by_name():
    """NNI's engines other than the sequential one ship the space to the trial process."""
    import pickle

    from search_spaces.epnas import EpnasSpace

    space = pickle.loads(pickle.dumps(EpnasSpace(LAYER, input_shape=SMALL)))
    arch = random_arch(LAYER, random.Random(2))
    assert space.freeze(arch_to_sample(arch, LAYER)).net.arch == arch
    assert space.check_contains({**arch_to_sample(arch, LAYER), "layer00_type": "add"}) is not None
