"""The proxyless study end to end under a real nnictl (trialConcurrency 2): every trial runs the
parameters the web UI shows for it, reports dict metrics with numeric keys, writes its run
folder into the trial's output dir, and ``python -m analysis`` turns the experiment into Table I."""
import json
from pathlib import Path

import pytest

from experiments.launch import run_experiment

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.nnictl


def test_scope_study_under_nnictl(tmp_path, run_notebook):
    config = {
        "experimentName": "test-proxyless-scopes",
        "searchSpace": {"scope": {"_type": "choice", "_value": ["none", "s", "m"]}},
        "trialCommand": ("python -m experiments.trial proxyless --dataset digits --limit 64 --width 0.0625 "
                         "--batch_size 32 --search_epochs 2 --retrain_epochs 1 --threads 1 --device cpu "
                         "--progress false --allow_degenerate true"),
        "trialCodeDirectory": str(REPO),
        "trialConcurrency": 2,
        "maxTrialNumber": 3,
        "tuner": {"name": "GridSearch"},
        "trainingService": {"platform": "local", "useActiveGpu": False},
    }
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(3), exp.log_tail()
        seen = set()
        for tid in exp.trial_ids:
            shown = exp.hyper_parameters(tid)
            out = exp.trial_output_dir(tid)
            cfg = exp.run_record(tid)
            assert cfg["config"]["scope"] == shown["parameters"]["scope"]  # ran what the web UI shows
            assert cfg["nni"]["parameter_id"] == shown["parameter_id"]
            seen.add(shown["parameters"]["scope"])
            final = exp.final_metric(tid)
            assert set(final) >= {"default", "top1", "params", "flops", "search_epochs", "exit_epoch"}
            assert all(isinstance(v, (int, float)) for v in final.values())
            summary = json.loads((out / "summary.json").read_text())
            assert final["params"] == summary["params"] and final["default"] == summary["top1"]
            inter = exp.metric_records(tid, "PERIODICAL")
            expected = 1 if shown["parameters"]["scope"] == "none" else 3  # search epochs + retrain
            assert len(inter) == expected
        assert seen == {"none", "s", "m"}
        from analysis.__main__ import main as analysis_main

        assert analysis_main([str(exp.experiment_dir)]) == 0
        table = (exp.experiment_dir / "analysis" / "table1.csv").read_text()
        assert "none" in table or "baseline" in table
        assert (exp.experiment_dir / "analysis" / "scopes.png").stat().st_size > 10_000
        # the notebook runs top to bottom on this real experiment's output
        outputs = run_notebook(exp.experiment_dir)
        pngs = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(pngs) >= 3  # scopes + Fig. 3 of the searched runs
