"""Reports: a small registry ``method name -> report functions`` and the dispatcher.

Every run gets the generic report (learning curves, a summary row); a method registered
here adds its own.  Each method registers two optional functions:

* ``run(run, out_dir) -> Output`` for one run (files go in ``out_dir``);
* ``study(runs, out_dir) -> Output`` for a folder of runs.  It receives *all* runs of the
  study (any method) and picks what it needs, so e.g. the proxyless Table I can include a
  ``baseline`` run.

Registering a method twice is an error (no silent overrides).  Methods that are not
registered get the generic report only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from . import epnas, front, growth, proxyless, scann, survey
from .io import AnalysisError, Run, is_run_dir, load_run, load_runs
from .output import Output, format_table, save_csv, save_figure
from .plots import plot_curves

__all__ = ["MethodReport", "REPORTS", "register", "report", "report_many", "report_run", "report_study",
           "runs_table"]

RunReport = Callable[[Run, Path], Output]
StudyReport = Callable[[Sequence[Run], Path], Output]


@dataclass(frozen=True)
class MethodReport:
    run: RunReport | None = None
    study: StudyReport | None = None


REPORTS: dict[str, MethodReport] = {}


def register(method: str, *, run: RunReport | None = None, study: StudyReport | None = None) -> None:
    if method in REPORTS:
        raise ValueError(f"a report for method {method!r} is already registered")
    if run is None and study is None:
        raise ValueError(f"register({method!r}) needs run= and/or study=")
    REPORTS[method] = MethodReport(run=run, study=study)


register(proxyless.METHOD, run=proxyless.report_run, study=proxyless.report_study)


def _file_reports(method: str, run_fn=None, study_fn=None) -> None:
    """Register a method whose report functions take folders and return the files written
    (``fn(run_dir, out_dir)`` / ``fn(run_dirs, out_dir)``); a study sees only its own runs."""
    def run_report(run: Run, out: Path) -> Output:
        return Output(files=list(run_fn(run.path, out)))

    def study_report(runs: Sequence[Run], out: Path) -> Output:
        mine = [r.path for r in runs if r.method == method]
        return Output(files=list(study_fn(mine, out))) if mine else Output()

    register(method, run=run_report if run_fn else None, study=study_report if study_fn else None)


_file_reports("growth", growth.report_run, growth.report_study)


def _epnas_study(runs: Sequence[Run], out: Path) -> Output:
    mine = [r.path for r in runs if r.method == epnas.METHOD]
    return epnas.study_output(mine, out) if mine else Output()   # + the final-training results table


register(epnas.METHOD, study=_epnas_study)
_file_reports("scann", None, scann.report)


def _survey_study(runs: Sequence[Run], out: Path) -> Output:
    return survey.report_study([r.path for r in runs if r.method == survey.METHOD], out)


register(survey.METHOD, study=_survey_study)


# ---- generic ------------------------------------------------------------------------------
SUMMARY_KEYS = ("top1", "params", "flops", "search_time_s", "retrain_time_s", "search_epochs", "exit_epoch")


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: name, method, dataset, scope, seed, the summary's numbers (every
    numeric key of ``summary.json``; top-1 as a fraction) and the path."""
    rows = []
    for run in runs:
        row = {"run": run.name, "method": run.method, "dataset": run.dataset, "scope": run.scope,
               "seed": run.seed, "top1": run.top1, "params": run.params, "flops": run.flops}
        for k, v in run.summary.items():
            if k not in row and isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = v
        row["path"] = str(run.path)
        rows.append(row)
    df = pd.DataFrame(rows)
    front = ["run", "method", "dataset", "scope", "seed"] + [k for k in SUMMARY_KEYS if k in df.columns]
    return df[front + [c for c in df.columns if c not in front]]


def _generic_run(run: Run, out: Path) -> Output:
    res = Output()
    fig = plot_curves(run)
    if fig is not None:
        res.files.append(save_figure(fig, out / "curves.png"))
    return res


def _short_runs(df: pd.DataFrame) -> str:
    shown = df[[c for c in ("run", "method", "dataset", "scope", "seed", "top1", "params", "flops", "search_time_s")
                if c in df.columns]].copy()
    if "top1" in shown:
        shown["top1"] = 100 * shown["top1"]
    for c in ("params", "flops"):
        if c in shown:
            shown[c] = shown[c] / 1e6
    shown = shown.rename(columns={"top1": "top1_%", "params": "params_M", "flops": "flops_M"})
    return format_table(shown, {"top1_%": ".2f", "params_M": ".2f", "flops_M": ".1f", "search_time_s": ".1f"})


