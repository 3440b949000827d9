"""The EPNAS tuner under a real nnictl (issue 4): ``nnictl stop`` + ``nnictl resume`` continues the
search from the tuner's saved state, and classArgs no architecture can satisfy stop the experiment
(status ERROR, one-line message in the logs) before any trial starts.

Every experiment runs with ``HOME`` and the experiment directory under ``tmp_path`` and is stopped
in a ``finally`` (also on failure); only processes these tests started are signalled (by the
harness in :mod:`experiments.launch`, by pid / the manager's process group)."""
from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch
from nni.runtime.msg_dispatcher_base import MsgDispatcherBase

from experiments.launch import (ExperimentRun, NnictlError, _create, _experiment_env, _find_manager_pid,
                                _registry_pid, _stop, _write_config, free_port, nnictl_executable)
from search_spaces.errors import UserError
from strategies.epnas_nni import EpnasTuner

REPO = Path(__file__).resolve().parents[1]
STATE = "epnas_tuner_state.pt"
TERMINAL = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}
NO_CONNECT = "did not connect"   # NNI's 10 s tuner start-up limit, missed on a busy machine: retried


def _config(**class_args) -> dict:
    args = {"space": "layer", "branches": 2, "episodes": 3, "steps": 2, "max_layers": 4, "params_max": 20000,
            "input_shape": [1, 8, 8], "seed": 0}
    args.update(class_args)
    return {
        "experimentName": "test-epnas-nnictl",
        "searchSpace": {"epnas": {"_type": "choice", "_value": ["controller"]}},
        "trialCommand": (f"{shlex.quote(sys.executable)} -m experiments.trial epnas --dataset digits --limit 64 "
                         "--batch_size 32 --batch_ref 32 --lr 0.05 --epochs 1 --stop_epoch 1 --threads 1 "
                         "--device cpu --progress false"),
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": args["branches"],
        "maxTrialNumber": args["episodes"] * args["steps"] * args["branches"],
        "tuner": {"codeDirectory": str(REPO), "className": "strategies.epnas_nni.EpnasTuner", "classArgs": args},
        "trainingService": {"platform": "local", "useActiveGpu": False},
    }


def _status(run: ExperimentRun) -> dict:
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
        return run.get("/check-status") or {}
    return {}


