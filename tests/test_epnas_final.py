"""EPNAS final training (issue 20 part 4): the top-K feasible networks are trained fully after the
search - by the tuner as the experiment's last trials (state saved, resumable), by the trial runner
with the final-training settings and the same metric keys, and in the analysis' results table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nni import NoMoreTrialError

from experiments.config import build_config
from experiments.harness import execute
from experiments.methods.epnas import EpnasTrialConfig, run
from search_spaces.epnas import SpaceConfig, arch_cost, arch_to_json
from search_spaces.errors import UserError
from strategies.epnas_evaluator import FinalPhase, FinalTrainingConfig, PhotometricAugment, select_final
from strategies.epnas_nni import EpnasTuner

SPACE = SpaceConfig(kind="layer", max_layers=4)
SHAPE = (1, 8, 8)


def _layer(t="conv2d", channels=16, src1=-1):
    return {"type": t, "filter": 3, "pool": 2, "channels": channels, "act": "relu", "src1": src1, "src2": -1}


def _arch(*channels):
    return {"space": "layer", "layers": [_layer(channels=c) for c in channels]}


def _records(spec):
    """``spec``: [(reward, arch), ...] -> controller-style records t00000 ..."""
    return {f"t{i:05d}": {"status": "done", "reward": r, "arch": a, "meta": {"trial": i}} for i, (r, a) in enumerate(spec)}


def _params(arch):
    return arch_cost(arch, SPACE, SHAPE, 10).params


# ------------------------------------------------------------------------------------------ selection


def test_select_final_ranks_feasible_distinct_networks():
    small, mid, big = _arch(16), _arch(32), _arch(128, 128)
    limit = (_params(mid) + _params(big)) / 2          # big violates params_max
    recs = _records([(0.9, big), (0.7, small), (0.8, mid), (0.75, mid), (0.6, small)])
    recs["t00005"] = {"status": "failed", "reward": 0.0, "arch": _arch(16, 16), "meta": {"trial": 5}}
    picks = select_final(recs, {"params": (None, limit)}, 3, space=SPACE, input_shape=SHAPE, num_classes=10)
    assert [k for k, _, _ in picks] == ["t00002", "t00001"]          # mid (0.8) then small (0.7); big infeasible
    assert [arch_to_json(a) for _, a, _ in picks] == [arch_to_json(mid), arch_to_json(small)]
    assert picks[0][2]["source_trial"] == 2 and picks[0][2]["params"] <= limit
    one = select_final(recs, {}, 1, space=SPACE, input_shape=SHAPE, num_classes=10)
    assert [k for k, _, _ in one] == ["t00000"]                      # unconstrained: the best reward


def test_final_phase_trains_those_that_exist_and_says_so():
    small, big = _arch(16), _arch(128, 128)
    phase = FinalPhase(3, {"params": (None, _params(small) + 1)}, space=SPACE, input_shape=SHAPE, num_classes=10)
    assert phase.plan(_records([(0.9, big), (0.5, small)]), next_trial=2, episode=4)
    assert not phase.plan({}, next_trial=0, episode=0)                # plans once
    (key, arch, meta), = phase.propose()
    assert key == "f00" and arch == small and phase.propose() == []
    assert meta == {"trial": 2, "episode": 4, "step": 0, "branch": 0, "parent": 1, "final": 1, "final_rank": 0,
                    "final_asked": 3, "final_found": 1, "action": "final training of trial 1", "entropy": 0.0}
    assert "final_top_k=3 asked, the search found 1 feasible" in phase.note
    assert not phase.finished and phase.tell("f00", 0.8, {"test_acc": 0.7, "arch": "x"}) and phase.finished
    assert phase.results()[0]["test_acc"] == 0.7 and not phase.tell("f00", 0.1)
    with pytest.raises(UserError, match="final_top_k"):
        FinalPhase(-1, {}, space=SPACE, input_shape=SHAPE, num_classes=10)


# ------------------------------------------------------------------------------------------ tuner


def _tuner(tmp_path, **kw):
    args = dict(space="layer", branches=2, episodes=2, steps=2, max_layers=4, input_shape=[1, 8, 8],
                state_file=str(tmp_path / "tuner.pt"), seed=3, params_max=2e4, final_top_k=2)
    args.update(kw)
    return EpnasTuner(**args)


def _reward(p):
    return 0.1 * len(json.loads(p["arch"])["layers"]) + 0.001 * p["trial"]


def _run_search(t):
    """Tell every search trial (reward from the network); returns the search trials' parameters."""
    pid, seen = 0, []
    while True:
        try:
            got = t.generate_multiple_parameters([pid, pid + 1])
        except NoMoreTrialError:
            got = []
        if not got or got[0].get("final"):
            return seen, got, pid
        for p in got:
            seen.append(p)
            t.receive_trial_result(pid, p, {"default": _reward(p)})
            pid += 1


