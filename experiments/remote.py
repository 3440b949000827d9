"""NNI's remote training service for CompactNAS: the host overlay, the pre-flight check, the watch.

Any experiment config of ``experiments/configs/`` runs across SSH hosts with one overlay that
replaces its ``trainingService`` (``experiments/configs/remote.yml`` is the documented example)::

    python -m experiments.remote experiments/configs/demo.yml --hosts my_hosts.yml --out demo_remote.yml
    nnictl create --config demo_remote.yml

:func:`apply_overlay` merges the overlay (its ``trainingService`` replaces the config's; any other
top-level key, e.g. ``trialGpuNumber``, overrides), keeps ``trialCodeDirectory`` pointing at the
project (NNI uploads it to every host; the project's ``.nniignore`` keeps that upload to code), and
writes the merged file next to the overlay unless ``--out`` says where.  Before writing, every host
is checked (:func:`check_hosts`) in seconds, where NNI would leave trials WAITING for minutes
(microsoft/nni#4072, #5239): the host answers SSH with the configured key, ``pythonPath`` holds a
Python that imports ``nni`` (the manager's version) and the project's dependencies.  A bad host
is one line ``error: ...`` and exit status 2.  ``experiments.launch.run_experiment`` and the demo
run the same check before ``nnictl create``.

While an experiment runs, :class:`HostWatch` reads the manager's log for what NNI 3.0 reports but
does not act on: in reuse mode a host that died leaves its trials RUNNING forever while the log
says ``pid in <host>:<dir>/envs/<env>/pid is not alive!`` every 5 s; the watch cancels those
trials (NNI then marks them ``USER_CANCELED``) so the experiment finishes on the other hosts.  It
cancels them only once no trial runs or waits on a live host for ``grace_s``: NNI's dispatcher
hands a new trial to any idle environment, the dead one included, so a lost trial cancelled
early frees the dead host for the next trial, which is lost in turn; held until then, it keeps
the dead environment busy and the remaining trials run on the live hosts.  In
``reuseMode: false`` NNI ends such trials itself (also as ``USER_CANCELED``: its compatibility
layer gives every trial that stopped without an exit code that status,
``nni_node/training_service/v3/compat.js``), and the watch only names the lost host.
"""
from __future__ import annotations

import argparse
import copy
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import load_yaml
from .errors import UserError, exit_on_error

__all__ = ["HostWatch", "apply_overlay", "check_hosts", "is_remote", "load_yaml", "main"]

REPO = Path(__file__).resolve().parents[1]
#: What a trial imports on a host (the project's code itself comes with NNI's upload).
HOST_IMPORTS = ("nni", "torch", "torchvision", "numpy", "sklearn", "pandas", "yaml", "filelock")


def is_remote(config: dict[str, Any]) -> bool:
    ts = config.get("trainingService")
    return isinstance(ts, dict) and ts.get("platform") == "remote"


def apply_overlay(config: dict[str, Any], overlay: dict[str, Any], *, config_dir: Path | None = None) -> dict[str, Any]:
    """``config`` with ``overlay``'s keys (its ``trainingService`` replaces the config's); a relative
    ``trialCodeDirectory``, and a relative ``codeDirectory`` of a customized tuner / assessor /
    advisor, are made absolute against ``config_dir`` (the config file's folder): the merged
    file is written elsewhere (beside the host list), where the relative paths would point wrong."""
    ts = overlay.get("trainingService")
    if not isinstance(ts, dict) or ts.get("platform") != "remote":
        raise UserError("the host overlay needs trainingService.platform: remote")
    machines = ts.get("machineList")
    if not isinstance(machines, list) or not machines:
        raise UserError("the host overlay needs trainingService.machineList with at least one host")
    for i, m in enumerate(machines):
        missing = [k for k in ("host", "user") if not m.get(k)]
        if missing:
            raise UserError(f"machineList[{i}] lacks {', '.join(missing)}")
    merged = copy.deepcopy(config)
    merged.update(copy.deepcopy(overlay))
    if config_dir is not None:
        code = merged.get("trialCodeDirectory", ".")
        if not Path(code).is_absolute():
            merged["trialCodeDirectory"] = str((config_dir / code).resolve())
        for role in ("tuner", "assessor", "advisor"):
            algo = merged.get(role)
            if isinstance(algo, dict) and algo.get("codeDirectory") and not Path(algo["codeDirectory"]).is_absolute():
                algo["codeDirectory"] = str((config_dir / algo["codeDirectory"]).resolve())
    return merged


