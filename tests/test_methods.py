"""One smoke test per registered method (tiny settings, embedded data, augmentation on where the
method has it): the run writes the run-folder contract, and a run killed in each of its phases
(right after a checkpoint, mid-phase and at the phase's end) resumes to the same files, times aside.

The kill is a ``BaseException`` raised from :meth:`strategies.training.TrainingPhase._save` just
after the checkpoint is on disk, so nothing in the method can catch it; the resumed run is a new
:func:`experiments.harness.execute` on the same folder, as a restarted trial would be.  Since the
runs draw augmentation (random crops) from the global RNG, a resume that did not restore the RNG
states, or restored them at another point than where they were saved, changes the files.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from experiments import nni_bridge
from experiments.config import build_config
from experiments.harness import RunContext, execute
from experiments.runfolder import measurements_aside
from experiments.methods import METHODS
from strategies.training import TrainingPhase

# tiny runs: a network at chance is expected here, and exported anyway (the checks are tests/test_results.py)
IMG = dict(progress=False, threads=1, device="cpu", allow_degenerate=True)
CASES: dict[str, tuple[str, dict]] = {
    "proxyless": ("proxyless", dict(dataset="digits", limit=96, width=0.0625, scope="s", batch_size=32,
                                    search_epochs=2, retrain_epochs=2, record_every=1, augment=True, **IMG)),
    "growth": ("growth", dict(dataset="digits", limit=96, family="basic3resnet", width=0.25, stage_blocks=[1, 1, 1],
                              epochs=2, batch_size=32, budget=0.5, budget_every=2, final_beta=10.0,
                              finetune_epochs=2, augment=True, **IMG)),
    "epnas": ("epnas", dict(dataset="digits", limit=96, batch_size=32, batch_ref=32, lr=0.05, epochs=3, stop_epoch=2,
                            max_layers=4, augment=True, share=False, **IMG)),
    "scann": ("scann", dict(dataset="breast_cancer", baseline_hidden=[16], baseline_epochs=3, iterations=2,
                            epochs_per_op=2, scheme="B", select="most_compressed", select_folds=3,
                            progress=False, device="cpu")),
    "scann-image": ("scann", dict(dataset="mnist5k", limit=200, conv_epochs=2, iterations=1, epochs_per_op=1,
                                  scheme="C", batch_size=64, augment=True, **IMG)),
    "survey-morphnet": ("survey", dict(variant="morphnet", dataset="digits", limit=96, image_size=8,
                                       family="resnet20", stage_blocks=[1, 1, 1], width=0.25, epochs=2,
                                       finetune_epochs=1, batch_size=32, augment=True, **IMG)),
    "survey-epnas": ("survey", dict(variant="epnas", dataset="digits", limit=96, image_size=8, family="resnet20",
                                    stage_blocks=[1, 1, 1], width=0.25, epochs=1, finetune_epochs=1, batch_size=32,
                                    epnas_episodes=1, epnas_branches=2, epnas_steps=1, epnas_proxy_epochs=1,
                                    augment=True, **IMG)),
}
CONTRACT = ("config.json", "metrics.csv", "arch.json", "model.pt", "summary.json")
OWN_FILES = {"proxyless": ("trajectory.csv",), "growth": ("structure.csv",), "scann": ("structure.csv",)}


class Killed(BaseException):
    """Stands for the trial process being killed (not an Exception: nothing may catch it)."""


def _execute(case: str, folder: Path, monkeypatch, kill_at: tuple[str, int] | None = None) -> list[str]:
    """Run ``case`` in ``folder``; with ``kill_at = (phase, n)`` die right after that phase's n-th
    checkpoint.  Returns the phases of the checkpoints taken, in order."""
    method, options = CASES[case]
    m = METHODS[method]
    cfg = build_config(m.config_cls, options)
    saves: list[str] = []
    original = TrainingPhase._save

    def spy(self):
        original(self)
        if isinstance(self.host, RunContext):   # phases of the run, not in-memory inner loops
            saves.append(self.name)
            if kill_at is not None and self.name == kill_at[0] and saves.count(self.name) == kill_at[1]:
                raise Killed(f"{case} killed after checkpoint {kill_at[1]} of phase {kill_at[0]}")

    nni_bridge._reset_for_tests()
    with monkeypatch.context() as patch:
        patch.setattr(TrainingPhase, "_save", spy)
        execute(method, cfg, m.run, folder)
    return saves


def _timeless_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [measurements_aside(row) for row in csv.DictReader(f)]


def _timeless_json(path: Path):
    return measurements_aside(json.loads(path.read_text()))


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    assert names == sorted(p.name for p in b.iterdir() if p.is_file()), (a, b)
    for name in names:
        if name.endswith(".csv"):
            assert _timeless_csv(a / name) == _timeless_csv(b / name), name
        elif name.endswith(".json"):
            assert _timeless_json(a / name) == _timeless_json(b / name), name
        elif name.endswith(".pt"):
            sa, sb = torch.load(a / name, weights_only=False), torch.load(b / name, weights_only=False)
            flat_a, flat_b = _tensors(sa), _tensors(sb)
            assert flat_a.keys() == flat_b.keys(), name
            for k in flat_a:
                assert torch.equal(flat_a[k], flat_b[k]), f"{name}: {k}"


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}.{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}[{i}]"))
        return out
    return {}


def test_every_registered_method_has_a_case():
    assert {method for method, _ in CASES.values()} == set(METHODS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_runs_writes_the_contract_and_resumes_from_every_phase(case, tmp_path, monkeypatch):
    method = CASES[case][0]
    ref = tmp_path / "ref"
    saves = _execute(case, ref, monkeypatch)
    for name in CONTRACT + OWN_FILES.get(method, ()):
        assert (ref / name).is_file(), name
    assert not (ref / "checkpoint.pt").exists()
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["method"] == method and math.isfinite(summary["default"])
    torch.load(ref / "model.pt", weights_only=True)   # a plain state_dict

    # kill points: after the first checkpoint of every phase (mid-phase when it has more epochs)
    # and after its last one (the boundary to the next phase)
    phases = list(dict.fromkeys(saves))
    assert phases, f"{case}: no phase checkpointed through TrainingPhase"
    kills = sorted({(p, 1) for p in phases} | {(p, saves.count(p)) for p in phases},
                   key=lambda k: (phases.index(k[0]), k[1]))
    for phase, n in kills:
        folder = tmp_path / f"kill-{phase}-{n}"
        with pytest.raises(Killed):
            _execute(case, folder, monkeypatch, kill_at=(phase, n))
        assert (folder / "checkpoint.pt").exists() and not (folder / "summary.json").exists()
        _execute(case, folder, monkeypatch)
        _same_files(ref, folder)