# ---- dispatch -----------------------------------------------------------------------------
def report_run(run: Run, out: str | os.PathLike) -> Output:
    """Generic + method-specific files for one run, written into ``out``."""
    out = Path(out)
    res = _generic_run(run, out)
    spec = REPORTS.get(run.method)
    if spec is not None and spec.run is not None:
        res.extend(spec.run(run, out))
    return res


def _front(runs: Sequence[Run], out: Path) -> Output:
    """``front.csv`` + ``front.png``: accuracy against FLOPs, params and onnxruntime latency over
    every method's runs (:mod:`analysis.front`); nothing when no run measured an accuracy."""
    res = Output()
    t = front.front_table(runs)
    if t.empty:
        return res
    res.files += [save_csv(t, out / "front.csv"), save_figure(front.plot_front(t), out / "front.png")]
    res.tables["front"] = t
    on = t[t["pareto_flops"] | t["pareto_params"] | t["pareto_latency"]]
    shown = on[["dataset", "label", "run", "accuracy", "flops", "params", "ort_latency_ms"]].assign(
        accuracy=100 * on["accuracy"])
    res.text.append("Pareto points (accuracy % vs FLOPs / params / onnxruntime latency):\n"
                    + format_table(shown, {"accuracy": ".2f", "flops": ".4g", "params": ".0f", "ort_latency_ms": ".3f"}))
    return res


def report_study(runs: Sequence[Run], out: str | os.PathLike) -> Output:
    """Study files in ``out`` (``runs.csv``, each present method's study report, the front across
    methods) and each run's files in ``out/runs/<run name>/``."""
    out = Path(out)
    res = Output()
    table = runs_table(runs)
    res.files.append(save_csv(table, out / "runs.csv"))
    res.tables["runs"] = table
    res.text.append(f"{len(runs)} run(s):\n" + _short_runs(table))
    for method in sorted({r.method for r in runs}):
        spec = REPORTS.get(method)
        if spec is not None and spec.study is not None:
            res.extend(spec.study(runs, out))
    res.extend(_front(runs, out))
    for run in runs:
        sub = report_run(run, out / "runs" / run.name)
        res.files.extend(sub.files)  # per-run text would drown the study tables
        res.tables.update(sub.tables)
    return res


def report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Output:
    """Analyse a run folder, an NNI experiment folder or any folder of run folders; write
    into ``out`` (default ``<folder>/analysis``).  Raises :class:`AnalysisError` for a bad
    path or a folder without runs."""
    folder = Path(folder)
    if not folder.exists():
        raise AnalysisError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise AnalysisError(f"not a folder: {folder}")
    out = Path(out) if out is not None else folder / "analysis"
    if is_run_dir(folder):
        run = load_run(folder)
        res = Output(text=[_short_runs(runs_table([run]))])
        return res.extend(report_run(run, out))
    runs = load_runs(folder)
    if not runs:
        raise AnalysisError(f"no run folders under {folder} (a run folder has a config.json naming its method)")
    return report_study(runs, out)


def report_many(folders: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Output:
    """Analyse several folders (any mix of run folders, NNI experiment folders and folders of
    runs) as one study: every method's study report and the front across methods
    (``front.csv``, ``front.png``) over all their runs.  ``out`` defaults to the first folder's
    ``analysis/`` (``./analysis`` when the first is a single run folder).  One folder: as
    :func:`report`.  Run names clashing across folders get the folder's name in front."""
    if len(folders) == 1:
        return report(folders[0], out)
    runs: list[Run] = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise AnalysisError(f"no such folder: {folder}")
        if not folder.is_dir():
            raise AnalysisError(f"not a folder: {folder}")
        found = [load_run(folder)] if is_run_dir(folder) else load_runs(folder)
        if not found:
            raise AnalysisError(f"no run folders under {folder} (a run folder has a config.json naming its method)")
        runs += found
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}_{r.name}"
    first = Path(folders[0])
    default = Path("analysis") if is_run_dir(first) else first / "analysis"
    return report_study(runs, Path(out) if out is not None else default)
