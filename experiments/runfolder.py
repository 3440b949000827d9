"""Run folders: the contract between a run, the NNI web UI and ``analysis`` (see DESIGN.md).

Layout (under ``$NNI_OUTPUT_DIR`` inside an nnictl trial, else ``runs/<method>/<run-name>/``)::

    config.json      resolved config, seed, git commit, package versions
    metrics.csv      one row per epoch and phase
    trajectory.csv   tidy long table of architecture state (one-shot: alpha/prob per choice)
    arch.json        final architecture
    model.pt         state_dict of the exported compact model
    summary.json     final figures (= the final NNI metric)
    checkpoint.pt    resumable state (removed when the run completes)

Every file is written atomically (temp file in the same folder + ``os.replace``), so a killed
run never leaves a torn file.  Tables are kept in memory and rewritten whole; a checkpoint
records how many rows each table had, and resuming truncates the tables to those counts so a
resumed run has no gaps and no duplicated rows.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

from search_spaces.files import atomic_torch_save, atomic_write_bytes, atomic_write_text

# the atomic writers are re-exported from search_spaces.files
__all__ = ["RunFolder", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "default_run_dir",
           "measurements_aside"]


def measurements_aside(obj: Any) -> Any:
    """``obj`` (a summary, a config record, a metrics row) without what differs between any two runs
    of the same config: measured times (wall, CPU: keys with ``time``), latencies and the machine
    (``env``).  Two runs of one config on one machine are equal on what remains."""
    if isinstance(obj, dict):
        return {k: measurements_aside(v) for k, v in obj.items()
                if "time" not in k and "latency" not in k and k != "env"}
    if isinstance(obj, list):
        return [measurements_aside(v) for v in obj]
    return obj


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def default_run_dir(method: str, run_name: str | None = None, root: str | os.PathLike = "runs") -> Path:
    """``$NNI_OUTPUT_DIR`` inside an nnictl trial, else ``<root>/<method>/<run-name>``."""
    nni_dir = os.environ.get("NNI_OUTPUT_DIR")
    if nni_dir and os.environ.get("NNI_PLATFORM", "standalone") != "standalone":
        return Path(nni_dir)
    if run_name is None:
        import time

        run_name = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / method / run_name


class RunFolder:
    """One run's folder.  Tables are appended in memory and flushed atomically."""

    TABLES = ("metrics", "trajectory")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._tables: dict[str, list[dict[str, Any]]] = {}
        self._columns: dict[str, list[str]] = {}
        for name in self._existing_tables():
            self._load_table(name)

    # ---- files -------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.file(name)
        atomic_write_text(p, json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")
        return p

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def exists(self, name: str) -> bool:
        return self.file(name).exists()

    # ---- tables ------------------------------------------------------------------------
    def _existing_tables(self) -> Iterable[str]:
        for p in sorted(self.path.glob("*.csv")):
            yield p.stem

    def _load_table(self, name: str) -> None:
        p = self.file(f"{name}.csv")
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            self._columns[name] = list(reader.fieldnames or [])
            self._tables[name] = [dict(r) for r in reader]

    def append(self, table: str, rows: dict[str, Any] | list[dict[str, Any]], *, flush: bool = True) -> None:
        if isinstance(rows, dict):
            rows = [rows]
        cols = self._columns.setdefault(table, [])
        store = self._tables.setdefault(table, [])
        for r in rows:
            r = _jsonable(r)
            for k in r:
                if k not in cols:
                    cols.append(k)
            store.append(r)
        if flush:
            self.flush(table)

    def rows(self, table: str) -> list[dict[str, Any]]:
        return list(self._tables.get(table, []))

    def row_counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._tables.items()}

    def truncate(self, counts: dict[str, int]) -> None:
        """Cut every table back to ``counts`` rows (tables absent from ``counts`` are emptied)."""
        for name in list(self._tables):
            self._tables[name] = self._tables[name][: counts.get(name, 0)]
            self.flush(name)

    def flush(self, table: str | None = None) -> None:
        names = [table] if table else list(self._tables)
        for name in names:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=self._columns.get(name, []), extrasaction="raise", lineterminator="\n")
            w.writeheader()
            for r in self._tables.get(name, []):
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
            atomic_write_text(self.file(f"{name}.csv"), buf.getvalue())

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Flush tables, then save ``state`` plus the table row counts atomically."""
        self.flush()
        atomic_torch_save({"state": state, "row_counts": self.row_counts()}, self.file("checkpoint.pt"))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """Return the saved state (tables truncated to match it), or None (tables cleared)."""
        import torch

        p = self.file("checkpoint.pt")
        if not p.exists():
            if self._tables:
                self.truncate({})
            return None
        blob = torch.load(p, map_location="cpu", weights_only=False)
        self.truncate(blob["row_counts"])
        return blob["state"]

    def clear_checkpoint(self) -> None:
        try:
            self.file("checkpoint.pt").unlink()
        except FileNotFoundError:
            pass


def environment_info() -> dict[str, Any]:
    """Git commit and package versions for ``config.json``."""
    import importlib.metadata as md
    import platform

    info: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "nni", "pytorch-lightning", "numpy", "scikit-learn", "pandas"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    try:
        here = Path(__file__).resolve().parent
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info
