"""Run a real nnictl experiment from Python (the demo, the tests) and always clean it up.

    from experiments.launch import run_experiment

    with run_experiment(config, tmp_path=tmp_path, timeout=90) as exp:
        for job in exp.trial_jobs: ...          # GET /trial-jobs, as the web UI sees them
        exp.final_metric(job["trialJobId"])     # parsed final metric dict of a trial
        exp.get("/metric-data")                 # any other REST call while the manager is up

``config`` is a dict (or a path to a YAML file) in NNI's v2 config format.  The harness

* puts ``experimentWorkingDirectory`` under ``tmp_path`` (never ``~/nni-experiments``) and, by
  default, points ``HOME`` of nnictl and everything it starts at ``tmp_path/home``, so nnictl's
  experiment registry (``~/nni-experiments/.experiment``) is not touched either;
* picks a free port, runs ``<venv>/bin/nnictl create --config ... --port P`` with the
  interpreter's own nnictl, with no ``DISPLAY`` (starts serialized within a process and retried
  when NNI's own start-up timeouts fire on a busy machine);
* polls ``/api/v1/nni/check-status`` until the experiment is done (``DONE``, or the tuner ran out
  of trials and every trial has ended for longer than two manager ticks), raising on ``ERROR`` or
  timeout with the manager's log tail in the message;
* in a ``finally`` -- also after a failure, a timeout or Ctrl-C -- runs ``nnictl stop <id>``,
  waits for the NNI manager to exit, and kills its process group (the manager is started with
  ``setpgrp``; tuner and trial processes are its children) if anything is still alive.

Only processes this harness started are signalled, by their ids.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

__all__ = ["ExperimentRun", "NnictlError", "run_experiment", "free_port", "nnictl_executable"]

TERMINAL_TRIAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"})
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NnictlError(RuntimeError):
    """The experiment failed to start, failed, or did not finish in time."""


def nnictl_executable() -> str:
    """The ``nnictl`` next to the running interpreter (the project's venv)."""
    path = Path(sys.executable).parent / "nnictl"
    if not path.exists():
        raise NnictlError(f"no nnictl next to {sys.executable}")
    return str(path)


def free_port() -> int:
    """A free TCP port ``P`` whose neighbour ``P + 1`` is free too: NNI's REST server takes ``P``, and
    the remote training service in reuse mode opens its command channel on ``P + 1``
    (``nni_node/training_service/reusable/channels/webCommandChannel.js``)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535 and _port_free(port + 1):
            return port
    raise NnictlError("no free pair of TCP ports found for the NNI manager")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _process_group_members(pgid: int) -> list[int]:
    """Non-zombie processes whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _pgid_alive(pgid: int) -> bool:
    if Path("/proc").is_dir():
        return bool(_process_group_members(pgid))
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class ExperimentRun:
    """A started experiment: its id, port, folders, and (after completion) its trials and metrics."""

    experiment_id: str
    port: int
    working_directory: Path
    config_path: Path
    manager_pid: int | None = None
    status: str = "UNKNOWN"
    trial_jobs: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def experiment_dir(self) -> Path:
        return self.working_directory / self.experiment_id

    @property
    def rest_root(self) -> str:
        return f"http://localhost:{self.port}/api/v1/nni"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``/api/v1/nni<path>`` and decode the JSON answer."""
        with _opener.open(self.rest_root + path, timeout=timeout) as resp:
            body = resp.read().decode("utf-8")
        return json.loads(body) if body.strip() else None

    def refresh(self) -> None:
        self.trial_jobs = self.get("/trial-jobs") or []
        self.metrics = self.get("/metric-data") or []

    def trial_output_dir(self, trial_job_id: str) -> Path:
        """``$NNI_OUTPUT_DIR`` of a trial (local training service), or its run folder brought home
        from a remote host (:meth:`fetch`, ``<experiment>/trials/<id>``)."""
        fetched = self.experiment_dir / "trials" / trial_job_id
        if fetched.is_dir():
            return fetched
        for job in self.trial_jobs:
            if job.get("trialJobId") == trial_job_id and job.get("logPath"):
                path = Path(str(job["logPath"]).split("://", 1)[-1])
                if path.is_dir():
                    return path
        return self.experiment_dir / "environments" / "local-env" / "trials" / trial_job_id

    def fetch(self) -> list[str]:
        """Remote training service: bring every trial's run folder home (:mod:`analysis.remote`);
        returns the warning lines (hosts that could not be read)."""
        from analysis.remote import fetch_run_folders

        return fetch_run_folders(self.experiment_dir).warnings

    def cancel(self, trial_job_id: str) -> None:
        """End a trial through the REST API, as the web UI's "kill" button does."""
        req = urllib.request.Request(f"{self.rest_root}/trial-jobs/{trial_job_id}", method="DELETE")
        with contextlib.suppress(urllib.error.URLError, OSError):
            _opener.open(req, timeout=10).close()

    @property
    def trial_ids(self) -> list[str]:
        return [j["trialJobId"] for j in self.trial_jobs]

    def succeeded(self, n: int) -> bool:
        """Exactly ``n`` trials, all SUCCEEDED."""
        return len(self.trial_jobs) == n and all(j.get("status") == "SUCCEEDED" for j in self.trial_jobs)

    def run_record(self, trial_job_id: str) -> dict[str, Any]:
        """The trial's run-folder ``config.json``: the config it ran (``config``) and its NNI ids (``nni``)."""
        return json.loads((self.trial_output_dir(trial_job_id) / "config.json").read_text())

    def trials(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Per trial: its id, the parameters the web UI shows for it and the config it ran."""
        return [(t, self.hyper_parameters(t)["parameters"], self.run_record(t)["config"]) for t in self.trial_ids]

    def hyper_parameters(self, trial_job_id: str) -> dict[str, Any]:
        """The parameter record the web UI shows for a trial (``parameter_id``, ``parameters`` ...)."""
        job = next(j for j in self.trial_jobs if j["trialJobId"] == trial_job_id)
        records = [json.loads(h) for h in job.get("hyperParameters") or []]
        if not records:
            raise KeyError(f"trial {trial_job_id} has no hyperParameters")
        return records[-1]

    def metric_records(self, trial_job_id: str, type_: str = "FINAL") -> list[dict[str, Any]]:
        """Metric records of a trial, ``data`` decoded (NNI stores it JSON-encoded twice)."""
        out = []
        for m in self.metrics:
            if m.get("trialJobId") == trial_job_id and m.get("type") == type_:
                m = dict(m)
                data = m.get("data")
                while isinstance(data, str):
                    data = json.loads(data)
                m["data"] = data
                out.append(m)
        return out

    def final_metric(self, trial_job_id: str) -> Any:
        records = self.metric_records(trial_job_id, "FINAL")
        return records[-1]["data"] if records else None

    def leftover_processes(self) -> list[int]:
        """Live processes still in the NNI manager's process group (manager, tuner, trials)."""
        return _process_group_members(self.manager_pid) if self.manager_pid else []

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for name in ("nnimanager.log", "dispatcher.log", "nnictl_stderr.log"):
            path = self.experiment_dir / "log" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(chunks)


def _write_config(config: dict[str, Any] | str | os.PathLike, tmp_path: Path) -> tuple[Path, Path]:
    if not isinstance(config, dict):
        source = Path(config).resolve()
        config = dict(yaml.safe_load(source.read_text()))
        code_dir = config.get("trialCodeDirectory", ".")
        if not Path(code_dir).is_absolute():  # relative to the YAML file, as nnictl reads it
            config["trialCodeDirectory"] = str((source.parent / code_dir).resolve())
    config = dict(config)
    work = Path(tmp_path) / "nni-experiments"
    work.mkdir(parents=True, exist_ok=True)
    config["experimentWorkingDirectory"] = str(work)
    path = Path(tmp_path) / "nni_config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, work


def _experiment_env(tmp_path: Path, isolate_home: bool, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    for key in [k for k in env if k.startswith("NNI_")]:
        env.pop(key)  # a test run from inside an NNI trial must not leak its trial identity
    # trial commands say ``python``: make it this interpreter (the project's venv)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if isolate_home:
        home = Path(tmp_path) / "home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    env.update(extra or {})
    return env


def _registry(env: dict[str, str]) -> dict[str, Any]:
    """nnictl's experiment registry (``$HOME/nni-experiments/.experiment``)."""
    path = Path(env.get("HOME", str(Path.home()))) / "nni-experiments" / ".experiment"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


def _registry_pid(env: dict[str, str], experiment_id: str) -> int | None:
    info = _registry(env).get(experiment_id) or {}
    with contextlib.suppress(TypeError, ValueError):
        return int(info["pid"]) if info.get("pid") else None
    return None


NO_MORE_TRIAL_SETTLE_S = 12.0

#: nnimanager.log lines of the remote training service after which no trial can start; NNI itself
#: goes on waiting (microsoft/nni#4072, #5239).
_REMOTE_FATAL = re.compile(r"ERROR \((?:RemoteV3[.\w]*|RemoteEnvironmentService|TrialDispatcher|NNIManager)\) "
                           r"(?P<what>.*(?:Cannot find python|SSH command failed|Failed to launch trial keeper|"
                           r"All configured authentication methods failed|ECONNREFUSED|EHOSTUNREACH|ETIMEDOUT|"
                           r"NNI version mismatch|Timed out while waiting for handshake).*)")


def _remote_fatal(run: ExperimentRun) -> str | None:
    path = run.experiment_dir / "log" / "nnimanager.log"
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            m = _REMOTE_FATAL.search(line)
            if m:
                return " ".join(m["what"].split())[:300]
    return None


def _wait_done(run: ExperimentRun, timeout: float, poll_s: float,
               on_poll: Callable[[ExperimentRun, list], None] | None = None,
               on_note: Callable[[str], None] | None = None, machines: list[dict] | None = None) -> None:
    """Poll until the experiment is done; ``machines``: the remote hosts (watched, see HostWatch)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    settled: tuple[float, int] | None = None   # (since when, how many jobs) all listed jobs are finished
    watch = None
    if machines:
        from .remote import HostWatch

        watch = HostWatch(run.experiment_dir / "log" / "nnimanager.log", machines)
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            jobs = run.get("/trial-jobs") or []
            if on_poll is not None:
                on_poll(run, jobs)
            if watch is not None:
                # only while nothing has started: later, a lost host's errors are the watch's business
                fatal = _remote_fatal(run) if all(j.get("status") == "WAITING" for j in jobs) else None
                if fatal:
                    raise NnictlError(f"experiment {run.experiment_id}: remote training service failed: {fatal}")
                for note in watch.poll(jobs, run.cancel):
                    (on_note or (lambda m: print(m, file=sys.stderr)))(note)
            last = run.get("/check-status")
            status = (last or {}).get("status", "UNKNOWN")
            run.status = status
            if status == "ERROR":
                raise NnictlError(f"experiment {run.experiment_id} failed: {last.get('errors')}\n{run.log_tail()}")
            if status in ("DONE", "STOPPED"):
                run.refresh()
                return
            if status == "TUNER_NO_MORE_TRIAL":
                # The tuner may send its last trial and "no more trials" in one breath: the manager
                # then still holds that trial in its queue and submits it on its next tick (every
                # 5 s, nni_node/core/nnimanager.js).  So "every listed job finished" only counts once
                # it has held, with the same jobs, for longer than two ticks.
                jobs = run.get("/trial-jobs") or []
                if jobs and all(j.get("status") in TERMINAL_TRIAL_STATUSES for j in jobs):
                    if settled is None or settled[1] != len(jobs):
                        settled = (time.monotonic(), len(jobs))
                    elif time.monotonic() - settled[0] >= NO_MORE_TRIAL_SETTLE_S:
                        run.refresh()
                        return
                else:
                    settled = None
        time.sleep(poll_s)
    with contextlib.suppress(Exception):
        run.refresh()
    raise NnictlError(f"experiment {run.experiment_id} not done after {timeout:.0f} s "
                      f"(last status: {last})\n{run.log_tail()}")


# NNI gives its manager ~3 s to come up (nni/experiment/launcher.py ``_check_rest_server``) and
# the tuner 10 s to connect (nni_node/core/tuner_command_channel.js); on a busy 2-core box
# experiments starting side by side miss that.  So starts are serialized per process (up to the
# first trial), and a start that failed only for these reasons is retried on a new port.
_start_lock = threading.Lock()
_STARTUP_FAILURES = ("Timeout, retry", "Tuner did not connect")


def _create(nnictl: str, config_path: Path, port: int, work: Path, env: dict[str, str],
            cwd: Path) -> tuple[ExperimentRun | None, int, str]:
    try:
        created = subprocess.run(
            [nnictl, "create", "--config", str(config_path), "--port", str(port)],
            env=env, cwd=str(cwd), capture_output=True, text=True, timeout=120,
        )
        code, output = created.returncode, (created.stdout or "") + (created.stderr or "")
    except subprocess.TimeoutExpired as exc:  # hung: still find and stop what it started
        parts = [p.decode(errors="replace") if isinstance(p, bytes) else (p or "") for p in (exc.stdout, exc.stderr)]
        code, output = -1, "nnictl create timed out\n" + "".join(parts)
    output = re.sub(r"\x1b\[[0-9;]*m", "", output)
    match = re.search(r"Experiment ID:\s*(\w+)", output)
    run = None
    if match:
        run = ExperimentRun(match.group(1), port, work, config_path)
        run.manager_pid = _registry_pid(env, run.experiment_id) or _find_manager_pid(run.experiment_id)
    return run, code, output


def _wait_first_trial(run: ExperimentRun, timeout: float = 60.0) -> None:
    """Until the tuner is connected and has produced a trial (or the experiment ended/failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            status = (run.get("/check-status") or {}).get("status")
            if status not in (None, "INITIALIZED", "RUNNING") or run.get("/trial-jobs"):
                return
        time.sleep(0.2)


@contextlib.contextmanager
def run_experiment(
    config: dict[str, Any] | str | os.PathLike,
    *,
    tmp_path: str | os.PathLike,
    port: int | None = None,
    timeout: float = 120.0,
    poll_s: float = 0.5,
    isolate_home: bool = True,
    env: dict[str, str] | None = None,
    start_attempts: int = 3,
    on_start: Callable[[ExperimentRun], None] | None = None,
    on_poll: Callable[[ExperimentRun, list], None] | None = None,
    keep_running: bool = False,
    check_hosts: bool = True,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[ExperimentRun]:
    """Create the experiment, wait until it is done, yield it, and stop it afterwards.

    A start that failed only because NNI's manager or tuner came up too slowly is retried
    (``start_attempts``), as a new experiment in the same ``tmp_path``.  ``on_start`` is called
    once the manager is up (the demo prints the web UI address), ``on_poll`` at every poll with
    the trial jobs (progress bars).  ``keep_running`` leaves a *successful* experiment running
    after the ``with`` block (so its web UI stays up); on any failure it is always stopped.

    Remote training service (``trainingService.platform: remote``): every host is checked first
    (:func:`experiments.remote.check_hosts`: a bad host is a one-line ``UserError``), the manager's
    log is watched while it runs (:class:`experiments.remote.HostWatch`: trials of a host that died
    are ended, ``on_note`` gets one line per event), and the trials' run folders are brought home
    into ``<experiment>/trials/<id>`` before the block runs (:meth:`ExperimentRun.fetch`).
    """
    tmp_path = Path(tmp_path)
    config_path, work = _write_config(config, tmp_path)
    written = yaml.safe_load(config_path.read_text())
    remote = (written.get("trainingService") or {}).get("platform") == "remote"
    if remote and check_hosts:
        from .remote import check_hosts as check

        check(written["trainingService"])   # one-line UserError naming a bad host, before anything starts
    proc_env = _experiment_env(tmp_path, isolate_home, env)
    nnictl = nnictl_executable()
    run: ExperimentRun | None = None
    try:
        for attempt in range(1, start_attempts + 1):
            with _start_lock:
                run, code, output = _create(nnictl, config_path, port or free_port(), work, proc_env, tmp_path)
                if code == 0 and run is not None:
                    _wait_first_trial(run)
            try:
                if code != 0 or run is None:
                    raise NnictlError(f"nnictl create failed (exit {code}, attempt {attempt}):\n{output}")
                if on_start is not None:
                    on_start(run)
                _wait_done(run, timeout, poll_s, on_poll, on_note,
                           machines=written["trainingService"]["machineList"] if remote else None)
                break
            except NnictlError as exc:
                if attempt == start_attempts or not any(m in str(exc) for m in _STARTUP_FAILURES):
                    raise
                if run is not None:  # half-started: stop it before trying again
                    _stop(run, proc_env)
                    run = None
        if remote:
            for note in run.fetch():
                (on_note or (lambda m: print(m, file=sys.stderr)))(f"warning: {note}")
        yield run
    except BaseException:
        if run is not None:
            _stop(run, proc_env)
            run = None
        raise
    finally:
        if run is not None and not keep_running:
            _stop(run, proc_env)


def _find_manager_pid(experiment_id: str) -> int | None:
    """The NNI manager (node) serving ``experiment_id``, found by its command line (Linux /proc)."""
    needle = f"--experiment-id\0{experiment_id}\0".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if needle in cmdline and b"main.js" in cmdline:
                    return int(entry.name)
    return None


def _stop(run: ExperimentRun, env: dict[str, str]) -> None:
    manager_pid = run.manager_pid = (run.manager_pid or _registry_pid(env, run.experiment_id)
                                     or _find_manager_pid(run.experiment_id))
    if run.experiment_id in _registry(env):  # nnictl can only stop what it registered
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([nnictl_executable(), "stop", run.experiment_id], env=env,
                           capture_output=True, text=True, timeout=60)
    if manager_pid is None:
        return
    # The manager was started with setpgrp, so its pid is the process group of tuner and trials.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (_pid_alive(manager_pid) or _pgid_alive(manager_pid)):
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _pgid_alive(manager_pid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(manager_pid, sig)
        time.sleep(1.0)
