"""CUDA checks: run where a GPU is (``pytest tests/test_gpu.py``); skipped on CPU-only machines (CI).

The rest of the suite runs on a GPU too (``device="auto"`` picks CUDA), but many SCANN tests pin
``device="cpu"``.  These run the SCANN trial itself on CUDA, through the paths a CPU run never
tests for device placement: networks rebuilt from snapshots (the best epoch of each size, the dead
neuron clean-up, the cross-validation runs' cached networks), Algorithm 1, and image mode's
extractor + synthesised FC part.  The exported files must load on the CPU.
"""
from __future__ import annotations

import json

import pytest
import torch

from experiments import nni_bridge
from experiments.config import build_config
from experiments.harness import execute
from experiments.methods.scann import ScannTrialConfig, run as scann_run
from search_spaces.feedforward import FeedForwardNet, PrunedFeedForward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TABULAR = dict(dataset="digits_flat", baseline_hidden=[32], baseline_epochs=3, iterations=3, epochs_per_op=2,
               progress=False, scheme="C", dr_method="search", dr_methods=["pca", "rp_gaussian"],
               dr_ratios=[0.75, 0.5], select="most_compressed", select_folds=3)
IMAGE = dict(dataset="mnist5k", limit=300, conv_epochs=1, iterations=2, scheme="C", progress=False, batch_size=64)


def _run(tmp_path, device: str, **kw):
    nni_bridge._reset_for_tests()
    cfg = build_config(ScannTrialConfig, dict(kw, device=device))
    return execute("scann", cfg, scann_run, tmp_path / device), tmp_path / device


@pytest.mark.parametrize("recovery", [("constant", True), ("cosine", False)])
def test_scann_tabular_trial_on_cuda(tmp_path, recovery):
    schedule, best_epoch = recovery
    summary, folder = _run(tmp_path, "cuda", **TABULAR, recovery_schedule=schedule, checkpoint_epochs=best_epoch)
    ref, _ = _run(tmp_path, "cpu", **TABULAR, recovery_schedule=schedule, checkpoint_epochs=best_epoch)
    # same pipeline, other arithmetic: the same shape of result, accuracies close
    assert summary["dr_method"] in ("pca", "rp_gaussian") and summary["select_folds"] == 3
    assert 0 < summary["params"] < summary["baseline_params"]
    assert abs(summary["baseline_test_acc"] - ref["baseline_test_acc"]) < 0.05
    arch = json.loads((folder / "arch.json").read_text())
    model = PrunedFeedForward(arch["num_inputs"], arch["pruned_shapes"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))  # CPU tensors
    masked = FeedForwardNet.from_snapshot(torch.load(folder / "masked.pt", weights_only=True))
    x = torch.rand(5, arch["num_inputs"])
    assert (model(x) - masked(x)).abs().max() < 1e-5


def test_scann_image_trial_on_cuda(tmp_path):
    summary, folder = _run(tmp_path, "cuda", **IMAGE)
    assert summary["mode"] == "image" and summary["baseline_params"] == 431_080
    assert summary["fc_params"] < 405_510 and 0 < summary["test_acc"] <= 1
    state = torch.load(folder / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state.values())


def test_snapshot_rebuilds_on_the_network_device():
    net = FeedForwardNet.from_snapshot(
        FeedForwardNet.from_linears([torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)]).snapshot(), device="cuda")
    assert net.weight.device.type == net.mask.device.type == "cuda"
    assert net.cleaned().weight.device.type == "cuda"
    assert net(torch.rand(2, 4, device="cuda")).shape == (2, 2)
