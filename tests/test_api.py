"""The Python API (issue 20 part 3): ``NasExperiment(space, evaluator, strategy)`` for ProxylessNAS
and EPNAS, and the plain-Python entry points of growth and SCANN."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.config import build_config
from experiments.data import make_loaders
from experiments.harness import execute, load_images, pick
from experiments.methods.proxyless import ProxylessTrialConfig, run as proxyless_run
from search_spaces.resnet_scoped import scoped_resnet
from strategies.proxyless import CompactProxyless, ProxylessConfig, ProxylessEvaluator
from strategies.training import seed_everything


def _nas(space, evaluator, strategy, tmp_path):
    from nni.nas.experiment import NasExperiment

    exp = NasExperiment(space, evaluator, strategy)
    exp.config.experiment_working_directory = str(tmp_path / "nni")
    try:
        exp.run()
        return exp.export_top_models(formatter="dict"), [exp.export_top_models(formatter="dict")[0] for _ in range(3)]
    finally:
        exp.stop()


def _proxyless_cfg(**kw):
    base = dict(dataset="digits", limit=96, batch_size=32, scope="s", width=0.0625, search_epochs=3, retrain_epochs=0,
                arch_lr=0.05, device="cpu", progress=False, threads=1, allow_degenerate=True, seed=0)
    base.update(kw)
    return build_config(ProxylessTrialConfig, base)


def _proxyless_api(cfg, tmp_path, **ev_kw):
    """The Python path on the trial's data: same seeding, loaders and space as the trial runner."""
    seed_everything(cfg.seed)
    splits = load_images(cfg)
    train, val, test = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
    space = scoped_resnet(cfg.scope, num_classes=splits.num_classes, width=cfg.width, stem=cfg.stem,
                          in_channels=splits.input_shape[0])
    evaluator = ProxylessEvaluator(train, val, test_loader=test, **ev_kw)
    strategy = CompactProxyless(pick(ProxylessConfig, cfg), seed=cfg.seed)
    top, again = _nas(space, evaluator, strategy, tmp_path)
    return strategy, top, again


def _argmax(traj: pd.DataFrame) -> dict[str, str]:
    last = traj[traj["epoch"] == traj["epoch"].max()]
    return {label: g.loc[g["alpha"].idxmax(), "choice"] for label, g in last.groupby("label")}


def test_proxyless_nas_experiment_finds_the_trial_paths_architecture(tmp_path):
    cfg = _proxyless_cfg()
    execute("proxyless", cfg, proxyless_run, tmp_path / "trial")
    trial_arch = json.loads((tmp_path / "trial" / "arch.json").read_text())["arch"]
    trial_traj = pd.read_csv(tmp_path / "trial" / "trajectory.csv")

    strategy, top, again = _proxyless_api(cfg, tmp_path, out_dir=str(tmp_path / "api"))
    api_traj = pd.read_csv(tmp_path / "api" / "trajectory.csv")
    assert top == [trial_arch]                                           # the same architecture
    assert list(api_traj.columns) == ["epoch", "step", "label", "choice", "alpha", "prob"]
    np.testing.assert_allclose(api_traj["alpha"], trial_traj["alpha"], rtol=0, atol=1e-6)  # the same search
    # export is the argmax of the final alphas, every time (NNI's Proxyless resamples at random)
    assert again == [trial_arch] * 3 and top[0] == _argmax(api_traj)
    assert len(set(top[0].values())) > 1                                # a real choice, not all-first
    rows = pd.read_csv(tmp_path / "api" / "metrics.csv")
    assert list(rows["phase"]) == ["search"] * 3 and (rows["train_flops"] > 0).all()   # paper optimizers' loop
    assert strategy.result["search_epochs"] == 3 and strategy.result["arch"] == trial_arch


