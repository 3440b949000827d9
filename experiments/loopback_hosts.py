"""SSH hosts on loopback, for trying NNI's remote training service on one machine (tests, benchmark).

    with loopback_hosts(2, root=tmp_path) as hosts:
        config["trainingService"] = remote_training_service(hosts, python_path=...)

Each :class:`LoopbackHost` is a real OpenSSH server (``/usr/sbin/sshd``) listening on
``127.0.0.1:<free port>``, with its own host key, its own login user (``cnas-<tag>-<n>``) and its own
home directory under ``root``, so each host keeps its own ``~/nni-experiments`` workspace as a separate
machine would.  The login users are aliases of uid 0 made for the purpose (``useradd -o -u 0``): the
project's interpreter may live under ``/root`` (pyenv), which no other user can read, and a remote
host of a real cluster runs the project's interpreter the same way.  Only the user's own key
(generated here) logs in, and only on these servers; :meth:`LoopbackHost.stop` (also on failure)
kills the server and every process that runs with the host's ``HOME``, and removes the user.

Needs root (``useradd``) and ``openssh-server``; ``.ci/run`` installs the latter when it is missing.
:func:`loopback_hosts` raises :class:`HostsUnavailable` naming what is missing.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["HostsUnavailable", "LoopbackHost", "loopback_hosts", "remote_training_service", "SSHD"]

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class HostsUnavailable(RuntimeError):
    """Loopback SSH hosts cannot be started here (no sshd, not root ...)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostsUnavailable(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()}")


@dataclass
class LoopbackHost:
    """One sshd on 127.0.0.1 with its own user, key and home (see the module docstring)."""

    root: Path
    index: int
    tag: str
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def user(self) -> str:
        return f"cnas-{self.tag}-{self.index}"

    @property
    def home(self) -> Path:
        return self.root / f"host{self.index}" / "home"

    @property
    def etc(self) -> Path:
        return self.root / f"host{self.index}" / "etc"

    @property
    def key_file(self) -> Path:
        return self.etc / "id_ed25519"

    @property
    def log_file(self) -> Path:
        return self.etc / "sshd.log"

    def machine(self, **extra) -> dict:
        """This host as an entry of NNI's ``machineList``."""
        return {"host": "127.0.0.1", "port": self.port, "user": self.user, "sshKeyFile": str(self.key_file), **extra}

    def start(self, timeout: float = 15.0) -> "LoopbackHost":
        self.home.mkdir(parents=True, exist_ok=True)
        self.etc.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.etc / "host_key")])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key_file)])
        shutil.copy(self.etc / "id_ed25519.pub", self.etc / "authorized_keys")
        _run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-p", "*", "-d", str(self.home), "-s", "/bin/bash", self.user])
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege-separation directory
        self.port = _free_port()
        (self.etc / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.etc / 'host_key'}",
            f"PidFile {self.etc / 'sshd.pid'}", f"AuthorizedKeysFile {self.etc / 'authorized_keys'}",
            f"AllowUsers {self.user}", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PrintMotd no",
            f"Subsystem sftp {SFTP_SERVER}", "MaxStartups 50", "MaxSessions 50", "LogLevel INFO", ""]))
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.etc / "sshd_config")],
                                     stdout=open(self.log_file, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostsUnavailable(f"sshd exited ({self.proc.returncode}): {self.log_file.read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        raise HostsUnavailable(f"sshd on port {self.port} did not come up in {timeout:.0f} s")

    def host_pids(self) -> list[int]:
        """Processes that run as this host: the server and everything with this host's ``HOME``."""
        pids = []
        needle = f"HOME={self.home}".encode()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if needle in (p / "environ").read_bytes().split(b"\0"):
                    pids.append(int(p.name))
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        return sorted(set(pids))

    def kill(self) -> None:
        """The host dies: its sshd and every process of the host get SIGKILL (the user stays)."""
        for pid in self.host_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def stop(self) -> None:
        self.kill()
        subprocess.run(["userdel", "-f", self.user], capture_output=True)


def loopback_hosts(n: int, *, root: str | os.PathLike) -> contextlib.AbstractContextManager[list[LoopbackHost]]:
    """``n`` started :class:`LoopbackHost` s under ``root``; all stopped on exit (also on failure)."""

    @contextlib.contextmanager
    def manage() -> Iterator[list[LoopbackHost]]:
        if not Path(SSHD).exists():
            raise HostsUnavailable(f"{SSHD} not found (apt-get install openssh-server)")
        if os.geteuid() != 0:
            raise HostsUnavailable("loopback SSH hosts need root (useradd)")
        _remove_stale_users()
        tag = secrets.token_hex(2)
        hosts = [LoopbackHost(Path(root), i + 1, tag) for i in range(n)]
        try:
            for h in hosts:
                h.start()
            yield hosts
        finally:
            for h in hosts:
                h.stop()

    return manage()


def _remove_stale_users() -> None:
    """Users of hosts whose process was killed before it could clean up (their home is gone)."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/passwd").read_text().splitlines():
            name, *_, home, _shell = line.split(":")
            if name.startswith("cnas-") and not Path(home).exists():
                subprocess.run(["userdel", "-f", name], capture_output=True)


def remote_training_service(hosts: list[LoopbackHost], *, python_path: str | None = None, reuse_mode: bool = False,
                            manager_ip: str = "127.0.0.1", **machine_extra) -> dict:
    """NNI's ``trainingService`` section for ``hosts`` (``pythonPath``: the interpreter's folder)."""
    extra = dict(machine_extra)
    if python_path is not None:
        extra["pythonPath"] = python_path
    return {"platform": "remote", "reuseMode": reuse_mode, "nniManagerIp": manager_ip,
            "machineList": [h.machine(**extra) for h in hosts]}
