"""Find run folders and load their files into pandas (DESIGN.md, "Run folder contract").

``analysis`` only reads files: it imports nothing from ``experiments``, ``strategies`` or
``search_spaces``.  A *run folder* is a directory holding ``config.json`` (or, failing that,
``summary.json``) whose JSON object names the ``method``.  Everything else in it is optional:
a crashed trial with only ``config.json`` still loads, with empty tables.

Folders that are understood:

* a single run folder;
* an NNI experiment folder (``<exp>/trials/<id>/`` or NNI 3's
  ``<exp>/environments/<env>/trials/<id>/``; each trial's ``$NNI_OUTPUT_DIR`` is a run folder;
  ``db/`` and ``log/`` are skipped);
* any plain folder with run folders somewhere below it (e.g. ``runs/proxyless/``).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "AnalysisError",
    "Run",
    "find_run_dirs",
    "is_run_dir",
    "load_run",
    "load_runs",
    "read_json",
    "read_metrics",
    "read_trajectory",
]

#: Folder names never searched for runs: our own outputs and NNI's bookkeeping.
SKIP_DIRS = frozenset({"analysis", "db", "log", "__pycache__", "node_modules", ".ipynb_checkpoints"})
#: Folder names that say nothing about the run; the run is then named after its parent.
GENERIC_NAMES = frozenset({"output", "nnioutput", "outputs"})

METRIC_COLUMNS = ("phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s",
                  "test_acc", "params", "flops")
TRAJECTORY_COLUMNS = ("epoch", "step", "label", "choice", "alpha", "prob")


class AnalysisError(Exception):
    """A folder or file that cannot be analysed; the CLI prints it as one ``error:`` line."""


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is absent."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise AnalysisError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _method_of(path: Path) -> str | None:
    for name in ("config.json", "summary.json"):
        p = path / name
        if p.is_file():
            try:
                obj = read_json(p)
            except AnalysisError as e:
                warnings.warn(f"skipping {path}: {e}", stacklevel=3)
                return None
            method = obj.get("method")
            if isinstance(method, str) and method:
                return method
    return None


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` has a ``config.json`` / ``summary.json`` naming a ``method``."""
    path = Path(path)
    return path.is_dir() and _method_of(path) is not None


def find_run_dirs(folder: str | os.PathLike) -> list[Path]:
    """Run folders at or below ``folder``, sorted by path.  Runs do not nest: the walk stops
    at the first run folder on each branch."""
    folder = Path(folder)
    if is_run_dir(folder):
        return [folder]
    found: list[Path] = []
    for root, dirs, _files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        keep = []
        for d in dirs:
            p = Path(root) / d
            if is_run_dir(p):
                found.append(p)
            else:
                keep.append(d)
        dirs[:] = keep
    return sorted(found)


def _numeric(df: pd.DataFrame, skip: tuple[str, ...]) -> pd.DataFrame:
    for c in df.columns:
        if c not in skip:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """``metrics.csv`` with numeric columns (blank cells -> NaN); empty frame when absent."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    try:
        df = pd.read_csv(path, dtype={"phase": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    except (pd.errors.ParserError, ValueError) as e:
        raise AnalysisError(f"{path}: unreadable CSV ({e})") from None
    df = _numeric(df, ("phase",))
    if "phase" not in df.columns:
        df["phase"] = "search"
    df["phase"] = df["phase"].fillna("").str.strip().str.lower()
    return df


def _softmax_per_record(df: pd.DataFrame) -> pd.Series:
    a = df["alpha"].astype(float)
    keys = [df["step"], df["label"]]
    shifted = np.exp(a - a.groupby(keys).transform("max"))
    return shifted / shifted.groupby(keys).transform("sum")


def read_trajectory(path: str | os.PathLike) -> pd.DataFrame | None:
    """``trajectory.csv`` sorted by record time (``step``, then ``epoch``); None when absent.

    ``epoch`` is a float (intra-epoch records may be fractional).  Where ``step`` is missing it
    is taken from ``epoch``; where ``prob`` is missing it is recomputed as softmax(alpha) over
    the block's candidates at that record.  Exact duplicate records keep the last one.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, dtype={"label": str, "choice": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(TRAJECTORY_COLUMNS))
    except (pd.errors.ParserError, ValueError) as e:
        raise AnalysisError(f"{path}: unreadable CSV ({e})") from None
    missing = [c for c in ("epoch", "label", "choice") if c not in df.columns]
    if missing or ("alpha" not in df.columns and "prob" not in df.columns):
        raise AnalysisError(f"{path}: missing columns {missing or ['alpha/prob']}")
    df = _numeric(df, ("label", "choice"))
    if "step" not in df.columns:
        df["step"] = df["epoch"]
    df["step"] = df["step"].fillna(df["epoch"])
    if "prob" not in df.columns or df["prob"].isna().any():
        if "alpha" not in df.columns or df["alpha"].isna().any():
            raise AnalysisError(f"{path}: rows without prob and without alpha")
        df["prob"] = _softmax_per_record(df)
    if "alpha" not in df.columns:
        df["alpha"] = np.log(df["prob"].clip(lower=1e-300))
    df = df.drop_duplicates(subset=["step", "epoch", "label", "choice"], keep="last")
    return df.sort_values(["step", "epoch"], kind="stable").reset_index(drop=True)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(eq=False)