def test_tuner_submits_top_k_feasible_last_and_resumes_the_final_phase(tmp_path):
    t = _tuner(tmp_path)
    seen, finals, pid = _run_search(t)
    assert len(seen) == 2 * 2 * 2 and t.search.finished
    # the last trials: the top-2 feasible networks of the search, best first, as final trainings
    expected = select_final(t.search.records, {"params": (None, 2e4)}, 2, space=SpaceConfig(kind="layer", max_layers=4),
                            input_shape=SHAPE, num_classes=10)
    assert len(finals) == 2 and [p["final_rank"] for p in finals] == [0, 1]
    assert [json.loads(p["arch"]) for p in finals] == [a for _, a, _ in expected]
    assert all(p["final"] == 1 and p["trial"] >= 8 and p["final_asked"] == 2 for p in finals)
    assert [p["parent"] for p in finals] == [info["source_trial"] for _, _, info in expected]
    assert all(p["params_max"] == 2e4 for p in finals)               # scored against the same constraints
    # one final result arrives, then the tuner process stops (nnictl stop) while the other trains
    import copy

    searched = copy.deepcopy(t.search.records)
    t.receive_trial_result(pid, finals[0], {"default": 0.5, "test_acc": 0.4})
    assert t.final.records["f00"]["status"] == "done"
    t2 = _tuner(tmp_path)                                             # nnictl resume: a new process
    assert t2.final.records["f00"]["metrics"]["test_acc"] == 0.4
    again = t2.generate_multiple_parameters([100])                    # the unfinished one is proposed again
    assert [p["final_rank"] for p in again] == [1] and again[0]["arch"] == finals[1]["arch"]
    t2.trial_end(100, False)                                          # ...and failed: told as failure, not waited for
    assert t2.final.records["f01"]["status"] == "failed" and t2.final.finished
    with pytest.raises(NoMoreTrialError):
        t2.generate_parameters(101)
    assert t2.search.records == searched                             # final results never reach the controller
    blob = torch.load(tmp_path / "tuner.pt", weights_only=True)
    assert blob["final"]["records"]["f01"]["status"] == "failed"


def test_tuner_final_top_k_zero_and_bad_values(tmp_path):
    t = _tuner(tmp_path, final_top_k=0)
    seen, finals, _ = _run_search(t)
    assert len(seen) == 8 and finals == [] and t.final.finished
    with pytest.raises(UserError, match="final_top_k.* must be .*>= 0"):
        _tuner(tmp_path / "b", final_top_k=-2)


# ------------------------------------------------------------------------------------------ trial


def _cfg(**kw):
    base = dict(dataset="digits", limit=96, batch_size=32, batch_ref=32, lr=0.05, epochs=1, stop_epoch=1,
                max_layers=4, device="cpu", progress=False, threads=1, allow_degenerate=True,
                arch=json.dumps(_arch(16, 16)), params_max=1e6,
                final_epochs=2, final_batch_size=32, final_lr=0.05)
    base.update(kw)
    return build_config(EpnasTrialConfig, base)