def test_proxyless_linear_cost_term_moves_alpha_toward_cheaper_candidates(tmp_path):
    """No target: ``loss = CE + w * E[FLOPs] / FLOPs(baseline)``; with the term the k3 kernels (cheaper)
    gain probability over the run without it (a detached term would leave alpha unchanged)."""
    probs = {}
    for w in (0.0, 2.0):
        cfg = _proxyless_cfg(search_epochs=1, cost_term="flops", cost_weight=w)
        strategy, _, _ = _proxyless_api(cfg, tmp_path / f"w{w}")
        probs[w] = strategy.result["probs"]
    for label, p0 in probs[0.0].items():
        p1 = probs[2.0][label]
        k3 = lambda p: sum(v for k, v in p.items() if k.startswith("k3"))  # noqa: E731
        assert k3(p1) > k3(p0) + 1e-3, (label, p0, p1)


def test_proxyless_exit_criterion_and_retraining(tmp_path):
    cfg = _proxyless_cfg(search_epochs=4, exit_patience=1, exit_entropy_delta=10.0, stop_on_exit=True, arch_lr=1e-4)
    strategy, top, _ = _proxyless_api(cfg, tmp_path, out_dir=str(tmp_path / "run"), retrain_epochs=1)
    r = strategy.result
    assert r["exit_epoch"] == 2 and r["search_epochs"] == 2            # stopped where the criterion fired
    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(rows["phase"]) == ["search", "search", "retrain"]
    assert 0 <= r["test_acc"] <= 1 and r["params"] > 0 and not any(
        type(m).__name__ == "BinaryGateLayer" for m in r["model"].modules())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["arch"] == top[0] and summary["test_acc"] == r["test_acc"]
    assert json.loads((tmp_path / "run" / "arch.json").read_text())["arch"] == top[0]


def test_proxyless_rejects_an_unusable_evaluator(tmp_path):
    from nni.nas.evaluator import FunctionalEvaluator
    from search_spaces.errors import UserError

    with pytest.raises(UserError, match="needs a ProxylessEvaluator"):
        _nas(scoped_resnet("s", width=0.0625, in_channels=1), FunctionalEvaluator(lambda m: None),
             CompactProxyless(ProxylessConfig(search_epochs=1)), tmp_path)
    with pytest.raises(UserError, match="config must be a ProxylessConfig"):
        CompactProxyless({"search_epochs": 1})


# ------------------------------------------------------------------------------------------ EPNAS


def test_epnas_nas_experiment_runs_end_to_end_with_its_evaluator_and_final_training(tmp_path):
    from nni.nas.experiment import NasExperiment
    from nni.nas.experiment.config import SequentialEngineConfig

    from experiments.data import load_image_dataset
    from search_spaces.epnas import EpnasSpace, SpaceConfig, arch_to_json
    from strategies.epnas_evaluator import EpnasEvaluator, FinalTrainingConfig, ProxyTrainingConfig, select_final
    from strategies.epnas_nni import EpnasStrategy

    seed_everything(0)
    splits = load_image_dataset("digits", limit=64, seed=0)
    train, val, test = make_loaders(splits, batch_size=32, seed=0)
    space = SpaceConfig(kind="layer", max_layers=4)
    evaluator = EpnasEvaluator(train, val, test_loader=test,
                               proxy=ProxyTrainingConfig(epochs=1, stop_epoch=1, lr=0.05, batch_ref=32),
                               final=FinalTrainingConfig(final_epochs=2, final_batch_size=32, final_lr=0.05))
    strategy = EpnasStrategy(space="layer", branches=2, episodes=2, steps=1, max_layers=4, input_shape=[1, 8, 8],
                             params_max=3e4, init_units=1, seed=0, final_top_k=2)
    exp = NasExperiment(EpnasSpace(space, input_shape=(1, 8, 8)), evaluator, strategy)
    exp.config.execution_engine = SequentialEngineConfig()
    exp.config.experiment_working_directory = str(tmp_path)
    try:
        exp.run()
    finally:
        exp.stop()
    search, final = strategy.search, strategy.final
    assert search.finished and len(search.records) == 4 and all(r["status"] == "done" for r in search.records.values())
    proxies = [evaluator.results[k] for k in search.records]
    assert [m["reward"] for m in proxies] == [r["reward"] for r in search.records.values()]   # the reward it told
    assert all(m["final"] == 0 and m["epochs_trained"] == 1 for m in proxies)
    assert any(m["shared_loaded"] > 0 for m in proxies)                 # parameter sharing between models
    for m in proxies:                                                    # the constraints the strategy gave it
        assert (m["reward"] == m["accuracy"]) == (m["params"] <= 3e4)
    picks = select_final(search.records, {"params": (None, 3e4)}, 2, space=space, input_shape=(1, 8, 8), num_classes=10)
    assert final.finished and len(final.records) == len(picks) >= 1
    assert [arch_to_json(r["arch"]) for r in final.records.values()] == [arch_to_json(a) for _, a, _ in picks]
    rows = final.results()
    assert all(r["status"] == "done" and r["final"] == 1 and r["epochs_trained"] == 2 and r["shared_loaded"] == 0
               and 0 <= r["test_acc"] <= 1 and r["params"] <= 3e4 for r in rows)
    assert set(evaluator.results) == set(search.records) | set(final.records)


