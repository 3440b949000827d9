"""``make gpu-check`` on a machine without CUDA: it says so and its CPU self-test passes (exit 0)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_the_self_test_runs_and_passes(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "self-test passed" in out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["cuda"] is False and not report["self_test_problems"]
    names = [s["name"] for s in report["steps"]]
    assert names == ["gpu_tests", "fast_suite", "proxyless_memory", "growth_cost"]
    assert sum(s["limit_s"] for s in report["steps"]) <= 8 * 60


def test_the_latency_timer_synchronizes_cuda():
    assert gpu_check.latency_timer_synchronizes()


def test_failed_tests_are_named_from_a_verbose_log():
    log = ("tests/test_a.py::test_x PASSED [ 10%]\n"
           "tests/test_b.py::test_y[cuda] FAILED [ 20%]\n"
           "ERROR tests/test_c.py::test_z - RuntimeError\n")
    assert gpu_check.failed_tests(log) == ["tests/test_b.py::test_y[cuda]", "tests/test_c.py::test_z"]


def test_a_step_cut_by_its_limit_keeps_its_log(tmp_path):
    step = gpu_check.Step("sleepy", [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(30)"],
                          1, "sleepy.log")
    gpu_check.run_step(step, tmp_path)
    assert step.timed_out and step.returncode is None and "started" in (tmp_path / "sleepy.log").read_text()