# --------------------------------------------------------------------------- pre-flight


def _ssh(machine: dict[str, Any], timeout: int) -> list[str]:
    from analysis.remote import ssh_command

    return ssh_command(machine, connect_timeout=timeout)


def _describe(m: dict[str, Any]) -> str:
    return f"{m.get('user')}@{m.get('host')}:{m.get('port', 22)}"


def _local_nni_version() -> str:
    from importlib.metadata import version

    return version("nni")


def check_hosts(training_service: dict[str, Any], *, timeout: int = 10,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Check every host of a remote ``trainingService``; one line per host on success, or raise
    :class:`UserError` naming the first bad host and what is wrong."""
    local = _local_nni_version()
    probe = ("import importlib, sys\n"
             "missing = []\n"
             f"for name in {HOST_IMPORTS!r}:\n"
             "    try:\n        importlib.import_module(name)\n"
             "    except Exception as e:\n        missing.append(f'{name} ({type(e).__name__})')\n"
             "import nni\n"
             "print('NNI', nni.__version__)\n"
             "print('MISSING', ';'.join(missing))\n"
             "print('PY', sys.executable)\n")
    lines = []
    for m in training_service.get("machineList") or []:
        who = _describe(m)
        if m.get("password") and not m.get("sshKeyFile"):
            lines.append(f"{who}: password login, not pre-checked")
            continue
        key = m.get("sshKeyFile")
        if key and not Path(key).expanduser().is_file():
            raise UserError(f"host {who}: sshKeyFile {key} does not exist")
        folder = m.get("pythonPath")
        python = f"{str(folder).rstrip('/')}/python" if folder else "python3"
        cmd = _ssh(m, timeout) + [f"{shlex.quote(python)} -c {shlex.quote(probe)}"]
        try:
            proc = run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            raise UserError(f"host {who} did not answer within {timeout + 60} s") from None
        err = " ".join((proc.stderr or "").split())
        if proc.returncode == 255:   # ssh itself failed
            if "Permission denied" in err or "publickey" in err:
                raise UserError(f"host {who} refused the SSH key {key or '(default)'}: {err[-160:]}")
            raise UserError(f"host {who} cannot be reached: {err[-160:] or 'ssh failed'}")
        out = dict(line.split(" ", 1) for line in (proc.stdout or "").splitlines() if " " in line)
        if proc.returncode != 0 or "NNI" not in out:
            what = "no Python there" if "No such file" in err or "not found" in err else err[-200:]
            if "No module named 'nni'" in err:
                what = "its Python cannot import nni"
            raise UserError(f"host {who}: pythonPath {folder or '(none: python3 on PATH)'} is not the project's "
                            f"interpreter ({what})")
        if out.get("MISSING", "").strip():
            raise UserError(f"host {who}: pythonPath {folder or '(none)'} lacks the project's packages: "
                            f"{out['MISSING'].strip()} (install requirements.txt there)")
        if out["NNI"].strip() != local:
            raise UserError(f"host {who} has nni {out['NNI'].strip()}, this manager has nni {local}: "
                            "install the same version on every host")
        lines.append(f"{who}: ok (nni {local}, {out.get('PY', python).strip()})")
    return lines


# --------------------------------------------------------------------------- watching a running experiment


_NOT_ALIVE = re.compile(r"pid in (?P<host>[^:\s]+):(?P<dir>\S+)/envs/(?P<env>\w+)/pid is not alive!")
_WORKER_LOST = re.compile(r"\((?:RemoteV3\.Worker\.|WsConnection\.)(?P<worker>\d+)\) .*(?:Trial keeper failed|"
                          r"Failed sending command\. Drop connection)")


@dataclass
class HostWatch:
    """Reads ``nnimanager.log`` of a running remote experiment (see the module docstring).

    ``poll(jobs, cancel)`` returns one-line notes for what happened since the last poll; ``cancel``
    is called with the id of each trial the watch ends.  ``strikes``: how many "not alive" reports
    of one environment count as a dead host (NNI repeats it every 5 s); ``grace_s``: how long no
    trial may run or wait on a live host before the lost ones are ended (two of NNI's 5-s ticks
    and more: the manager submits the next trial on a tick).  ``clock``: for tests.
    """

    log_path: Path
    machines: list[dict[str, Any]]
    strikes: int = 3
    offset: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    dead_envs: set[str] = field(default_factory=set)
    lost_workers: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    grace_s: float = 15.0
    clock: Callable[[], float] = time.monotonic
    idle_since: float | None = None

    def _new_lines(self) -> list[str]:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        return data[:cut].decode(errors="replace").splitlines()

    def poll(self, jobs: list[dict[str, Any]], cancel: Callable[[str], None]) -> list[str]:
        notes = []
        for line in self._new_lines():
            m = _NOT_ALIVE.search(line)
            if m:
                self.counts[m["env"]] = self.counts.get(m["env"], 0) + 1
                if self.counts[m["env"]] >= self.strikes and m["env"] not in self.dead_envs:
                    self.dead_envs.add(m["env"])
                    notes.append(f"warning: environment {m['env']} on host {m['host']} is not alive "
                                 f"({self.strikes} checks); its trials end when the live hosts are done")
                continue
            w = _WORKER_LOST.search(line)
            if w and w["worker"] not in self.lost_workers:
                self.lost_workers.add(w["worker"])
                i = int(w["worker"]) - 1
                who = _describe(self.machines[i]) if 0 <= i < len(self.machines) else f"worker {w['worker']}"
                notes.append(f"warning: host {who} stopped answering; NNI ends its running trials")
        active = [j for j in jobs
                  if j.get("status") in ("RUNNING", "WAITING") and j.get("trialJobId") not in self.cancelled]
        lost = [j for j in active if any(f"/envs/{env}" in str(j.get("logPath") or "") for env in self.dead_envs)]
        if not lost or len(lost) < len(active):   # a live host still has work: hold the lost trials
            self.idle_since = None
            return notes
        now = self.clock()
        if self.idle_since is None:
            self.idle_since = now
        if now - self.idle_since < self.grace_s:
            return notes
        for job in lost:
            tid = job["trialJobId"]
            self.cancelled.add(tid)
            cancel(tid)
            notes.append(f"warning: trial {tid} ended: its host is gone")
        self.idle_since = None
        return notes


# --------------------------------------------------------------------------- CLI


def _main(argv: list[str]) -> int:
    import yaml

    p = argparse.ArgumentParser(prog="python -m experiments.remote",
                                description="Apply a host overlay to an experiment config and check the hosts.")
    p.add_argument("config", help="an experiment config, e.g. experiments/configs/demo.yml")
    p.add_argument("--hosts", required=True, help="the overlay with trainingService (see experiments/configs/remote.yml)")
    p.add_argument("--out", help="merged config to write (default: <config name>_remote.yml next to --hosts)")
    p.add_argument("--no-check", action="store_true", help="write the merged config without checking the hosts")
    p.add_argument("--timeout", type=int, default=10, help="SSH connect timeout per host, seconds")
    args = p.parse_args(argv)
    config_path = Path(args.config)
    merged = apply_overlay(load_yaml(config_path), load_yaml(args.hosts), config_dir=config_path.resolve().parent)
    if not args.no_check:
        for line in check_hosts(merged["trainingService"], timeout=args.timeout):
            print(line)
    out = Path(args.out) if args.out else Path(args.hosts).resolve().parent / f"{config_path.stem}_remote.yml"
    from .runfolder import atomic_write_text

    atomic_write_text(out, yaml.safe_dump(merged, sort_keys=False))
    print(f"wrote {out}; start it with: nnictl create --config {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_on_error(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