# ------------------------------------------------------------------------------------------ growth / SCANN


def test_experiment_shape_for_growth_and_scann_rejects_misuse():
    from search_spaces.errors import UserError
    from strategies.api import Experiment, GrowthStrategy, ImageEvaluator, ScannStrategy, TensorEvaluator
    from strategies.growth import GrowthConfig
    from strategies.scann import ScannConfig

    with pytest.raises(UserError, match="is not a strategy"):
        Experiment(torch.nn.Linear(2, 2), None, object())
    exp = Experiment(torch.nn.Linear(2, 2), None, GrowthStrategy(GrowthConfig(epochs=1)))
    with pytest.raises(RuntimeError, match="run\(\) the experiment first"):
        exp.export_top_models()
    with pytest.raises(UserError, match="GrowthStrategy runs on a GrowableNet"):
        exp.run()
    with pytest.raises(UserError, match="needs a GrowthConfig"):
        GrowthStrategy({"epochs": 1})
    with pytest.raises(UserError, match="resolved ScannConfig"):
        ScannStrategy(ScannConfig(scheme="B"))
    assert ImageEvaluator and TensorEvaluator


def test_growth_strategy_grows_as_the_trial_does(tmp_path):
    """Same seed, data and seed network: the Python entry point exports the trial runner's architecture."""
    from experiments.methods.growth import GrowthTrialConfig, layout_for, run as growth_run
    from search_spaces.growth_spaces import GrowableNet
    from strategies.api import Experiment, GrowthStrategy, ImageEvaluator
    from strategies.growth import GrowthConfig

    cfg = build_config(GrowthTrialConfig, dict(dataset="digits", limit=96, batch_size=32, family="resnet20", width=0.25,
                                               epochs=2, budget=0.35, device="cpu", progress=False, threads=1,
                                               allow_degenerate=True, record_structures=False, seed=0))
    execute("growth", cfg, growth_run, tmp_path / "trial")
    trial_arch = json.loads((tmp_path / "trial" / "arch.json").read_text())
    seed_everything(0)
    splits = load_images(cfg)
    train, val, test = make_loaders(splits, batch_size=32, seed=0)
    torch.manual_seed(0)
    net = GrowableNet(layout_for(cfg, splits), mask_init=cfg.mask_init, mask_spread=cfg.mask_spread)
    exp = Experiment(net, ImageEvaluator(train, val, test_loader=test), GrowthStrategy(pick(GrowthConfig, cfg), seed=0))
    result = exp.run()
    assert json.loads(json.dumps(exp.export_top_models()[0])) == trial_arch
    assert [r["phase"] for r in result["rows"]] == ["grow", "grow"] and 0 <= result["test_acc"] <= 1
