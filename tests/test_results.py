"""Results you can ship and read (issue 21), over one small run of every registered method:

* ``model.onnx``: onnxruntime's outputs equal PyTorch's (atol 1e-4) on the run's test batch, for
  the very network the method exported (captured as it is handed to ``RunContext.save_model``),
  and ``summary.json`` carries ``ort_latency_ms`` and the same export keys in every trial;
* the search cost per trial (counted training FLOPs, process CPU seconds) beside wall time;
* a notebook per method executed top to bottom on those runs;
* ``python -m analysis A B ...`` writes one front across methods, one panel row per data set.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_methods import CASES

from analysis import front
from analysis.__main__ import main as analysis_main
from analysis.io import load_runs
from experiments import nni_bridge
from experiments.config import build_config
from experiments.export import ONNX_OPSET, ORT_THREADS, onnx_outputs
from experiments.harness import RunContext, execute
from experiments.methods import METHODS

NOTEBOOKS = {"proxyless": "trajectories.ipynb", "growth": "growth.ipynb", "epnas": "epnas.ipynb",
             "scann": "scann.ipynb", "survey": "survey.ipynb"}
# the smoke cases, trained just enough to learn something: the exported networks pass the
# degeneracy check for real (no allow_degenerate here)
LEARN = {
    "proxyless": dict(limit=400, search_epochs=2, retrain_epochs=4, width=0.125),
    "growth": dict(limit=400, epochs=8, finetune_epochs=2),
    "epnas": dict(limit=400, epochs=4, stop_epoch=3),
    "scann": dict(),
    "scann-image": dict(limit=400, conv_epochs=3),
    "survey-morphnet": dict(limit=400, epochs=3, finetune_epochs=2),
    "survey-epnas": dict(limit=400, epochs=3, finetune_epochs=2),
}
EXPORT_KEYS = ("ort_latency_ms", "ort_threads", "onnx_opset", "onnx_ok", "onnx_max_abs_diff", "degenerate",
               "degenerate_fallback", "search_train_flops", "search_cpu_time_s", "search_time_s", "cpu_time_s",
               "wall_time_s")


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """``{case: (run folder, exported network on the CPU, its test batch)}`` for every case of
    :data:`test_methods.CASES` (with :data:`LEARN`), each run once, in ``<tmp>/<method>/<case>``."""
    root = tmp_path_factory.mktemp("methods")
    captured: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    original = RunContext.save_model

    def spy(self, model, example, **kw):
        captured[self.run.path.name] = (copy.deepcopy(model).cpu().eval(), example.detach().cpu().clone())
        return original(self, model, example, **kw)

    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunContext, "save_model", spy)
        for case, (method, options) in CASES.items():
            options = {**{k: v for k, v in options.items() if k != "allow_degenerate"}, **LEARN[case]}
            m = METHODS[method]
            folder = root / method / case
            nni_bridge._reset_for_tests()
            execute(method, build_config(m.config_cls, options), m.run, folder)
            out[case] = (folder, *captured[case])
    return out


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_model_equals_pytorch_and_is_timed(method_runs, case):
    folder, model, example = method_runs[case]
    assert (folder / "model.onnx").is_file() and (folder / "model.pt").is_file()
    with torch.no_grad():
        want = model(example)
    got = onnx_outputs(folder / "model.onnx", example)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-4), float((got - want).abs().max())
    # a dynamic batch axis: one sample runs too
    assert torch.allclose(onnx_outputs(folder / "model.onnx", example[:1]), want[:1], rtol=0, atol=1e-4)
    s = _summary(folder)
    assert s["onnx_ok"] == 1 and s["onnx_opset"] == ONNX_OPSET and s["ort_threads"] == ORT_THREADS
    assert s["onnx_max_abs_diff"] == pytest.approx(float((got - want).abs().max()), abs=1e-6)
    assert 0 < s["ort_latency_ms"] < 1e3
    assert s["degenerate"] == 0 and s["degenerate_fallback"] == 0


def test_every_trial_reports_the_same_numeric_export_and_cost_keys(method_runs):
    for case, (folder, _, _) in method_runs.items():
        s = _summary(folder)
        for key in EXPORT_KEYS:
            assert isinstance(s.get(key), (int, float)) and math.isfinite(s[key]), (case, key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_search_cost_is_counted_flops_and_cpu_seconds(method_runs, case):
    folder, _, _ = method_runs[case]
    s = _summary(folder)
    assert s["search_train_flops"] > 0, case
    assert 0 < s["search_cpu_time_s"] <= s["cpu_time_s"], case
    # the per-epoch rows of the search phases carry the counted FLOPs the total is made of
    metrics = pd.read_csv(folder / "metrics.csv")
    phases = METHODS[CASES[case][0]].search_phases
    rows = metrics[metrics["phase"].isin(phases)] if "phase" in metrics else metrics.iloc[0:0]
    if len(rows) and "train_flops" in rows and case not in ("survey-epnas",):
        assert rows["train_flops"].sum() == pytest.approx(s["search_train_flops"], rel=1e-6), case


@pytest.mark.parametrize("method", sorted(NOTEBOOKS))
def test_notebook_per_method_runs_top_to_bottom(method_runs, method, run_notebook):
    folder = next(iter(method_runs.values()))[0].parent.parent / method
    outputs = run_notebook(folder, NOTEBOOKS[method])
    text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    cases = [case for case, (m, _) in CASES.items() if m == method]
    if method == "proxyless":   # the scope-study notebook lists the runs in a table
        assert all(case in html for case in cases), html[:500]
    else:
        assert f"{len(cases)} run folder(s) under" in text
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 1, f"{method}: the notebook drew no figure"


def test_front_across_methods_one_panel_row_per_data_set(method_runs, tmp_path, capsys):
    root = next(iter(method_runs.values()))[0].parent.parent
    out = tmp_path / "front"
    folders = [str(root / m) for m in ("proxyless", "growth", "scann", "survey", "epnas")]
    assert analysis_main([*folders, "--out", str(out)]) == 0
    t = pd.read_csv(out / "front.csv")
    runs = load_runs(root)
    assert len(t) == len(runs)   # every run measured something
    assert set(t["dataset"]) == {"digits", "breast_cancer", "mnist5k"}
    assert {"proxyless", "growth", "scann", "survey/morphnet", "survey/epnas", "epnas"} == set(t["label"])
    assert (t["ort_latency_ms"] > 0).all()
    # each data set has its own Pareto front: its most accurate run is on it on every axis
    for _, g in t.groupby("dataset"):
        best = g.loc[g["accuracy"].idxmax()]
        assert best["pareto_flops"] and best["pareto_params"] and best["pareto_latency"]
    assert (out / "front.png").stat().st_size > 10_000
    assert "Pareto points" in capsys.readouterr().out


def _fake_run(root: Path, name: str, dataset: str, acc: float, flops: float, method: str = "growth") -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": method, "config": {"dataset": dataset}, "seed": 0}))
    (d / "summary.json").write_text(json.dumps({"method": method, "default": acc, "top1": acc, "dataset": dataset,
                                                "flops": flops, "params": flops / 10, "ort_latency_ms": flops / 1e6}))


def test_front_never_mixes_data_sets(tmp_path):
    # b1 would dominate a2 if the data sets were mixed; each data set keeps its own front
    _fake_run(tmp_path, "a1", "digits", 0.90, 2e6)
    _fake_run(tmp_path, "a2", "digits", 0.80, 1e6)
    _fake_run(tmp_path, "a3", "digits", 0.70, 3e6)
    _fake_run(tmp_path, "b1", "wine", 0.95, 0.5e6, method="scann")
    t = front.front_table(load_runs(tmp_path)).set_index("run")
    assert t.loc[["a1", "a2", "b1"], "pareto_flops"].all() and not t.loc["a3", "pareto_flops"]
    fig = front.plot_front(t.reset_index())
    assert len(fig.axes) == 2 * len(front.AXES)   # one row of panels per data set
