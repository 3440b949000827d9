"""Benchmark: the same trial standalone, under nnictl locally and on NNI's remote training service, in one run.

Run ``python -m bench.remote_overhead`` from the repository root as root (it starts an SSH host on
loopback, :mod:`experiments.loopback_hosts`; ``--help`` for the flags).  One ProxylessNAS trial of
about a minute (digits, scope ``s``, width 1/16, ``--epochs`` search + retrain epochs, one thread)
runs, per arm:

* ``standalone`` - the trial command itself (``python -m experiments.trial ...``), no NNI;
* ``local``   - a one-trial nnictl experiment, ``platform: local``;
* ``remote``  - ``platform: remote``, ``reuseMode: false`` (NNI 3's trial keeper), on one loopback
  host with this interpreter as ``pythonPath``: the upload, SSH, the trial keeper, the command
  channel back to the manager and our REST parameter look-up are all in the path;
* ``remote_reuse`` - the same in ``reuseMode: true`` (NNI's reusable environments).

The arms run one after the other, ``--repeats`` times in rotating order (load from other processes
hits them alike); reported per arm, as medians:

* ``trial_s``   - the trial's wall-clock as NNI records it (start to end of the trial job);
* ``startup_s`` - from the experiment's creation to the trial's start (NNI manager, training
  service and, for remote, the host's environment set-up: SSH, ``pip install nni --upgrade``, the
  trial keeper, the code upload);
* ``compute_s`` - the trial's own search + retrain time (``summary.json``), so the rest of
  ``trial_s`` is process start-up (imports, data) and NNI's channel;
* ``total_s``   - creation to done.

(``standalone``: ``trial_s`` = ``total_s`` = the command's wall-clock, no start-up.)  Printed as
ratios with their targets: local / standalone ``trial_s`` <= 1.10 (what nnictl adds to a trial:
its command channel, our REST parameter look-up, metric reports) and remote / local ``trial_s``
<= 1.15 for a trial of about 60 s; JSON + PNG into ``bench/out/remote_overhead.{json,png}``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "remote_overhead.json"
TARGET = 1.15            # remote / local
NNICTL_TARGET = 1.10     # local under nnictl / standalone
ARMS = ("standalone", "local", "remote", "remote_reuse")


def _command(epochs: int) -> str:
    return (f"python -m experiments.trial proxyless --dataset digits --width 0.0625 --search_epochs {epochs} "
            f"--retrain_epochs {epochs} --threads 1 --device cpu --progress false")


def _standalone(epochs: int, work: Path) -> dict:
    import shlex
    import subprocess

    argv = [sys.executable if a == "python" else a for a in shlex.split(_command(epochs))]
    t0 = time.time()
    subprocess.run([*argv, "--run-dir", str(work / "run")], cwd=REPO, check=True, capture_output=True)
    wall = time.time() - t0
    summary = json.loads((work / "run" / "summary.json").read_text())
    return {"arm": "standalone", "trial_s": wall, "startup_s": 0.0, "total_s": wall,
            "compute_s": summary["search_time_s"] + summary["retrain_time_s"], "top1": summary["top1"]}


def _config(epochs: int, training_service: dict) -> dict:
    return {
        "experimentName": "bench-remote-overhead",
        "searchSpace": {"scope": {"_type": "choice", "_value": ["s"]}},
        "trialCommand": _command(epochs),
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 1,
        "maxTrialNumber": 1,
        "tuner": {"name": "GridSearch"},
        "trainingService": training_service,
    }


def _one(arm: str, epochs: int, host, work: Path) -> dict:
    from experiments.launch import run_experiment
    from experiments.loopback_hosts import remote_training_service

    if arm == "standalone":
        return _standalone(epochs, work)
    if arm == "local":
        ts = {"platform": "local", "useActiveGpu": False}
    else:
        ts = remote_training_service([host], python_path=str(Path(sys.executable).parent),
                                     reuse_mode=arm == "remote_reuse")
    t0 = time.time()
    with run_experiment(_config(epochs, ts), tmp_path=work, timeout=1200) as exp:
        done = time.time()
        if not exp.succeeded(1):
            raise RuntimeError(f"{arm}: the trial did not succeed\n{exp.log_tail()}")
        job = exp.trial_jobs[0]
        summary = json.loads((exp.trial_output_dir(job["trialJobId"]) / "summary.json").read_text())
    start, end = job["startTime"] / 1000, job["endTime"] / 1000
    return {"arm": arm, "trial_s": end - start, "startup_s": start - t0, "total_s": done - t0,
            "compute_s": summary["search_time_s"] + summary["retrain_time_s"], "top1": summary["top1"]}


def run_bench(*, epochs: int = 14, repeats: int = 2, arms=ARMS, out: Path = DEFAULT_OUT) -> dict:
    from experiments.loopback_hosts import loopback_hosts

    rows = []
    with TemporaryDirectory(prefix="cnas-remote-bench-") as tmp, loopback_hosts(1, root=Path(tmp) / "hosts") as hosts:
        for r in range(repeats):
            order = list(arms[r % len(arms):]) + list(arms[:r % len(arms)])
            for arm in order:
                row = _one(arm, epochs, hosts[0], Path(tmp) / f"{arm}-{r}")
                row["repeat"] = r
                rows.append(row)
                print(f"  {arm:13s} repeat {r}: trial {row['trial_s']:6.1f} s, start-up {row['startup_s']:5.1f} s, "
                      f"compute {row['compute_s']:5.1f} s", flush=True)
    med = {a: {k: statistics.median(x[k] for x in rows if x["arm"] == a)
               for k in ("trial_s", "startup_s", "compute_s", "total_s")} for a in arms}
    result = {"epochs": epochs, "repeats": repeats, "rows": rows, "median": med, "target_trial_ratio": TARGET}
    if "local" in med and "standalone" in med:
        result["local_vs_standalone_trial_ratio"] = med["local"]["trial_s"] / med["standalone"]["trial_s"]
        result["local_vs_standalone_target_met"] = bool(result["local_vs_standalone_trial_ratio"] <= NNICTL_TARGET)
    if "local" in med:
        for a in arms:
            if a.startswith("remote"):
                result[f"{a}_trial_ratio"] = med[a]["trial_s"] / med["local"]["trial_s"]
                result[f"{a}_total_ratio"] = med[a]["total_s"] / med["local"]["total_s"]
                result[f"{a}_target_met"] = bool(result[f"{a}_trial_ratio"] <= TARGET)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out.with_suffix(".png"))
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = result["median"]
    arms = list(med)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    left = [0.0] * len(arms)
    for key, colour, label in (("startup_s", "#bbbbbb", "start-up (creation to trial start)"),
                               ("compute_s", "#1f77b4", "trial compute (search + retrain)")):
        vals = [med[a][key] for a in arms]
        ax.barh(arms, vals, left=left, color=colour, label=label)
        left = [l + v for l, v in zip(left, vals)]
    rest = [med[a]["trial_s"] - med[a]["compute_s"] for a in arms]
    ax.barh(arms, rest, left=left, color="#ff7f0e", label="trial process start-up, NNI channel")
    for i, a in enumerate(arms):
        ratio = result.get(f"{a}_trial_ratio")
        text = f"trial {ratio:.2f}x local" if ratio is not None else ""
        if a == "local" and "local_vs_standalone_trial_ratio" in result:
            text = f"trial {result['local_vs_standalone_trial_ratio']:.2f}x standalone"
        ax.text(left[i] + rest[i] + 1, i, text, va="center", fontsize=8)
    ax.set_xlabel("seconds (median over repeats)")
    ax.set_title(f"one ProxylessNAS trial: nnictl <= {NNICTL_TARGET}x standalone, remote <= {TARGET}x local",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax.set_xlim(0, max(left[i] + rest[i] for i in range(len(arms))) * 1.3)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.remote_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=14, help="search and retrain epochs of the trial (14: about 60 s)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad or args.epochs < 1 or args.repeats < 1:
        print(f"error: unknown arm {bad[0]!r}" if bad else "error: --epochs and --repeats must be >= 1", file=sys.stderr)
        return 2
    res = run_bench(epochs=args.epochs, repeats=args.repeats, arms=arms, out=args.out)
    print(f"{'arm':13s} {'trial s':>8s} {'start-up s':>10s} {'compute s':>9s} {'total s':>8s}")
    for a, m in res["median"].items():
        print(f"{a:13s} {m['trial_s']:8.1f} {m['startup_s']:10.1f} {m['compute_s']:9.1f} {m['total_s']:8.1f}")
    if "local_vs_standalone_trial_ratio" in res:
        r = res["local_vs_standalone_trial_ratio"]
        print(f"local (nnictl) / standalone: trial {r:.3f}x (target <= {NNICTL_TARGET}: "
              f"{'met' if res['local_vs_standalone_target_met'] else 'missed'})")
    for a in arms:
        if f"{a}_trial_ratio" in res:
            print(f"{a} / local: trial {res[f'{a}_trial_ratio']:.3f}x (target <= {TARGET}: "
                  f"{'met' if res[f'{a}_target_met'] else 'missed'}), total {res[f'{a}_total_ratio']:.3f}x")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
