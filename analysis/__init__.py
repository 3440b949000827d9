"""Analysis of CompactNAS run folders: pandas tables and matplotlib figures.

Reads files only (DESIGN.md): imports nothing from ``experiments``, ``strategies`` or
``search_spaces``.  Entry points::

    python -m analysis <run-or-experiment-folder> [<folder> ...] [--out DIR]

    import analysis
    runs = analysis.load_runs("runs/proxyless")          # or an NNI experiment folder
    analysis.proxyless.table1(runs)                        # paper Table I
    analysis.proxyless.plot_trajectories(runs[0])          # paper Fig. 3 (a Figure)
    analysis.proxyless.convergence(runs[0])                # per-block convergence epoch
    analysis.report("runs/proxyless")                      # everything, written to files
    analysis.report_many(["runs/growth", "exp/trials"])    # several folders: one study + front.png
"""
from . import front, proxyless
from .io import AnalysisError, Run, find_run_dirs, is_run_dir, load_run, load_runs, read_metrics, read_trajectory
from .output import Output
from .plots import plot_curves
from .report import REPORTS, MethodReport, register, report, report_many, report_run, report_study, runs_table

__all__ = [
    "AnalysisError",
    "MethodReport",
    "Output",
    "REPORTS",
    "Run",
    "find_run_dirs",
    "front",
    "is_run_dir",
    "load_run",
    "load_runs",
    "plot_curves",
    "proxyless",
    "read_metrics",
    "read_trajectory",
    "register",
    "report",
    "report_many",
    "report_run",
    "report_study",
    "runs_table",
]