class Run:
    """One run folder.  Files are read on first access (``metrics``, ``trajectory``)."""

    path: Path
    name: str
    config: dict[str, Any] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    arch: dict[str, Any] = field(repr=False)

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.summary.get("method"))

    @property
    def settings(self) -> dict[str, Any]:
        """The method's resolved settings (``config.json``'s ``config``)."""
        s = self.config.get("config")
        return s if isinstance(s, dict) else {}

    @property
    def scope(self) -> str | None:
        s = self.summary.get("scope", self.settings.get("scope"))
        return None if s is None else str(s)

    @property
    def dataset(self) -> str | None:
        d = self.settings.get("dataset", self.summary.get("dataset"))
        return None if d is None else str(d)

    @property
    def seed(self) -> int | None:
        s = self.config.get("seed", self.settings.get("seed"))
        return None if s is None else int(s)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return read_metrics(self.path / "metrics.csv")

    @cached_property
    def trajectory(self) -> pd.DataFrame | None:
        return read_trajectory(self.path / "trajectory.csv")

    def phase(self, phase: str) -> pd.DataFrame:
        m = self.metrics
        return m[m["phase"] == phase].sort_values("epoch", kind="stable")

    def _last(self, phase: str, column: str) -> float | None:
        rows = self.phase(phase)
        if column not in rows.columns:
            return None
        vals = rows[column].dropna()
        return _finite(vals.iloc[-1]) if len(vals) else None

    # Final figures: summary.json first, the last retrain row of metrics.csv as a fallback.
    @property
    def top1(self) -> float | None:
        """Final top-1 accuracy as a fraction."""
        v = _finite(self.summary.get("top1"))
        return v if v is not None else self._last("retrain", "test_acc")

    @property
    def params(self) -> float | None:
        v = _finite(self.summary.get("params"))
        return v if v is not None else self._last("retrain", "params")

    @property
    def flops(self) -> float | None:
        v = _finite(self.summary.get("flops"))
        return v if v is not None else self._last("retrain", "flops")

    @property
    def search_time_s(self) -> float | None:
        return _finite(self.summary.get("search_time_s"))

    @property
    def exit_epoch(self) -> float | None:
        """Epoch at which the search-exit criterion fired; None if it never did (the producer
        writes -1 then, since NNI metrics need the same numeric keys in every trial)."""
        v = _finite(self.summary.get("exit_epoch"))
        return None if v is None or v < 0 else v

    def choices(self) -> dict[str, str]:
        """Final architecture: ``arch.json`` (metadata keys dropped), else summary's ``arch``."""
        arch = self.arch or self.summary.get("arch") or {}
        if isinstance(arch.get("arch"), dict):  # arch.json = {"scope", "arch": {...}, ...}
            arch = arch["arch"]
        return {k: v for k, v in arch.items() if isinstance(v, str) and not k.startswith("_")}


def _run_name(path: Path) -> str:
    path = path.resolve()
    return path.parent.name if path.name.lower() in GENERIC_NAMES else path.name


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Load one run folder; raises :class:`AnalysisError` when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"not a folder: {path}")
    if not is_run_dir(path):
        raise AnalysisError(f"not a run folder (no config.json/summary.json with a method): {path}")
    return Run(
        path=path,
        name=name or _run_name(path),
        config=read_json(path / "config.json"),
        summary=read_json(path / "summary.json"),
        arch=read_json(path / "arch.json"),
    )


def load_runs(folder: str | os.PathLike) -> list[Run]:
    """All runs at or below ``folder`` with unique names (short names, the relative path
    joined by ``_`` where two runs would share one)."""
    folder = Path(folder)
    if not folder.exists():
        raise AnalysisError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise AnalysisError(f"not a folder: {folder}")
    dirs = find_run_dirs(folder)
    names = [_run_name(d) for d in dirs]
    dup = {n for n in names if names.count(n) > 1}
    runs = []
    for d, n in zip(dirs, names):
        if n in dup:
            rel = d.relative_to(folder).parts
            n = "_".join(p for p in rel if p not in ("trials", "environments")) or d.name
        runs.append(load_run(d, name=n))
    return runs