def _poll(run: ExperimentRun, until, timeout: float, what: str, allow_error: bool = False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(run)
        run.status = status.get("status", "UNKNOWN")
        if run.status == "ERROR" and not allow_error:
            raise NnictlError(f"experiment failed: {status.get('errors')}\n{run.log_tail()}")
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            got = until(run, status, run.get("/trial-jobs") or [])
            if got:
                return got
        time.sleep(0.5)
    raise NnictlError(f"timed out waiting for {what} (status {run.status})\n{run.log_tail()}")


def _connected(run: ExperimentRun, status: dict, jobs: list) -> str | bool:
    """Until the tuner answered the manager's initialization, or the experiment failed."""
    if status.get("status") == "ERROR":
        return "retry" if NO_CONNECT in str(status.get("errors")) else "error"
    log = run.experiment_dir / "log" / "nnimanager.log"
    return log.exists() and log.read_text(errors="replace").count("received command from dispatcher: ID") \
        >= getattr(run, "_starts", 1) and "connected"


def _launch(action: list[str], run: ExperimentRun | None, config: dict | None, tmp_path: Path, env: dict,
            attempts: int = 3) -> ExperimentRun:
    """``nnictl create`` (``run`` None) or ``nnictl resume <id>``, retried when only NNI's start-up
    time limits were missed on a busy machine; returns the run once its tuner is connected (or it failed otherwise)."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        if run is None:
            config_path, work = _write_config(config, tmp_path)
            new, code, output = _create(nnictl_executable(), config_path, port, work, env, tmp_path)
            starts = 1
        else:
            r = subprocess.run([nnictl_executable(), *action, run.experiment_id, "--port", str(port)], env=env,
                               cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
            code, output = r.returncode, r.stdout + r.stderr
            new = ExperimentRun(run.experiment_id, port, run.working_directory, run.config_path)
            new.manager_pid = _registry_pid(env, run.experiment_id) or _find_manager_pid(run.experiment_id)
            starts = getattr(run, "_starts", 1) + 1
        if new is not None:
            new._starts = starts
        if code == 0 and new is not None:
            if _poll(new, _connected, 90, "the tuner to connect", allow_error=True) != "retry":
                return new   # connected, or failed for a reason of its own (the caller checks)
            output = str(_status(new).get("errors"))
        if new is not None:
            _stop(new, env)
            run = run if run is None else new
        if attempt == attempts or ("Timeout, retry" not in output and NO_CONNECT not in output):
            raise NnictlError(f"nnictl {' '.join(action)} failed (exit {code}, attempt {attempt}):\n{output}")
    raise AssertionError("unreachable")


def _trial(job: dict) -> int:
    return int(json.loads(job["hyperParameters"][-1])["parameters"]["trial"])


@pytest.mark.nnictl
@pytest.mark.slow
def test_nnictl_stop_then_resume_continues_the_search(tmp_path):
    """A tiny search (3 episodes x 2 steps x 2 branches) is stopped with ``nnictl stop`` while trials
    run, and ``nnictl resume`` finishes it: the tuner starts from the saved state, the trials that
    were running are re-run once (by NNI, not proposed again), no trial key runs twice, and exactly
    maxTrialNumber trials succeed."""
    config = _config()
    n = config["maxTrialNumber"]
    env = _experiment_env(tmp_path, True, None)
    run = _launch(["create"], None, config, tmp_path, env)
    state_path = run.experiment_dir / STATE
    try:
        def some_done(run, status, jobs):
            return sum(j.get("status") == "SUCCEEDED" for j in jobs) >= 3 and state_path.exists() and jobs

        _poll(run, some_done, 400, "3 finished trials")
    finally:
        _stop(run, env)
    before = torch.load(state_path, weights_only=True)["search"]
    done_before = {k: r for k, r in before["records"].items() if r["status"] == "done"}
    assert len(done_before) >= 3 and not before["episode"] >= 3

    resumed = _launch(["resume"], run, None, tmp_path, env)
    try:
        def finished(run, status, jobs):
            s = status.get("status")
            return (s in ("DONE", "STOPPED") or (s == "TUNER_NO_MORE_TRIAL" and len(jobs) >= n and all(
                j.get("status") in TERMINAL for j in jobs))) and jobs

        _poll(resumed, finished, 600, "the resumed search to finish")
        resumed.refresh()
        jobs = resumed.trial_jobs
        log = (resumed.experiment_dir / "log" / "dispatcher.log").read_text()
    finally:
        _stop(resumed, env)

    # the tuner continued from the saved state, not from scratch
    assert f"({len(before['records'])} trials known, episode {before['episode']})" in log, log[-3000:]
    after = torch.load(state_path, weights_only=True)["search"]
    assert after["episode"] == 3 and after["next_index"] == n and len(after["history"]) == 3
    assert len(after["records"]) == n and all(r["status"] == "done" for r in after["records"].values())
    for key, rec in done_before.items():          # finished trials are kept, not re-run
        assert after["records"][key]["reward"] == rec["reward"] and after["records"][key]["arch"] == rec["arch"]
    assert after["history"][:len(before["history"])] == before["history"]
    # NNI's view: maxTrialNumber trials, each trial key once, all succeeded
    assert len(jobs) == n and all(j["status"] == "SUCCEEDED" for j in jobs), [(j["trialJobId"], j["status"]) for j in jobs]
    assert sorted(_trial(j) for j in jobs) == list(range(n))
    for job in jobs:   # each job reported the trial it ran
        final = resumed.final_metric(job["trialJobId"])
        assert final is not None and int(final["trial"]) == _trial(job)


@pytest.mark.nnictl
def test_nnictl_create_with_unsatisfiable_constraints_errors_before_any_trial(tmp_path):
    """NNI 3.0 runs no classArgs validation for customized tuners during ``nnictl create`` (see
    strategies/epnas_nni.py), so the tuner checks as soon as it is connected: the experiment goes to
    ERROR at once, no trial starts, and the one-line reason is in the dispatcher and manager logs."""
    env = _experiment_env(tmp_path, True, None)
    run = _launch(["create"], None, _config(params_max=10), tmp_path, env)
    try:
        status = _poll(run, lambda r, s, j: s if s.get("status") == "ERROR" else None, 60, "status ERROR",
                       allow_error=True)
        assert run.get("/trial-jobs") == []
        time.sleep(2)
        assert run.get("/trial-jobs") == [] and _status(run).get("status") == "ERROR"
        manager = (run.experiment_dir / "log" / "nnimanager.log").read_text()
        dispatcher = (run.experiment_dir / "log" / "dispatcher.log").read_text()
    finally:
        _stop(run, env)
    message = "EPNAS tuner: constraint params <= 10 is unsatisfiable: the smallest layer network for input (1, 8, 8)"
    assert status["errors"] and message in manager and message in dispatcher
    line = next(l for l in manager.splitlines() if message in l)
    assert line.split("Dispatcher error: ", 1)[1].startswith(message)
    assert run.leftover_processes() == []


class _FakeDispatcher(MsgDispatcherBase):
    """Stands in for NNI's MsgDispatcher (the tuner finds its caller on the stack); no connection."""

    def __init__(self, tuner, recovered=None):  # noqa: super().__init__ would connect to a manager
        self.tuner, self.errors = tuner, []
        self.recovered_trial_params = dict(recovered or {})
        self.recovered_max_param_id = max(self.recovered_trial_params, default=-1)

    def report_error(self, error):
        self.errors.append(error)

    def handle_initialize(self, data):
        self.tuner.update_search_space(data)

    def handle_request_trial_jobs(self, ids):
        return self.tuner.generate_multiple_parameters(ids, st_callback=lambda pid, p: None)


def _nnictl_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NNI_LOG_DIRECTORY", str(tmp_path / "log"))   # as inside nnictl: a light constructor


def test_tuner_inside_nnictl_reports_bad_class_args_after_connecting(tmp_path, monkeypatch):
    _nnictl_env(monkeypatch, tmp_path)
    args = dict(space="layer", branches=2, episodes=1, steps=1, input_shape=[1, 8, 8],
                state_file=str(tmp_path / "s.pt"))
    for bad, message in ((dict(params_max=10), "EPNAS tuner: constraint params <= 10 is unsatisfiable"),
                         (dict(branchs=3), "EPNAS tuner: unknown EPNAS tuner classArgs key 'branchs' (did you mean "
                                           "'branches'?)")):
        tuner = EpnasTuner(**args, **bad)                # nothing checked yet: NNI needs it connected in 10 s
        dispatcher = _FakeDispatcher(tuner)
        with pytest.raises(UserError) as exc:
            dispatcher.handle_initialize({})
        assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
        assert len(dispatcher.errors) == 1 and dispatcher.errors[0].startswith(message)
    assert not (tmp_path / "s.pt").exists()


def test_tuner_takes_over_trials_nnictl_resume_reruns(tmp_path, monkeypatch):
    """On resume NNI re-runs the trials that were running: the tuner does not propose them again,
    and their results and ends (which the dispatcher would divert or drop) reach the controller."""
    from nni.runtime import msg_dispatcher

    _nnictl_env(monkeypatch, tmp_path)
    monkeypatch.setattr(msg_dispatcher, "_trial_params", {})   # the dispatcher's module-global table
    args = dict(space="layer", branches=2, episodes=2, steps=1, max_layers=4, input_shape=[1, 8, 8],
                state_file=str(tmp_path / "s.pt"), seed=1)
    first = EpnasTuner(**args)
    d1 = _FakeDispatcher(first)
    d1.handle_initialize({})
    running = d1.handle_request_trial_jobs([0, 1])
    assert [p["trial"] for p in running] == [0, 1]
    # stopped here; resume: NNI re-runs both trials with parameter ids 0 and 1
    second = EpnasTuner(**args)
    d2 = _FakeDispatcher(second, recovered={0: running[0], 1: running[1]})
    d2.handle_initialize({})
    assert second.resumed_from == 2
    assert d2.handle_request_trial_jobs([2, 3]) == [] and second.owed == 2   # both branches are busy
    assert d2.recovered_max_param_id == -1 and msg_dispatcher._trial_params[1] == running[1]
    second.receive_trial_result(0, running[0], {"default": 0.5})
    second.trial_end(1, False)                                              # the re-run trial 1 failed
    recs = second.search.records
    assert recs["t00000"]["status"] == "done" and recs["t00001"]["status"] == "failed"
    assert second.search.episode == 1 and second.owed == 0     # the owed trials are the next episode's
    assert sorted(recs) == ["t00000", "t00001", "t00002", "t00003"]
    assert {recs[k]["meta"]["episode"] for k in ("t00002", "t00003")} == {1}
