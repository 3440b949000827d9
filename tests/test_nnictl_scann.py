"""scann_schemes.yml under a real nnictl at tiny settings: the nested dr_method/dr_ratio choice
reaches each trial as flat keys, the web UI shows the parameters the trial ran and numeric final
metrics (accuracy, connections, params, FLOPs, compression ratio), val_acc per SCANN iteration,
and the analysis of the experiment folder writes the paper's tables, the front and graph drawings."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.launch import run_experiment

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.nnictl


def test_scann_schemes_config_under_nnictl(tmp_path):
    config = yaml.safe_load((REPO / "experiments/configs/scann_schemes.yml").read_text())
    config["trialCodeDirectory"] = str(REPO)
    dr = config["searchSpace"]["dr_method"]["_value"]
    pca = next(o for o in dr if o["_name"] == "pca")
    assert dr[0] == {"_name": "none"} and pca["dr_ratio"]["_value"] == [0.25, 0.5, 0.75]
    config["searchSpace"] = {"scheme": {"_type": "choice", "_value": ["C"]},
                             "dr_method": {"_type": "choice", "_value": [
                                 {"_name": "none"}, {"_name": "pca", "dr_ratio": {"_type": "choice", "_value": [0.5]}}]}}
    config["trialCommand"] = config["trialCommand"].replace("--iterations 10", "--iterations 2")
    config["trialCommand"] += " --baseline_hidden [16] --baseline_epochs 3 --epochs_per_op 2"
    config["maxTrialNumber"] = 2
    with run_experiment(config, tmp_path=tmp_path, timeout=600) as exp:
        assert exp.succeeded(2), exp.log_tail()
        ran = set()
        for tid, shown, cfg in exp.trials():
            assert cfg["dr_method"] == shown["dr_method"]["_name"]  # the web UI shows the nested record
            if cfg["dr_method"] == "pca":
                assert cfg["dr_ratio"] == shown["dr_method"]["dr_ratio"] == 0.5
            ran.add(cfg["dr_method"])
            final = exp.final_metric(tid)
            assert {"default", "connections", "params", "flops", "compression_ratio"} <= set(final)
            assert all(isinstance(v, (int, float)) for v in final.values())
            per_iteration = exp.metric_records(tid, "PERIODICAL")
            assert len(per_iteration) >= 3  # baseline/DR epochs, then one per SCANN iteration (0..2)
        assert ran == {"none", "pca"}
        from analysis.__main__ import main as analysis_main

        assert analysis_main([str(exp.experiment_dir)]) == 0
        out = exp.experiment_dir / "analysis"
        runs = pd.read_csv(next(out.rglob("scann_runs.csv")))
        assert len(runs) == 2
        for name in ("scann_table_vi_accuracy.csv", "scann_table_vii_params.csv", "scann_front.png"):
            assert list(out.rglob(name)), name
        assert list(out.rglob("scann_graph_*.png"))
