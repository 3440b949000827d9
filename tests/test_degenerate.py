"""No degenerate result passed off as a success (issue 21, part 5).

A network whose outputs are NaN, do not depend on its input, or are at chance on the validation
split ends the trial as failed (exit 1, ``error.txt``, the run folder readable); SCANN's pruning
always keeps one input-to-output path; SCANN falls back to an earlier healthy checkpoint and
says so (``degenerate_fallback: 1``).  The data: small tabular sets and aggressive settings that
exported a network with no connections at chance accuracy, with exit 0, before."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_wine
from test_methods import CASES
from test_scann import random_net

from experiments import trial
from experiments.export import CHANCE_MARGIN, degeneracy
from experiments.methods import scann as scann_runner
from strategies.scann.operations import prune_connections, widest_path


# --------------------------------------------------------------------------- the checks themselves
def _val(n=60, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, classes, generator=g)
    return X, X.argmax(1)          # label = the largest feature: a linear network can be perfect


def test_degeneracy_names_each_reason():
    X, y = _val()
    healthy = nn.Linear(3, 3)
    with torch.no_grad():
        healthy.weight.copy_(torch.eye(3))
        healthy.bias.zero_()
    assert degeneracy(healthy, X[:8], (X, y), 3) == (None, 1.0)

    blind = nn.Linear(3, 3)
    with torch.no_grad():
        blind.weight.zero_()      # outputs = the bias: no path from the input
    assert "no path from its input" in degeneracy(blind, X[:8], (X, y), 3)[0]

    nan = nn.Linear(3, 3)
    with torch.no_grad():
        nan.bias[0] = float("nan")
    assert "not finite" in degeneracy(nan, X[:8], (X, y), 3)[0]

    majority = nn.Linear(3, 3)    # reads its input, but one class always wins
    with torch.no_grad():
        majority.weight.fill_(1e-3)
        majority.bias.copy_(torch.tensor([100.0, 0.0, 0.0]))
    reason, acc = degeneracy(majority, X[:8], (X, y), 3)
    share = float((y == 0).float().mean())
    assert "at chance" in reason and acc == pytest.approx(share)
    majority = float(torch.bincount(y).max()) / len(y)   # chance: the best constant prediction
    assert f"not more than {CHANCE_MARGIN} above {majority:.4f}" in reason


# --------------------------------------------------------------------------- SCANN keeps a path
@pytest.mark.parametrize("seed", range(4))
def test_pruning_never_cuts_every_path(seed):
    net = random_net(seed, groups=(4, 3, 5), keep=0.5)
    path = widest_path(net)
    assert path and path[0][1] < net.num_inputs and path[-1][0] >= net.num_hidden   # inputs -> an output
    weakest = min(float(net.weight[r, c].detach().abs()) for r, c in path)
    prune_connections(net, keep=1)            # would have left one connection: no path at all
    assert net.connections >= 1 and widest_path(net)
    # what is kept is that path (neurons on it may be renumbered; its strength is unchanged)
    kept = widest_path(net)
    assert len(kept) == len(path) and min(float(net.weight[r, c].detach().abs()) for r, c in kept) == pytest.approx(weakest)
    x = torch.randn(16, net.num_inputs, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.abs().sum() > 0          # the outputs depend on the inputs


def test_widest_path_is_empty_without_one():
    net = random_net(0, groups=(3,), keep=1.0)
    with torch.no_grad():
        net.mask[net.num_hidden:, :] = False      # nothing reaches an output
    assert widest_path(net) == []


# --------------------------------------------------------------------------- whole trials
@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """90 rows of wine, 6 features: a user's small CSV."""
    X, y = load_wine(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(y))[:90]
    df = pd.DataFrame(X[idx][:, :6], columns=[f"f{i}" for i in range(6)])
    df["label"] = y[idx]
    path = tmp_path_factory.mktemp("csv") / "small.csv"
    df.to_csv(path, index=False)
    return path


def _exit(argv) -> int:
    try:
        return trial.main(argv)
    except SystemExit as exc:     # UserError / TrialFailed: one line, exit 2 / 1
        return exc.code


AGGRESSIVE = ["--dataset", "csv", "--label", "label", "--scheme", "C", "--baseline_hidden", "8",
              "--baseline_epochs", "20", "--iterations", "4", "--epochs_per_op", "2", "--progress", "false"]


def test_scann_at_chance_fails_the_trial_with_one_line(small_csv, tmp_path, capsys):
    # DR to 2 components + pruning to 5 %: this exported 0 connections at chance and exit 0 before
    d = tmp_path / "run"
    args = ["scann", *AGGRESSIVE, "--csv", str(small_csv), "--dr_method", "pca", "--dr_ratio", "0.25",
            "--prune_keep", "0.05", "--select", "most_compressed", "--run-dir", str(d)]
    assert _exit(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the exported network is at chance")
    assert "at chance" in (d / "error.txt").read_text()
    assert not (d / "summary.json").exists() and not (d / "model.pt").exists()
    assert (d / "config.json").is_file() and (d / "metrics.csv").is_file()   # readable
    structure = pd.read_csv(d / "structure.csv")
    assert (structure["connections"] > 0).all()        # pruning kept a path every iteration


def test_scann_falls_back_to_a_healthy_checkpoint(small_csv, tmp_path, monkeypatch):
    # the size rule picks the most pruned checkpoint; call networks that small degenerate, as a
    # data set where they are at chance would: the trial exports the best healthy one and says so
    real = scann_runner.degeneracy

    def strict(model, example, val, num_classes, **kw):
        reason, acc = real(model, example, val, num_classes, **kw)
        connections = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "weight" in n)
        return (reason or ("at chance (test)" if connections <= 4 else None)), acc

    monkeypatch.setattr(scann_runner, "degeneracy", strict)
    d = tmp_path / "run"
    args = ["scann", *AGGRESSIVE, "--csv", str(small_csv), "--iterations", "3",
            "--prune_keep_schedule", "0.6,0.3,0.001,0.001", "--select", "min_ratio", "--min_ratio", "1000",
            "--run-dir", str(d)]
    assert trial.main(args) == 0
    s = json.loads((d / "summary.json").read_text())
    assert s["degenerate_fallback"] == 1 and s["degenerate"] == 0
    assert "iteration 2" in s["fallback_reason"] and "healthy" in s["fallback_reason"]
    arch = json.loads((d / "arch.json").read_text())
    assert arch["selected_iteration"] != 2 and s["connections"] > 4


def test_any_method_at_chance_fails_unless_allowed(tmp_path, capsys):
    # the tiny ProxylessNAS smoke settings train 2 epochs on 96 digits: a network at chance
    method, options = CASES["proxyless"]
    args = [method]
    for k, v in options.items():
        if k == "allow_degenerate":
            continue
        args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)]
    assert _exit([*args, "--run-dir", str(tmp_path / "a")]) == 1
    assert "at chance" in capsys.readouterr().err
    assert trial.main([*args, "--allow_degenerate", "true", "--run-dir", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["degenerate"] == 1
