"""Behaviour check for refactors: each method's fixed-seed standalone run at two commits, side by side.

    python -m bench.same_results BEFORE [AFTER]      # AFTER: the working tree

Each commit is checked out into a temporary ``git worktree`` and every run of :data:`RUNS` (one
per method and mode, tiny settings on embedded data, one thread) is made there with this
interpreter (``python -m experiments.trial ...`` with the worktree as the working directory, so
the worktree's code is what runs).  The two ``summary.json`` files of a run are compared with the
measured times left out (wall, CPU, latency: they differ between any two runs) and, by default,
only over the keys both have (``--strict``: the key sets must be equal too; a refactor that adds
figures is still the same behaviour).  Prints one line per run and exits 1 if any differs.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.runfolder import measurements_aside

REPO = Path(__file__).resolve().parents[1]
_IMG = "--dataset digits --limit 400 --batch_size 32 --threads 1 --device cpu --progress false --seed 3"
#: name -> trial arguments (valid at every commit since the trial entry point exists), trained just
#: enough that the networks are not at chance (which fails a trial since the degeneracy check).
RUNS = {
    "proxyless": f"proxyless {_IMG} --width 0.125 --scope s --search_epochs 2 --retrain_epochs 4 --record_every 1",
    "growth": f"growth {_IMG} --family basic3resnet --width 0.25 --stage_blocks [1,1,1] --epochs 8 --budget 0.5 "
              "--budget_every 2 --final_beta 10 --finetune_epochs 2",
    "epnas": f"epnas {_IMG} --batch_ref 32 --lr 0.05 --epochs 4 --stop_epoch 3 --max_layers 4 --share false",
    "scann": "scann --dataset breast_cancer --baseline_hidden [16] --baseline_epochs 3 --iterations 2 "
             "--epochs_per_op 2 --scheme B --progress false --device cpu --seed 3",
    "scann-image": "scann --dataset mnist5k --limit 400 --conv_epochs 3 --iterations 1 --epochs_per_op 1 --scheme C "
                   "--batch_size 64 --threads 1 --device cpu --progress false --seed 3",
    **{f"survey-{v}": f"survey {_IMG} --variant {v} --image_size 8 --family resnet20 --stage_blocks [1,1,1] "
                      "--width 0.25 --epochs 3 --finetune_epochs 2"
       for v in ("baseline", "group_lasso", "morphnet", "variational_dropout")},
}


def _run(tree: Path, args: str, out: Path) -> dict | str:
    cmd = [sys.executable, "-m", "experiments.trial", *args.split(), "--run-dir", str(out)]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        return f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"
    return measurements_aside(json.loads((out / "summary.json").read_text()))


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.same_results", description=__doc__.splitlines()[0])
    p.add_argument("before", help="a commit")
    p.add_argument("after", nargs="?", default=None, help="a commit (default: the working tree)")
    p.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--strict", action="store_true", help="the summaries must have the same keys too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="same-results-") as tmp:
        trees = {}
        for side, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                trees[side] = REPO
                continue
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(trees[side]), rev],
                           check=True, capture_output=True)
        try:
            differ = 0
            for name in args.runs:
                got = {side: _run(tree, RUNS[name], Path(tmp) / "runs" / side / name) for side, tree in trees.items()}
                a, b = got["before"], got["after"]
                if isinstance(a, str) or isinstance(b, str):
                    verdict, detail = "FAILED", f"before: {a if isinstance(a, str) else 'ok'}; after: {b if isinstance(b, str) else 'ok'}"
                else:
                    keys = sorted(set(a) & set(b))
                    diff = [k for k in keys if not _same(a[k], b[k])]
                    extra = sorted(set(a) ^ set(b))
                    same = not diff and not (args.strict and extra)
                    verdict = "same" if same else "DIFFERS"
                    detail = (f"{len(keys)} keys compared" + (f"; differ: {', '.join(diff[:8])}" if diff else "")
                              + (f"; only on one side: {', '.join(extra[:8])}" if extra else ""))
                differ += verdict != "same"
                print(f"{name:28s} {verdict:8s} {detail}", flush=True)
        finally:
            for side, tree in trees.items():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)
    print(f"{len(args.runs) - differ} of {len(args.runs)} runs give the same summary.json (times aside)")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
