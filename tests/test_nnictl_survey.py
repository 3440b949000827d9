"""compact_survey_demo.yml under a real nnictl at tiny settings: one trial per variant succeeds,
the web UI gets the right parameters and numeric final metrics, and the analysis of the
experiment folder writes the survey table and plot."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.launch import run_experiment

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.nnictl


def test_compact_survey_demo_config_under_nnictl(tmp_path):
    config = yaml.safe_load((REPO / "experiments/configs/compact_survey_demo.yml").read_text())
    config["trialCodeDirectory"] = str(REPO)
    variants = ["baseline", "morphnet", "gensynth"]
    config["searchSpace"] = {"variant": {"_type": "choice", "_value": variants}}
    config["trialCommand"] += (" --epochs 2 --finetune_epochs 1 --limit 96 --image_size 8 --stage_blocks [1,1,1]"
                               " --width 0.25 --progress false --allow_degenerate true")
    config["maxTrialNumber"] = len(variants)
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(3), exp.log_tail()
        seen = set()
        for tid, shown, cfg in exp.trials():
            assert cfg["variant"] == shown["variant"]
            seen.add(cfg["variant"])
            final = exp.final_metric(tid)
            assert {"default", "params", "flops", "target_flops", "target_deviation", "reached"} <= set(final)
            assert all(isinstance(v, (int, float)) for v in final.values())
        assert seen == set(variants)
        from analysis.__main__ import main as analysis_main

        assert analysis_main([str(exp.experiment_dir)]) == 0
        out = exp.experiment_dir / "analysis"
        table = pd.read_csv(out / "survey_table.csv")
        assert set(table["variant"]) == set(variants)
        assert (out / "survey.png").stat().st_size > 20_000
