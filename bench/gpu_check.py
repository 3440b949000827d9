"""The GPU check in one command: ``make gpu-check`` (= ``python -m bench.gpu_check``).

On a machine with CUDA it runs, each step with its own time limit so the whole fits in about
8 minutes on one GPU, writing every log into ``$OUT`` (the device tool's output folder; else
``--out``, default ``bench/out/gpu_check``) as it goes, so a step cut by its limit still leaves
its log up to that point:

1. ``pytest -v tests/test_gpu.py`` (the CUDA tests) -> ``gpu_tests.log``;
2. the fast suite, ``pytest -v -m "not slow and not nnictl" -n <workers>`` (pytest-xdist) with ``device=auto`` everywhere it is
   not pinned (the default picks CUDA) -> ``fast_suite.log``; ``-v`` names every test, so a failure
   is named even if the step hits its limit;
3. ``python -m bench.proxyless_memory --device cuda`` and ``python -m bench.growth_cost --device
   cuda`` (their JSON/PNG into the same folder) -> ``proxyless_memory.log``, ``growth_cost.log``; the
   benchmarks time CUDA with ``torch.cuda.synchronize`` around each measured step and report
   ``torch.cuda.max_memory_allocated``;

and ends with ``gpu_check.json`` (per step: command, exit status, seconds, whether its limit cut it,
the failing tests named in its log).  Exit status 0 when every step passed.

Without CUDA it says so and runs its CPU self-test instead (exit 0): the plan is built and written
(``gpu_check.json`` with ``"cuda": false``), every step's command is checked to exist and parse
(``--help`` of the benchmarks accepts ``--device``), and the cost model's latency timer is checked
to synchronize around CUDA forwards (:func:`search_spaces.cost.measure_latency`).  ``make test``
runs this self-test (``tests/test_gpu_check.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: int
    log: str
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    failed_tests: list[str] = field(default_factory=list)


def plan(out: Path, budget_s: int = 480) -> list[Step]:
    """The steps, with limits that add up to ``budget_s`` (about 8 minutes by default)."""
    py = sys.executable
    share = {"gpu_tests": 0.15, "fast_suite": 0.55, "proxyless_memory": 0.15, "growth_cost": 0.15}
    lim = {k: max(30, int(v * budget_s)) for k, v in share.items()}
    return [
        Step("gpu_tests", [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_gpu.py"],
             lim["gpu_tests"], "gpu_tests.log"),
        Step("fast_suite", [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "not slow and not nnictl",
                            "--timeout", "120", *_workers()], lim["fast_suite"], "fast_suite.log"),
        Step("proxyless_memory", [py, "-m", "bench.proxyless_memory", "--device", "cuda", "--out",
                                  str(out / "proxyless_memory.json")], lim["proxyless_memory"], "proxyless_memory.log"),
        Step("growth_cost", [py, "-m", "bench.growth_cost", "--device", "cuda", "--out", str(out / "growth_cost.json")],
             lim["growth_cost"], "growth_cost.log"),
    ]


def _workers() -> list[str]:
    """pytest-xdist workers: the suite is CPU-bound Python around small kernels, so a GPU machine's
    cores run it in parallel (at most 8: every worker holds a CUDA context)."""
    n = min(8, max(1, (os.cpu_count() or 2) - 2))
    return ["-n", str(n)] if n > 1 else []


_FAILED = re.compile(r"^(?:FAILED |ERROR )?(\S+::\S+)(?: \S+)* (?:FAILED|ERROR)", re.M)


def failed_tests(log: str) -> list[str]:
    """Test ids that failed or errored in a ``pytest -v`` log."""
    names = set(_FAILED.findall(log))
    names |= set(re.findall(r"^(?:FAILED|ERROR) (\S+::\S+)", log, re.M))
    return sorted(names)


def run_step(step: Step, out: Path) -> Step:
    t0 = time.monotonic()
    with open(out / step.log, "wb") as log:   # written as it runs: survives a time-out of the caller too
        log.write(("$ " + " ".join(step.argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(step.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            step.returncode = proc.wait(timeout=step.limit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            step.timed_out, step.returncode = True, None
    step.seconds = round(time.monotonic() - t0, 1)
    step.failed_tests = failed_tests((out / step.log).read_text(errors="replace"))
    return step


def self_test(out: Path) -> list[str]:
    """What runs without a GPU: the plan, the commands, the latency timer's synchronisation."""
    problems = []
    steps = plan(out)
    for s in steps:
        if s.argv[1:3] == ["-m", "pytest"]:
            target = [a for a in s.argv if a.startswith("tests/")]
            if any(not (REPO / t).exists() for t in target):
                problems.append(f"{s.name}: missing {target}")
            continue
        help_out = subprocess.run([*s.argv[:3], "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
        if help_out.returncode != 0 or "--device" not in help_out.stdout:
            problems.append(f"{s.name}: `{' '.join(s.argv[1:3])} --help` failed or has no --device")
    if not latency_timer_synchronizes():
        problems.append("search_spaces.cost.measure_latency does not synchronize around CUDA forwards")
    return problems


def latency_timer_synchronizes() -> bool:
    """On the CPU: a tensor that says it is on CUDA must make the timer call ``torch.cuda.synchronize``
    before and after every timed forward."""
    import torch

    from search_spaces import cost

    class _SaysCuda(torch.Tensor):
        @property
        def is_cuda(self):  # noqa: D401 - a property of the fake
            return True

    calls = []
    real_sync, real_example = torch.cuda.synchronize, cost._example
    torch.cuda.synchronize = lambda *a, **k: calls.append(1)
    cost._example = lambda shape, batch=1, device=None: real_example(shape, batch).as_subclass(_SaysCuda)
    try:
        cost.measure_latency(torch.nn.Linear(4, 2), (4,), repeats=5, warmup=1)
    finally:
        torch.cuda.synchronize, cost._example = real_sync, real_example
    return len(calls) == 2 * 5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "bench" / "out" / "gpu_check"))
    p.add_argument("--budget", type=int, default=480, help="seconds for all steps together (default 480)")
    p.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    args = p.parse_args(argv)
    import torch

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if not report["cuda"]:
        print("no CUDA device here: the GPU check does not run; CPU self-test instead")
        problems = self_test(out)
        report.update(self_test_problems=problems, steps=[asdict(s) for s in plan(out, args.budget)])
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        for line in problems:
            print(f"self-test: {line}")
        print(f"self-test {'passed' if not problems else 'FAILED'}; plan written to {out / 'gpu_check.json'}")
        return 0 if not problems else 1
    report["device_name"] = torch.cuda.get_device_name(0)
    steps = [s for s in plan(out, args.budget) if not args.only or s.name in args.only.split(",")]
    done = []
    for step in steps:
        print(f"[gpu-check] {step.name} (limit {step.limit_s} s): {' '.join(step.argv[1:])}", flush=True)
        done.append(run_step(step, out))
        print(f"[gpu-check] {step.name}: exit {step.returncode}{' (cut by its limit)' if step.timed_out else ''}, "
              f"{step.seconds} s, failed: {', '.join(step.failed_tests) or 'none'}", flush=True)
        report["steps"] = [asdict(s) for s in done]
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    ok = all(s.returncode == 0 for s in done)
    print(f"[gpu-check] {'passed' if ok else 'FAILED'}; logs in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
