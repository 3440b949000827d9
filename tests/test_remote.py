"""NNI's remote training service on two real SSH hosts on loopback (:mod:`experiments.loopback_hosts`).

Each host is its own ``sshd`` (own port, user, key and home with its own ``~/nni-experiments``);
the module fixture starts both and stops them afterwards (also on failure), and every experiment is
stopped by :func:`experiments.launch.run_experiment` or the ``finally`` of its test.  ``.ci/run``
installs ``openssh-server``; there (``COMPACTNAS_REQUIRE_REMOTE=1``) missing hosts fail the tests
instead of skipping them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.remote import fetch_run_folders
from experiments.launch import run_experiment
from experiments.loopback_hosts import HostsUnavailable, loopback_hosts, remote_training_service
from experiments.remote import apply_overlay, check_hosts, load_yaml
from experiments.runfolder import measurements_aside
from search_spaces.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PYTHON_PATH = str(Path(sys.executable).parent)
# allow_degenerate: the networks these tiny runs train learn nothing (exported anyway; the check: test_degenerate.py)
TINY = ("--dataset digits --limit 64 --width 0.0625 --batch_size 32 --search_epochs 2 --retrain_epochs 1 "
        "--threads 1 --device cpu --progress false --allow_degenerate true")

pytestmark = pytest.mark.nnictl


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    try:
        with loopback_hosts(2, root=tmp_path_factory.mktemp("hosts")) as started:
            yield started
    except HostsUnavailable as exc:
        if os.environ.get("COMPACTNAS_REQUIRE_REMOTE") == "1":
            pytest.fail(f"loopback SSH hosts required here: {exc}")
        pytest.skip(f"loopback SSH hosts unavailable: {exc}")


@pytest.fixture(autouse=True)
def _reuse_mode_workspace_cleaned():
    """Reuse mode keeps a host's workspace in ``/tmp/nni-experiments/<id>`` (NNI's fixed temp path,
    the same folder for every loopback host): remove what this test's experiments left there."""
    root = Path("/tmp/nni-experiments")
    before = set(root.iterdir()) if root.is_dir() else set()
    yield
    if root.is_dir():
        import shutil

        for entry in set(root.iterdir()) - before:
            shutil.rmtree(entry, ignore_errors=True)


def _proxyless_config(hosts, scopes, *, reuse=False, concurrency=2, extra="", **ts) -> dict:
    return {
        "experimentName": "test-remote-proxyless",
        "searchSpace": {"scope": {"_type": "choice", "_value": list(scopes)}},
        "trialCommand": f"python -m experiments.trial proxyless {TINY} {extra}",
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": concurrency,
        "maxTrialNumber": len(scopes),
        "tuner": {"name": "GridSearch"},
        "trainingService": remote_training_service(hosts, python_path=PYTHON_PATH, reuse_mode=reuse, **ts),
    }


