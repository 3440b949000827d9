"""Bring the run folders of a remote NNI experiment home, so ``python -m analysis <experiment>`` works.

On NNI's remote training service each trial's run folder (``$NNI_OUTPUT_DIR``) stays on the SSH
host that ran it:

* ``reuseMode: false`` (NNI 3's trial keeper): ``~/nni-experiments/<exp>/environments/<env>/trials/<id>``;
* ``reuseMode: true``: ``/tmp/nni-experiments/<exp>/trials/<id>/nnioutput``.

:func:`fetch_run_folders` reads the experiment's own configuration from its database
(``<experiment>/db/nni.sqlite``, table ``ExperimentProfile``: the ``machineList`` with host, port,
user, key and ``pythonPath``), asks every host once, over ``ssh`` with the configured key, for the
run folders it holds (a small Python script on the host's interpreter packs them, checkpoints
left out), and unpacks them into ``<experiment>/trials/<id>/`` -- where a local experiment's run
folders are.  A host that cannot be reached is named in one warning line; its trials are
analysed from what is already here.  The OpenSSH client is used as NNI uses its own: host keys are
not checked (``StrictHostKeyChecking=no``), password logins are not supported here (use a key).
"""
from __future__ import annotations

import io
import json
import shlex
import sqlite3
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FetchReport", "experiment_config", "fetch_run_folders", "is_remote_experiment", "ssh_command"]

#: Runs on the host's interpreter: ``argv[1]`` = experiment id; writes a tar of every run folder
#: (``<trial id>/<file>``) it finds to stdout.
_PACK = r"""
import io, os, sys, tarfile
from pathlib import Path
exp = sys.argv[1]
roots = [(Path.home() / "nni-experiments" / exp / "environments", "*/trials/*"),
         (Path("/tmp/nni-experiments") / exp / "trials", "*/nnioutput")]
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|")
for base, pattern in roots:
    for d in sorted(base.glob(pattern)) if base.is_dir() else []:
        if not (d / "config.json").is_file():
            continue
        trial = d.parent.name if d.name == "nnioutput" else d.name
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.name != "checkpoint.pt" and not f.name.startswith("."):
                out.add(str(f), arcname=f"{trial}/{f.relative_to(d)}")
out.close()
"""


@dataclass
class FetchReport:
    trials: list[str] = field(default_factory=list)          # trial ids whose run folder came home
    warnings: list[str] = field(default_factory=list)        # one line per host that could not be read


def experiment_config(experiment_dir: str | Path) -> dict[str, Any] | None:
    """The experiment's configuration (latest revision) from its database, or ``None``."""
    db = Path(experiment_dir) / "db" / "nni.sqlite"
    if not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT params FROM ExperimentProfile ORDER BY revision DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return json.loads(row[0]) if row else None


def is_remote_experiment(experiment_dir: str | Path) -> bool:
    cfg = experiment_config(experiment_dir) or {}
    ts = cfg.get("trainingService") or {}
    return isinstance(ts, dict) and ts.get("platform") == "remote"


def ssh_command(machine: dict[str, Any], *, connect_timeout: int = 10) -> list[str]:
    """``ssh`` argv (before the remote command) for one ``machineList`` entry."""
    cmd = ["ssh", "-p", str(machine.get("port", 22)), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    key = machine.get("sshKeyFile")
    if key:
        cmd += ["-i", str(Path(key).expanduser())]
    return cmd + [f"{machine['user']}@{machine['host']}"]


def _python(machine: dict[str, Any]) -> str:
    folder = machine.get("pythonPath")
    return f"{folder.rstrip('/')}/python" if folder else "python3"


def _describe(machine: dict[str, Any]) -> str:
    return f"{machine.get('user')}@{machine.get('host')}:{machine.get('port', 22)}"


def fetch_run_folders(experiment_dir: str | Path, *, timeout: float = 300.0) -> FetchReport:
    """Copy every run folder of a remote experiment into ``<experiment>/trials/<id>/`` (see above)."""
    exp_dir = Path(experiment_dir)
    report = FetchReport()
    cfg = experiment_config(exp_dir) or {}
    ts = cfg.get("trainingService") or {}
    if not isinstance(ts, dict) or ts.get("platform") != "remote":
        return report
    exp_id = cfg.get("experimentId") or exp_dir.name
    for machine in ts.get("machineList") or []:
        if machine.get("password") and not machine.get("sshKeyFile"):
            report.warnings.append(f"host {_describe(machine)}: password login, run folders not fetched (use a key)")
            continue
        cmd = ssh_command(machine) + [f"{shlex.quote(_python(machine))} - {shlex.quote(exp_id)}"]
        try:
            proc = subprocess.run(cmd, input=_PACK.encode(), capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            report.warnings.append(f"host {_describe(machine)} cannot be reached ({type(exc).__name__}); "
                                   "its trials are analysed from what is here")
            continue
        if proc.returncode != 0:
            why = " ".join(proc.stderr.decode(errors="replace").split())[-200:] or f"exit {proc.returncode}"
            report.warnings.append(f"host {_describe(machine)} cannot be reached ({why}); "
                                   "its trials are analysed from what is here")
            continue
        with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
            for member in tar.getmembers():
                if not member.isfile() or ".." in Path(member.name).parts or member.name.startswith("/"):
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                target = exp_dir / "trials" / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")   # atomic: a reader never sees half a file
                tmp.write_bytes(src.read())
                tmp.replace(target)
                trial = member.name.split("/", 1)[0]
                if trial not in report.trials:
                    report.trials.append(trial)
    return report