def test_final_trial_trains_from_scratch_with_the_same_metric_keys(tmp_path):
    proxy = execute("epnas", _cfg(trial=3), run, tmp_path / "trials" / "a")
    final = execute("epnas", _cfg(trial=8, parent=3, final=1, final_rank=0, final_asked=3, final_found=1),
                    run, tmp_path / "trials" / "b")
    numeric = lambda s: {k for k, v in s.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}  # noqa: E731
    assert numeric(final) == numeric(proxy)                            # the web UI's columns
    assert (proxy["final"], final["final"]) == (0, 1)
    assert 0 <= final["test_acc"] <= 1 and 0 <= proxy["test_acc"] <= 1
    assert final["epochs_trained"] == 2 and final["shared_loaded"] == final["shared_written"] == 0
    assert final["search_train_flops"] == 0 < proxy["search_train_flops"]   # not search cost
    lines = (tmp_path / "trials" / "b" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("final,") for line in lines[1:])
    assert final["params"] == proxy["params"] and final["trial"] == 8 and final["parent"] == 3
    with pytest.raises(UserError, match="final_epochs must be >= 1"):
        _cfg(final_epochs=0)
    with pytest.raises(UserError, match="params_min=10 is above params_max=1"):   # the other checks still run
        _cfg(params_min=10, params_max=1)


def test_photometric_augment_in_pixel_units():
    x = torch.rand(3, 6, 6)

    class One(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return x, 0

    std = (0.5, 0.25, 0.1)
    torch.manual_seed(0)
    bright, _ = PhotometricAugment(One(), brightness=0.2, contrast=0.0, std=std)[0]
    d = (bright - x) * torch.tensor(std).view(-1, 1, 1)                 # back to pixel units
    assert torch.allclose(d, d.flatten()[0].expand_as(d), atol=1e-6) and 0 < abs(float(d.flatten()[0])) <= 0.2
    contrast, _ = PhotometricAugment(One(), brightness=0.0, contrast=0.5)[0]
    assert torch.allclose(contrast.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=1e-6) and not torch.allclose(contrast, x)
    cut, _ = PhotometricAugment(One(), brightness=0.0, contrast=0.0, cutout=4)[0]
    assert 0 < int((cut == 0).sum()) <= 3 * 16 and torch.equal(cut[cut != 0], x[cut != 0])
    assert FinalTrainingConfig().final_epochs == 600                   # PNAS's/NASNet's final training


# ------------------------------------------------------------------------------------------ analysis


def _write_trial(d: Path, *, trial, final=0, reward, acc, test_acc, params, cfg_extra=None, device="cpu"):
    d.mkdir(parents=True)
    cfg = {"space": "layer", "params_max": 5000.0, "final": final, **(cfg_extra or {})}
    (d / "config.json").write_text(json.dumps({"method": "epnas", "config": cfg}))
    (d / "summary.json").write_text(json.dumps({
        "method": "epnas", "default": reward, "reward": reward, "accuracy": acc, "params": params, "flops": 10 * params,
        "intensity": 3.0, "trial": trial, "episode": 0 if not final else 1, "step": 0, "branch": 0, "parent": trial - 1,
        "layers": 2, "final": final, "test_acc": test_acc, "epochs_trained": 600 if final else 10,
        "cpu_time_s": 1800.0, "wall_time_s": 3600.0, "device": device}))
    (d / "arch.json").write_text(json.dumps({"arch": _arch(16)}))


def test_analysis_results_table_from_final_trials(tmp_path):
    from analysis.epnas import final_table, report_study, trials_table

    trials = tmp_path / "exp" / "trials"
    for i in range(4):
        _write_trial(trials / f"s{i}", trial=i, reward=0.5 + 0.1 * i, acc=0.5 + 0.1 * i, test_acc=0.4, params=1000 * (i + 1),
                     device="cuda" if i < 2 else "cpu")
    _write_trial(trials / "f0", trial=4, final=1, reward=0.93, acc=0.93, test_acc=0.95, params=4000,
                 cfg_extra={"final_rank": 0, "final_asked": 3, "final_found": 1})
    t = trials_table(sorted(trials.iterdir()))
    table = final_table(t)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["test_acc"] == 0.95 and row["test_error_pct"] == pytest.approx(5.0) and row["params_m"] == 0.004
    assert row["search_models"] == 4 and row["search_cpu_hours"] == pytest.approx(2.0)
    assert row["search_gpu_hours"] == pytest.approx(2.0)             # the two cuda trials' wall hours
    assert "final_top_k=3 asked; the search found 1 feasible" in row["note"]
    files = report_study(sorted(trials.iterdir()), tmp_path / "out")
    names = {Path(f).name for f in files}
    assert "final.csv" in names and "trials.csv" in names
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "out" / "trials.csv")) == 4      # the search's tables: search trials only
    from analysis.epnas import study_output

    res = study_output(sorted(trials.iterdir()), tmp_path / "out2")
    assert res.tables["epnas_final"]["test_acc"].tolist() == [0.95] and res.files
    assert "test_error_pct" in res.text[0] and "5.00" in res.text[0] and "found 1 feasible" in res.text[1]


