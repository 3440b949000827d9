"""``python -m analysis <folder> [<folder> ...] [--out DIR]``: tables and plots for a run or a study.

``<folder>`` is a run folder, an NNI experiment folder or any folder with run folders below
it; several folders (any mix) are one study, with the front across methods (``front.csv``,
``front.png``) over all their runs, written to ``--out`` (default: the first folder's
``analysis/``, or ``./analysis`` when the first is a run folder).  For an experiment on NNI's remote training service the run folders are first brought home
from its SSH hosts (:mod:`analysis.remote`; a host that cannot be reached is named in one line).  Writes PNG + CSV files into ``<folder>/analysis/`` (or ``--out``), prints the tables
and the paths written.  A bad path or a folder without runs: one ``error:`` line, exit 2.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", metavar="folder", help="run folder, NNI experiment folder or folder of runs")
    p.add_argument("--out", default=None,
                   help="output folder (default: <first folder>/analysis; ./analysis when it is a run folder)")
    args = p.parse_args(argv)
    for folder in map(Path, args.folders):
        if not folder.exists():  # answer bad paths before the slow imports
            return _error(f"no such folder: {folder}")
        if not folder.is_dir():
            return _error(f"not a folder: {folder}")

    from .remote import fetch_run_folders, is_remote_experiment

    for folder in map(Path, args.folders):
        if is_remote_experiment(folder):   # the run folders are on the SSH hosts: bring them home first
            fetched = fetch_run_folders(folder)
            for line in fetched.warnings:
                print(f"warning: {line}", file=sys.stderr)
            print(f"fetched {len(fetched.trials)} run folder(s) from the experiment's hosts")

    import matplotlib

    matplotlib.use("Agg")  # headless; the package itself never touches pyplot
    from .io import AnalysisError
    from .report import report_many

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            res = report_many(args.folders, args.out)
    except AnalysisError as e:
        return _error(str(e))
    for block in res.text:
        print(block)
        print()
    print(f"wrote {len(res.files)} file(s):")
    for f in res.files:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