def _local_summary(tmp_path: Path, params: dict, extra: str = "") -> dict:
    """The same trial standalone on this machine (same seed, same settings)."""
    from experiments import trial

    argv = ["proxyless", *shlex.split(TINY), *shlex.split(extra)]
    for k, v in params.items():
        argv += [f"--{k}", str(v)]
    folder = tmp_path / "local" / "-".join(f"{k}{v}" for k, v in params.items())
    assert trial.main([*argv, "--run-dir", str(folder)]) == 0
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("reuse", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["trial-keeper", "reuse"])
def test_scope_study_over_two_hosts_runs_what_the_web_ui_shows(hosts, tmp_path, reuse):
    """Concurrency 2 over 2 hosts: every trial SUCCEEDED, ran (and reported under) the parameters the
    web UI shows for it, its run folder came home, and its summary equals a local run's (times aside).
    (Reuse mode is also covered, in the fast suite, by the EPNAS test below.)"""
    scopes = ["none", "s", "m"]
    with run_experiment(_proxyless_config(hosts, scopes, reuse=reuse), tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(len(scopes)), exp.log_tail()
        seen = set()
        for tid in exp.trial_ids:
            shown, ran = exp.hyper_parameters(tid), exp.run_record(tid)
            assert ran["config"]["scope"] == shown["parameters"]["scope"]        # ran what the web UI shows
            assert ran["nni"]["parameter_id"] == shown["parameter_id"]          # and reported under it
            final = exp.final_metric(tid)
            summary = json.loads((exp.trial_output_dir(tid) / "summary.json").read_text())
            assert final["default"] == summary["default"] and final["params"] == summary["params"]
            local = _local_summary(tmp_path, {"scope": shown["parameters"]["scope"]})
            assert measurements_aside(summary) == measurements_aside(local)
            for name in ("metrics.csv", "arch.json", "model.pt"):
                assert (exp.trial_output_dir(tid) / name).is_file(), name
            seen.add(shown["parameters"]["scope"])
        assert seen == set(scopes)
        envs = {m[1] for j in exp.trial_jobs if (m := re.search(r"(?:environments|envs)/([^/]+)", j.get("logPath", "")))}
        assert len(envs) == 2, [j.get("logPath") for j in exp.trial_jobs]   # both hosts ran trials
        if not reuse:   # each host kept its trials in its own workspace
            for h in hosts:
                assert list(Path(h.home, "nni-experiments", exp.experiment_id).glob("environments/*/trials/*/summary.json"))
        from analysis.__main__ import main as analysis_main

        assert analysis_main([str(exp.experiment_dir)]) == 0
        assert (exp.experiment_dir / "analysis" / "table1.csv").is_file()


def test_results_and_trial_end_ids_are_right_on_remote_hosts(hosts, tmp_path):
    """NNI's parameter mix-up (microsoft/nni#5726) on the remote service: 6 echo trials, 3 at a time
    over 2 hosts, with a customized tuner that logs its callbacks.  Every trial ran and reported
    under the parameters the web UI shows, and the tuner got each result and each ``trial_end``
    under the parameter id of the trial that ran it (the end after that trial's result)."""
    from test_nni_concurrency import N_TRIALS, _collect, _config, _tuner_log

    config = _config("bridge", tmp_path, "custom")
    # the fixture is not uploaded (.nniignore: tests); a loopback host sees it at its path here
    config["trialCommand"] = config["trialCommand"].replace("tests/fixtures/", f"{REPO}/tests/fixtures/")
    config["trainingService"] = remote_training_service(hosts, python_path=PYTHON_PATH)
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(N_TRIALS), exp.log_tail()
        for h in hosts:   # each trial's ran.json, from the host that ran it (loopback: its home is here)
            for f in Path(h.home, "nni-experiments", exp.experiment_id).glob("environments/*/trials/*/ran.json"):
                (exp.experiment_dir / "trials" / f.parent.name).mkdir(parents=True, exist_ok=True)
                (exp.experiment_dir / "trials" / f.parent.name / "ran.json").write_bytes(f.read_bytes())
        rows = _collect(exp)
        envs = {m[1] for j in exp.trial_jobs if (m := re.search(r"(?:environments|envs)/([^/]+)", j.get("logPath", "")))}
    assert len(envs) == 2   # both hosts ran trials
    for r in rows:
        assert r["ran"]["parameters"] == r["ui"]["parameters"] and r["ran"]["parameter_id"] == r["ui"]["parameter_id"]
        assert str(r["final"]["parameterId"]) == str(r["ui"]["parameter_id"])
        assert r["final"]["data"]["default"] == float(r["ui"]["parameters"]["x"])
    log = _tuner_log(tmp_path)
    results = [e for e in log if e["event"] == "result"]
    ends = [e for e in log if e["event"] == "trial_end"]
    assert len(results) == len(ends) == N_TRIALS, log
    for e in results:
        assert e["value"]["x"] == float(e["parameters"]["x"]), e
    for end in ends:
        res = next(e for e in results if e["parameter_id"] == end["parameter_id"])
        assert log.index(res) < log.index(end), (end, log)


def _epnas_config(hosts, shared: Path, *, reuse: bool, episodes: int = 2) -> dict:
    args = {"space": "layer", "branches": 2, "episodes": episodes, "steps": 1, "max_layers": 4, "params_max": 20000,
            "input_shape": [1, 8, 8], "seed": 0}
    return {
        "experimentName": "test-remote-epnas",
        "searchSpace": {"epnas": {"_type": "choice", "_value": ["controller"]}},
        "trialCommand": ("python -m experiments.trial epnas --dataset digits --limit 64 --batch_size 32 --batch_ref 32 "
                         f"--lr 0.05 --epochs 1 --stop_epoch 1 --threads 1 --device cpu --progress false "
                         f"--share true --share_file {shared / 'epnas_shared.pt'}"),
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 2,
        "maxTrialNumber": 2 * episodes,
        "tuner": {"codeDirectory": str(REPO), "className": "strategies.epnas_nni.EpnasTuner", "classArgs": args},
        "trainingService": remote_training_service(hosts, python_path=PYTHON_PATH, reuse_mode=reuse),
    }


@pytest.mark.slow
def test_epnas_tuner_shares_weights_across_hosts(hosts, tmp_path):
    """The customized tuner on the manager, trials on two hosts (reuse mode), one sharing dictionary
    on a path both see: every trial reports share_ok=1, later trials load weights written by earlier
    ones, and the tuner saved its state."""
    shared = tmp_path / "shared"
    shared.mkdir()
    with run_experiment(_epnas_config(hosts, shared, reuse=True), tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(4), exp.log_tail()
        finals = [exp.final_metric(t) for t in exp.trial_ids]
        assert all(f["share_ok"] == 1 for f in finals)
        assert sum(f["shared_written"] for f in finals) > 0 and max(f["shared_loaded"] for f in finals) > 0
        assert (shared / "epnas_shared.pt").is_file() and (exp.experiment_dir / "epnas_tuner_state.pt").is_file()
        for tid in exp.trial_ids:   # each ran the network the web UI shows for it
            assert exp.run_record(tid)["config"]["trial"] == exp.hyper_parameters(tid)["parameters"]["trial"]


def test_epnas_trial_without_a_shared_path_says_so(tmp_path, monkeypatch):
    """On a remote host a share_file whose folder is not there shares nothing, and says it."""
    from experiments import nni_bridge
    from experiments.config import build_config
    from experiments.harness import execute
    from experiments.methods.epnas import EpnasTrialConfig, run

    nni_bridge._reset_for_tests()
    cfg = build_config(EpnasTrialConfig, dict(dataset="digits", limit=64, batch_size=32, batch_ref=32, lr=0.05,
                                              epochs=1, stop_epoch=1, max_layers=3, device="cpu", progress=False,
                                              share_file=str(tmp_path / "not-mounted" / "shared.pt")))
    with pytest.warns(RuntimeWarning, match="every host sees"):
        s = execute("epnas", cfg, run, tmp_path / "a")
    assert s["share_ok"] == 0 and s["shared_loaded"] == 0 and s["shared_written"] == 0
    monkeypatch.setenv("NNI_PLATFORM", "remote")   # the default file beside the run folder is per host
    with pytest.warns(RuntimeWarning, match="only this host"):
        s = execute("epnas", build_config(EpnasTrialConfig, {**cfg.__dict__, "share_file": "", "seed": 1}), run,
                    tmp_path / "b")
    assert s["share_ok"] == 0


@pytest.mark.parametrize("reuse", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["reuse", "trial-keeper"])
def test_a_host_that_dies_mid_trial_does_not_stall_the_experiment(tmp_path, reuse):
    """Its sshd and processes are killed while both hosts run a trial: that trial does not succeed,
    the others finish on the surviving host, and the experiment ends well before its time limit.
    Reuse mode is the one NNI would wait on forever (the launcher's watch ends the lost trial);
    with the trial keeper NNI ends it itself."""
    with loopback_hosts(2, root=tmp_path / "hosts") as own:     # own hosts: one of them dies
        config = _proxyless_config(own, ["none"] * 3, reuse=reuse, extra="--retrain_epochs 30")
        config["searchSpace"] = {"seed": {"_type": "choice", "_value": [0, 1, 2]}}
        killed: list[float] = []
        notes: list[str] = []

        def on_poll(run, jobs):
            if not killed and sum(j.get("status") == "RUNNING" for j in jobs) >= 2:
                killed.append(time.monotonic())
                own[1].kill()

        with run_experiment(config, tmp_path=tmp_path, timeout=400, on_poll=on_poll, on_note=notes.append) as exp:
            statuses = sorted(j["status"] for j in exp.trial_jobs)
        assert killed and time.monotonic() - killed[0] < 300
        assert statuses.count("SUCCEEDED") == 2 and len(statuses) == 3, statuses
        assert any(("not alive" in n) if reuse else (own[1].user in n or "stopped answering" in n) for n in notes), notes


def test_host_watch_holds_a_lost_trial_until_the_live_hosts_are_done(tmp_path):
    """Reuse mode: a trial on a dead environment is ended only when nothing runs or waits on a live
    host for the grace period -- held, it keeps NNI from handing the dead host the next trial."""
    from experiments.remote import HostWatch

    log = tmp_path / "nnimanager.log"
    log.write_text("".join(f"[t] INFO (RemoteEnvironmentService) pid in 127.0.0.1:/tmp/nni-experiments/x/envs/DEAD/pid "
                           "is not alive!\n" for _ in range(3)))
    now = [0.0]
    watch = HostWatch(log, [], grace_s=15.0, clock=lambda: now[0])
    lost = {"trialJobId": "L", "status": "RUNNING", "logPath": "file://h/tmp/nni-experiments/x/envs/DEAD/trials/L"}
    live = {"trialJobId": "A", "status": "RUNNING", "logPath": "file://h/tmp/nni-experiments/x/envs/LIVE/trials/A"}
    ended: list[str] = []
    notes = watch.poll([lost, live], ended.append)
    assert any("DEAD" in n and "not alive" in n for n in notes) and ended == []
    now[0] = 100.0
    assert watch.poll([lost, dict(live, status="SUCCEEDED"), {"trialJobId": "B", "status": "WAITING"}],
                      ended.append) == [] and ended == []          # the next trial waits: still held
    watch.poll([lost, dict(live, status="SUCCEEDED")], ended.append)
    now[0] = 110.0
    assert watch.poll([lost], ended.append) == [] and ended == []  # within the grace period
    now[0] = 116.0
    assert watch.poll([lost], ended.append) == ["warning: trial L ended: its host is gone"] and ended == ["L"]
    assert watch.poll([lost], ended.append) == [] and ended == ["L"]   # once


def test_stop_then_resume_a_remote_experiment(hosts, tmp_path):
    """``nnictl stop`` while the EPNAS search runs on the hosts, ``nnictl resume`` (the manager comes
    back on another port, each host starts a new trial keeper): the tuner continues from its saved
    state, every trial key runs once, every trial ran the parameters the web UI shows, and the
    trials of both hosts shared weights through the one dictionary on a path both see."""
    from test_nnictl_epnas import TERMINAL, _launch, _poll, _stop, _trial  # nnictl create/resume helpers

    from experiments.launch import _experiment_env

    shared = tmp_path / "shared"
    shared.mkdir()
    config = _epnas_config(hosts, shared, reuse=False, episodes=3)
    n = config["maxTrialNumber"]
    env = _experiment_env(tmp_path, True, None)
    run = _launch(["create"], None, config, tmp_path, env)
    try:
        _poll(run, lambda r, s, jobs: sum(j.get("status") == "SUCCEEDED" for j in jobs) >= 2 and jobs, 400,
              "two finished trials")
    finally:
        _stop(run, env)
    resumed = _launch(["resume"], run, None, tmp_path, env)
    try:
        def finished(r, status, jobs):
            return (status.get("status") in ("DONE", "STOPPED") or (
                len(jobs) >= n and all(j.get("status") in TERMINAL for j in jobs))) and jobs

        _poll(resumed, finished, 600, "the resumed experiment")
        resumed.refresh()
    finally:
        _stop(resumed, env)
    jobs = resumed.trial_jobs
    assert len(jobs) == n and all(j["status"] == "SUCCEEDED" for j in jobs), [(j["trialJobId"], j["status"]) for j in jobs]
    assert sorted(_trial(j) for j in jobs) == list(range(n))
    report = fetch_run_folders(resumed.experiment_dir)
    assert not report.warnings and set(report.trials) >= {j["trialJobId"] for j in jobs}
    finals = []
    for job in jobs:
        assert resumed.run_record(job["trialJobId"])["config"]["trial"] == _trial(job)
        finals.append(json.loads((resumed.trial_output_dir(job["trialJobId"]) / "summary.json").read_text()))
    assert all(f["share_ok"] == 1 for f in finals) and max(f["shared_loaded"] for f in finals) > 0
    assert (shared / "epnas_shared.pt").is_file()


# ------------------------------------------------------------------------------ bad input, fast


def _fake_python(folder: Path, *, nni_version: str | None = None, hide: tuple[str, ...] = ()) -> str:
    """A ``pythonPath`` folder whose ``python`` is this interpreter with a fake ``nni`` (another
    version) or with some packages hidden (a venv without the project's packages)."""
    fake = folder / "site"
    fake.mkdir(parents=True)
    if nni_version:
        (fake / "nni").mkdir()
        (fake / "nni" / "__init__.py").write_text(f"__version__ = {nni_version!r}\n")
    for name in hide:
        (fake / name).mkdir()
        (fake / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    script = folder / "python"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return str(folder)


@pytest.mark.parametrize("what", ["unreachable", "refused key", "no packages", "other nni"])
def test_bad_hosts_fail_fast_with_one_line(hosts, tmp_path, what, capsys):
    machine = hosts[0].machine(pythonPath=PYTHON_PATH)
    if what == "unreachable":
        from experiments.launch import free_port

        machine["port"], needle = free_port(), "cannot be reached"
    elif what == "refused key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
        machine["sshKeyFile"], needle = str(tmp_path / "stranger"), "refused the SSH key"
    elif what == "no packages":
        machine["pythonPath"], needle = _fake_python(tmp_path / "py", hide=("torch",)), "lacks the project's packages"
    else:
        machine["pythonPath"], needle = _fake_python(tmp_path / "py", nni_version="2.10"), "has nni 2.10"
    ts = {"platform": "remote", "reuseMode": False, "nniManagerIp": "127.0.0.1", "machineList": [machine]}
    t0 = time.monotonic()
    with pytest.raises(UserError, match=re.escape(needle)):
        check_hosts(ts, timeout=5)
    overlay = tmp_path / "hosts.yml"
    overlay.write_text(json.dumps({"trainingService": ts}))
    # the demo: one line, exit 2, before any experiment starts
    proc = subprocess.run([sys.executable, "-m", "experiments.demo", "--hosts", str(overlay), "--workdir",
                           str(tmp_path / "work"), "--stop"], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "HOME": str(tmp_path)})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], \
        proc.stderr[-2000:]
    assert time.monotonic() - t0 < 90
    assert not (tmp_path / "work" / "nni-experiments").exists() or not any(
        (tmp_path / "work" / "nni-experiments").glob("*/db"))
    # the launcher refuses the same config before nnictl create
    config = _proxyless_config(hosts, ["none"])
    config["trainingService"] = ts
    with pytest.raises(UserError, match=re.escape(needle)):
        with run_experiment(config, tmp_path=tmp_path / "launch", timeout=60):
            pass


def test_the_overlay_applies_to_every_shipped_config(tmp_path):
    """The documented overlay turns any config into a remote one without touching the rest."""
    overlay = load_yaml(REPO / "experiments" / "configs" / "remote.yml")
    for path in sorted((REPO / "experiments" / "configs").glob("*.yml")):
        if path.name == "remote.yml":
            continue
        base = load_yaml(path)
        merged = apply_overlay(base, overlay, config_dir=path.parent)
        assert merged["trainingService"]["platform"] == "remote"
        assert Path(merged["trialCodeDirectory"]) == REPO
        moved = ("trialCodeDirectory", "tuner")
        if "codeDirectory" in base.get("tuner", {}):   # a customized tuner (EPNAS): found from anywhere
            assert Path(merged["tuner"]["codeDirectory"]) == REPO
            assert {k: v for k, v in merged["tuner"].items() if k != "codeDirectory"} == \
                {k: v for k, v in base["tuner"].items() if k != "codeDirectory"}
        else:
            assert merged.get("tuner") == base.get("tuner")
        assert {k: v for k, v in merged.items() if k not in overlay and k not in moved} == \
            {k: v for k, v in base.items() if k not in overlay and k not in moved}
    with pytest.raises(UserError, match="machineList"):
        apply_overlay({}, {"trainingService": {"platform": "remote"}})


def test_nniignore_keeps_the_upload_to_code():
    """NNI uploads trialCodeDirectory (limit 2000 files / 300 MB): .nniignore leaves out venv, runs, data."""
    ignore = (REPO / ".nniignore").read_text().split()
    for pattern in (".venv", "runs", "data", ".git", "bench/out", "*.pt"):
        assert pattern in ignore, pattern


def test_rest_root_of_a_remote_trial(tmp_path, monkeypatch):
    """A remote trial finds the manager's REST API from its trial keeper's config, not from its
    own command channel (which is the trial keeper's server on the host)."""
    from experiments import nni_bridge

    env = tmp_path / "environments" / "remote-worker1"
    (env / "trial_keeper").mkdir(parents=True)
    (env / "trials" / "abc").mkdir(parents=True)
    (env / "trial_keeper" / "trial_keeper_config.json").write_text(json.dumps(
        {"managerCommandChannel": "ws://10.1.2.3:8080/prefix/platform/remote/1"}))
    monkeypatch.setenv("NNI_PLATFORM", "remote")
    monkeypatch.setenv("NNI_OUTPUT_DIR", str(env / "trials" / "abc"))
    monkeypatch.setenv("NNI_TRIAL_COMMAND_CHANNEL", "http://localhost:4567/env/remote-worker1/abc")
    assert nni_bridge._rest_root() == "http://10.1.2.3:8080/prefix/api/v1/nni"
    # nnictl resume starts a new trial keeper (trial_keeper_1) on the manager's new port
    (env / "trial_keeper_1").mkdir()
    (env / "trial_keeper_1" / "trial_keeper_config.json").write_text(json.dumps(
        {"managerCommandChannel": "ws://10.1.2.3:9090/prefix/platform/remote/1"}))
    assert nni_bridge._rest_root() == "http://10.1.2.3:9090/prefix/api/v1/nni"
    (env / "trial_keeper" / "trial_keeper.pid").write_text(str(os.getpid()))   # ... unless the old one started us
    assert nni_bridge._rest_root() == "http://10.1.2.3:8080/prefix/api/v1/nni"
    monkeypatch.setenv("NNI_PLATFORM", "local")
    assert nni_bridge._rest_root() == "http://localhost:4567/api/v1/nni"


def test_analysis_names_a_host_it_cannot_reach(tmp_path, capsys):
    """``python -m analysis`` on a remote experiment whose hosts are gone: one line per host, and it
    analyses what is already here."""
    import sqlite3

    exp = tmp_path / "exp1"
    (exp / "db").mkdir(parents=True)
    con = sqlite3.connect(exp / "db" / "nni.sqlite")
    con.execute("CREATE TABLE ExperimentProfile (params text, id text, execDuration integer, startTime integer, "
                "endTime integer, logDir text, nextSequenceId integer, revision integer)")
    from experiments.launch import free_port

    ts = {"platform": "remote", "machineList": [{"host": "127.0.0.1", "port": free_port(), "user": "nobody",
                                                 "sshKeyFile": str(tmp_path / "key")}]}
    con.execute("INSERT INTO ExperimentProfile VALUES (?, 'exp1', 0, 0, 0, '', 0, 1)",
                (json.dumps({"experimentId": "exp1", "trainingService": ts}),))
    con.commit()
    con.close()
    report = fetch_run_folders(exp, timeout=30)
    assert report.trials == [] and len(report.warnings) == 1 and "cannot be reached" in report.warnings[0]
    assert "nobody@127.0.0.1" in report.warnings[0]
    run = exp / "trials" / "t1"                      # a run folder fetched earlier is still analysed
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"method": "proxyless", "config": {"scope": "s"}, "seed": 0}))
    (run / "metrics.csv").write_text("phase,epoch,val_acc\nretrain,0,0.5\n")
    (run / "summary.json").write_text(json.dumps({"method": "proxyless", "default": 0.5, "top1": 0.5, "scope": "s"}))
    from analysis.__main__ import main as analysis_main

    capsys.readouterr()
    assert analysis_main([str(exp)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(err) == 1 and "nobody@127.0.0.1" in err[0]


@pytest.mark.slow
def test_the_demo_config_over_two_hosts(hosts, tmp_path):
    """The demo's scope study at its own size (experiments/configs/demo.yml + a host overlay), as a
    user runs it: every trial SUCCEEDED on the hosts and ran what the web UI shows."""
    overlay = {"trainingService": remote_training_service(hosts, python_path=PYTHON_PATH)}
    demo = REPO / "experiments" / "configs" / "demo.yml"
    config = apply_overlay(load_yaml(demo), overlay, config_dir=demo.parent)
    with run_experiment(config, tmp_path=tmp_path, timeout=3600) as exp:
        assert exp.succeeded(config["maxTrialNumber"]), exp.log_tail()
        for tid in exp.trial_ids:
            assert exp.run_record(tid)["config"]["scope"] == exp.hyper_parameters(tid)["parameters"]["scope"]
