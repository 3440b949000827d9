"""The trial entry point: bad input -> one-line error + exit 2; NaN -> failed run, readable
folder; an interrupted run resumes with no gaps or duplicated rows."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import trial
from strategies import proxyless as proxyless_mod
from strategies import training as training_mod

REPO = Path(__file__).resolve().parents[1]
# allow_degenerate: the networks these tiny runs train learn nothing (exported anyway; the check: test_degenerate.py)
TINY = ["--dataset", "digits", "--limit", "96", "--width", "0.0625", "--scope", "s", "--batch_size", "32",
        "--search_epochs", "3", "--retrain_epochs", "2", "--record_every", "1", "--progress", "false",
        "--threads", "1", "--allow_degenerate", "true"]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        trial.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


@pytest.mark.parametrize("argv,needle", [
    (["nosuch"], "unknown method 'nosuch'"),
    (["proxyless", "--scope", "x"], "unknown scope 'x'"),
    (["proxyless", "--serch_epochs", "3"], "unknown config key 'serch_epochs' (did you mean 'search_epochs'?)"),
    (["proxyless", "--width", "0"], "width must be > 0"),
    (["proxyless", "--width", "-2"], "width must be > 0"),
    (["proxyless", "--search_epochs", "three"], "search_epochs: expected an integer"),
    (["proxyless", "--dataset", "imagenet21k"], "unknown"),
    (["proxyless", "--dataset", "cifar10", "--data_dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["proxyless", "--dataset", "cifar10"], "data_dir"),
    (["proxyless", "--config", "/nonexistent.yml"], "config file not found"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys, tmp_path):
    code, err = _run(argv + ["--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert needle.lower() in err[0].lower()


def test_cli_subprocess_exit_code(tmp_path):
    p = subprocess.run([sys.executable, "-m", "experiments.trial", "proxyless", "--scoep", "s"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'scoep'")


def _table(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.pop("time_s", None)
        r.pop("cpu_time_s", None)
    return rows


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref") / "run"
    assert trial.main(["proxyless", *TINY, "--run-dir", str(d)]) == 0
    return d


def test_run_folder_contract(reference_run):
    d = reference_run
    for name in ("config.json", "metrics.csv", "trajectory.csv", "arch.json", "model.pt", "summary.json"):
        assert (d / name).exists(), name
    assert not (d / "checkpoint.pt").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["default"] == summary["top1"] and 0 <= summary["top1"] <= 1
    assert summary["search_epochs"] == 3 and summary["scope"] == "s"
    traj = _table(d / "trajectory.csv")
    assert set(traj[0]) == {"epoch", "step", "label", "choice", "alpha", "prob"}
    labels = {r["label"] for r in traj}
    assert labels == {"block01", "block02", "block03"}
    metrics = _table(d / "metrics.csv")
    assert [(r["phase"], r["epoch"]) for r in metrics] == [("search", "0"), ("search", "1"), ("search", "2"),
                                                            ("retrain", "0"), ("retrain", "1")]
    import torch
    state = torch.load(d / "model.pt", weights_only=True)
    assert any(k.startswith("layer4") for k in state)


@pytest.mark.parametrize("where", ["search", "retrain"])
def test_interrupted_run_resumes_without_gaps_or_duplicates(where, reference_run, tmp_path, monkeypatch):
    d = tmp_path / "run"
    calls = {"n": 0}
    if where == "search":
        original = proxyless_mod.ProxylessSearch.run_epoch

        def flaky(self, epoch, *a, **k):
            if epoch == 1:
                raise KeyboardInterrupt("killed")
            return original(self, epoch, *a, **k)

        monkeypatch.setattr(proxyless_mod.ProxylessSearch, "run_epoch", flaky)
    else:
        original = training_mod.train_epoch

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("killed")
            return original(*a, **k)

        monkeypatch.setattr(training_mod, "train_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        trial.main(["proxyless", *TINY, "--run-dir", str(d)])
    assert (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()
    monkeypatch.undo()
    assert trial.main(["proxyless", *TINY, "--run-dir", str(d)]) == 0
    assert _table(d / "trajectory.csv") == _table(reference_run / "trajectory.csv")
    assert _table(d / "metrics.csv") == _table(reference_run / "metrics.csv")
    a = json.loads((d / "summary.json").read_text())
    b = json.loads((reference_run / "summary.json").read_text())
    assert a["top1"] == b["top1"] and a["arch"] == b["arch"]


def test_rerun_of_a_finished_folder_is_idempotent(reference_run):
    before = (reference_run / "metrics.csv").read_text()
    assert trial.main(["proxyless", *TINY, "--run-dir", str(reference_run)]) == 0
    assert (reference_run / "metrics.csv").read_text() == before


def test_different_config_in_same_folder_is_refused(reference_run, capsys):
    code, err = _run(["proxyless", *TINY, "--seed", "7", "--run-dir", str(reference_run)], capsys)
    assert code == 2 and "different config" in err[0]


def test_nan_loss_fails_the_trial_and_keeps_the_folder_readable(tmp_path, capsys):
    d = tmp_path / "nan"
    argv = ["proxyless", *TINY, "--weight_lr", "1e30", "--run-dir", str(d)]
    code, err = _run(argv, capsys)
    assert code == 1
    assert len(err) == 1 and "non-finite loss" in err[0]
    assert "non-finite loss" in (d / "error.txt").read_text()
    json.loads((d / "config.json").read_text())
    assert not (d / "summary.json").exists()


def test_checkpointed_rng_state_holds_the_cuda_generators(monkeypatch):
    """On a GPU, dropout and random ops on CUDA tensors draw from the CUDA generators: a checkpoint
    must hold them, or a resumed run differs from the run it continues."""
    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((s, i)))
    state = training_mod.rng_state()
    assert state["cuda"] is saved
    before = torch.rand(3)
    training_mod.set_rng_state(state)
    assert torch.equal(torch.rand(3), before) and restored == [(saved[0], 0)]
    training_mod.set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # a CPU run's checkpoint


def test_cpu_runs_leave_the_deterministic_mode_alone():
    from experiments import harness
    from experiments.errors import UserError

    before = torch.are_deterministic_algorithms_enabled()  # a CUDA trial earlier in the session may have set it
    assert harness.resolve_device("cpu").type == "cpu"
    assert torch.are_deterministic_algorithms_enabled() == before
    if not torch.cuda.is_available():
        assert harness.resolve_device("auto").type == "cpu"
        with pytest.raises(UserError, match="no CUDA device"):
            harness.resolve_device("cuda")
