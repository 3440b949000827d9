"""growth_demo.yml (the embedded-data variant of growth_budgets.yml) under a real nnictl, at tiny
settings: every trial succeeds, reports numeric final metrics incl. training FLOPs, and the
analysis draws the growth pictures from the experiment folder."""
from pathlib import Path

import pytest
import yaml

from experiments.launch import run_experiment

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.nnictl


def test_growth_demo_config_under_nnictl(tmp_path):
    config = yaml.safe_load((REPO / "experiments/configs/growth_demo.yml").read_text())
    config["trialCodeDirectory"] = str(REPO)
    config["searchSpace"] = {"family": {"_type": "choice", "_value": ["resnet20", "basic3resnet"]},
                             "budget": {"_type": "choice", "_value": [0.35]}}
    config["trialCommand"] += " --epochs 2 --limit 64 --max_blocks 2 --progress false --allow_degenerate true"
    config["maxTrialNumber"] = 2
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(2), exp.log_tail()
        for tid, shown, cfg in exp.trials():
            assert cfg["family"] == shown["family"] and cfg["budget"] == shown["budget"]
            final = exp.final_metric(tid)
            assert {"default", "params", "flops", "train_flops"} <= set(final)
            assert all(isinstance(v, (int, float)) for v in final.values())
            assert len(exp.metric_records(tid, "PERIODICAL")) == 2
        from analysis.__main__ import main as analysis_main

        assert analysis_main([str(exp.experiment_dir)]) == 0
        pngs = list((exp.experiment_dir / "analysis").rglob("growth.png"))
        assert len(pngs) == 2 and all(p.stat().st_size > 20_000 for p in pngs)