# ------------------------------------------------------------------------------------------ nnictl


@pytest.mark.nnictl
@pytest.mark.slow
def test_final_trainings_are_the_last_trials_under_nnictl(tmp_path):
    """A real nnictl experiment: 4 search trials, then the top-2 feasible networks trained fully as
    trials 5-6 (``final`` = 1 in the web UI's parameters and metrics, the same numeric columns), and
    ``python -m analysis`` writes the results table."""
    import shlex
    import subprocess
    import sys

    from experiments.launch import run_experiment

    repo = Path(__file__).resolve().parents[1]
    config = {
        "experimentName": "test-epnas-final",
        "searchSpace": {"epnas": {"_type": "choice", "_value": ["controller"]}},
        "trialCommand": (f"{shlex.quote(sys.executable)} -m experiments.trial epnas --dataset digits --limit 64 "
                         "--batch_size 32 --batch_ref 32 --lr 0.05 --epochs 1 --stop_epoch 1 --threads 1 "
                         "--device cpu --progress false --allow_degenerate true "
                         "--final_epochs 2 --final_batch_size 32 --final_lr 0.05"),
        "trialCodeDirectory": str(repo),
        "trialConcurrency": 2,
        "maxTrialNumber": 2 * 1 * 2 + 2,
        "tuner": {"codeDirectory": str(repo), "className": "strategies.epnas_nni.EpnasTuner",
                  "classArgs": {"space": "layer", "branches": 2, "episodes": 1, "steps": 2, "max_layers": 4,
                                "params_max": 60000, "input_shape": [1, 8, 8], "seed": 0, "final_top_k": 2}},
        "trainingService": {"platform": "local", "useActiveGpu": False},
    }
    with run_experiment(config, tmp_path=tmp_path, timeout=900) as exp:
        jobs = sorted(exp.trial_jobs, key=lambda j: int(j["sequenceId"]))
        assert len(jobs) == 6 and all(j["status"] == "SUCCEEDED" for j in jobs), exp.log_tail()
        shown = [exp.hyper_parameters(j["trialJobId"])["parameters"] for j in jobs]
        finals = [exp.final_metric(j["trialJobId"]) for j in jobs]
        assert [int(p.get("final", 0)) for p in shown] == [0, 0, 0, 0, 1, 1]      # the last trials
        assert [p["final_rank"] for p in shown[4:]] == [0, 1]
        assert [int(m["final"]) for m in finals] == [0, 0, 0, 0, 1, 1]
        numeric = [{k for k, v in m.items() if isinstance(v, (int, float))} for m in finals]
        assert all(n == numeric[0] for n in numeric), [sorted(n ^ numeric[0]) for n in numeric]
        assert {"test_acc", "params", "flops", "final"} <= numeric[0]
        state = torch.load(exp.experiment_dir / "epnas_tuner_state.pt", weights_only=True)
        assert state["final"]["planned"] and all(r["status"] == "done" for r in state["final"]["records"].values())
        out = subprocess.run([sys.executable, "-m", "analysis", str(exp.experiment_dir), "--out", str(tmp_path / "a")],
                             capture_output=True, text=True, timeout=300, cwd=str(repo))
        assert out.returncode == 0, out.stderr[-2000:]
        import pandas as pd

        table = pd.read_csv(tmp_path / "a" / "final.csv")
        assert len(table) == 2 and table["search_models"].tolist() == [4, 4]
