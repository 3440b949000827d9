"""The SCANN benchmark's bookkeeping: which runs it plans and how it judges them (no training)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from bench import scann_compression as bench


def _row(ds, method, seed, ratio, drop, held=True):
    return {"dataset": ds, "method": method, "seed": seed, "baseline_params": 1000, "params": 1000 / ratio,
            "ratio": ratio, "acc_drop_points": drop, "baseline_test_acc": 0.97, "test_acc": 0.97 - drop / 100,
            "met_on_validation": held, "test_selected": {"ratio": None}, "seconds": 1.0}


def test_plan_runs_enough_seeds_for_a_thousand_test_predictions_from_the_first_seed():
    args = SimpleNamespace(seeds=None, first_seed=100)
    units = bench.plan(["digits", "breast_cancer", "mnist5k"], args)
    assert sorted(units) == sorted([("digits", 100 + k) for k in range(3)] + [("mnist5k", 100 + k) for k in range(3)]
                                   + [("breast_cancer", 100 + k) for k in range(9)])
    assert units[0] == ("digits", 100)  # slowest first, seed by seed
    from experiments.data import load_tabular_dataset

    for name in ("digits", "breast_cancer"):  # SEEDS: the fewest seeds (>= 3) for >= 1,000 pooled test predictions
        n_test = len(load_tabular_dataset(bench.DATASETS[name], seed=100).y_test)
        assert bench.SEEDS[name] == max(3, math.ceil(1000 / n_test)), (name, n_test)
    assert bench.plan(["breast_cancer"], SimpleNamespace(seeds=2, first_seed=0)) == [("breast_cancer", 0),
                                                                                      ("breast_cancer", 1)]


def test_verdict_is_the_geometric_mean_ratio_and_the_mean_change():
    rows = [_row("breast_cancer", "SCANN", s, r, d) for s, (r, d) in enumerate([(40.0, 0.0), (2.0, 0.88), (2.5, 0.0)])]
    rows += [_row("digits", "SCANN", s, r, d) for s, (r, d) in enumerate([(12.0, 0.28), (11.0, 0.56), (14.0, 0.0)])]
    rows += [_row("digits", "DR+SCANN", s, 20.0, d) for s, d in enumerate([0.56, 0.56, 0.83])]
    out = bench.summarize(pd.DataFrame(rows)).set_index(["dataset", "method"])
    bc = out.loc[("breast_cancer", "SCANN")]
    assert bc["ratio_mean"] == pytest.approx(14.833, abs=1e-3)  # an arithmetic mean would pass ...
    assert bc["ratio_geomean"] == pytest.approx(200 ** (1 / 3))  # ... the geometric mean (5.8x) does not
    assert bc["ratio_min"] == 2.0 and bc["drop_pt"] == pytest.approx(0.88 / 3)
    assert not bc["target_met"] and bc["seeds_met"] == 1
    dg = out.loc[("digits", "SCANN")]
    assert dg["target_met"] and dg["drop_pt"] == pytest.approx(0.28) and dg["seeds_met"] == 2
    assert dg["drop_pt_ci95"] == pytest.approx(4.302653 * pd.Series([0.28, 0.56, 0.0]).std() / math.sqrt(3), rel=1e-5)
    dr = out.loc[("digits", "DR+SCANN")]
    assert not dr["target_met"] and dr["ratio_geomean"] == pytest.approx(20.0)  # 0.65 pt mean drop


def test_bad_flags_exit_2_before_any_run(tmp_path, capsys):
    assert bench.main(["--datasets", "iris", "--out", str(tmp_path)]) == 2
    assert "unknown data set 'iris'" in capsys.readouterr().err
    assert bench.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--scann-recovery"):
        bench.main(["--scann-recovery", "digits=linear", "--out", str(tmp_path)])
    assert bench.main(["--methods", "DR+SCANN", "--datasets", "mnist5k", "--out", str(tmp_path)]) == 2
    assert "DR+SCANN does not run on mnist5k" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--methods"):
        bench.main(["--methods", "SCANN,MLP", "--out", str(tmp_path)])
    assert bench._methods("dr+scann") == ["DR+SCANN"]
    assert not (tmp_path / "scann_runs").exists()
