"""The SCANN benchmark's bookkeeping: which runs it plans and how it judges them (no training)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from bench import scann_compression as bench


def _row(ds, method, seed, ratio, drop, held=True, at=(11.0, 0.0)):
    at_ratio, at_change = at
    return {"dataset": ds, "method": method, "seed": seed, "baseline_params": 1000, "params": 1000 / ratio,
            "ratio": ratio, "acc_drop_points": drop, "baseline_test_acc": 0.97, "test_acc": 0.97 - drop / 100,
            "met_on_validation": held, "test_selected": {"ratio": None}, "seconds": 1.0,
            "at_target": {"ratio": at_ratio, "change_pt": at_change if at_ratio else None}}


def test_plan_runs_enough_seeds_for_a_thousand_test_predictions_from_the_first_seed():
    args = SimpleNamespace(seeds=None, first_seed=100)
    units = bench.plan(["digits", "breast_cancer", "mnist5k"], args)
    assert sorted(units) == sorted([("digits", 100 + k) for k in range(8)] + [("mnist5k", 100 + k) for k in range(3)]
                                   + [("breast_cancer", 100 + k) for k in range(18)])
    assert units[0] == ("digits", 100)  # slowest first, seed by seed
    from experiments.data import load_tabular_dataset

    # SEEDS: the fewest seeds (>= 4) for >= 1,000 pooled test predictions; digits 8 from round 7 on,
    # breast_cancer 18 from round 9 on
    for name, least in (("digits", 8), ("breast_cancer", 18)):
        n_test = len(load_tabular_dataset(bench.DATASETS[name], seed=100).y_test)
        assert bench.SEEDS[name] == max(least, math.ceil(1000 / n_test)), (name, n_test)
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
    assert not bc["mc_target_met"] and bc["seeds_met"] == 1
    dg = out.loc[("digits", "SCANN")]
    assert dg["mc_target_met"] and dg["drop_pt"] == pytest.approx(0.28) and dg["seeds_met"] == 2
    assert dg["drop_pt_ci95"] == pytest.approx(4.302653 * pd.Series([0.28, 0.56, 0.0]).std() / math.sqrt(3), rel=1e-5)
    dr = out.loc[("digits", "DR+SCANN")]
    assert not dr["mc_target_met"] and dr["ratio_geomean"] == pytest.approx(20.0)  # 0.65 pt mean drop


def test_verdict_is_the_mean_change_of_each_runs_least_compressed_10x_network():
    """target_met: every run reaches >= 10x and the mean test change there is >= -0.5 points (the M.C.
    figures do not enter it)."""
    rows = [_row("digits", "DR+SCANN", s, 40.0, 2.0, at=a) for s, a in enumerate([(11.0, 0.28), (12.0, -1.39), (10.5, 0.0)])]
    rows += [_row("digits", "SCANN", s, 12.0, 0.0, at=a) for s, a in enumerate([(11.0, -0.83), (12.0, -0.83), (10.5, 0.0)])]
    rows += [_row("breast_cancer", "SCANN", s, 12.0, 0.0, at=a) for s, a in enumerate([(11.0, 0.88), (None, None)])]
    out = bench.summarize(pd.DataFrame(rows)).set_index(["dataset", "method"])
    dr = out.loc[("digits", "DR+SCANN")]  # the M.C. networks lose 2 points; the 10x ones -0.37 on average
    assert dr["target_met"] and not dr["mc_target_met"] and dr["at_target_change_pt"] == pytest.approx(-1.11 / 3)
    assert dr["at_target_ratio_geomean"] == pytest.approx((11 * 12 * 10.5) ** (1 / 3))
    assert dr["at_target_change_ci95"] == pytest.approx(
        4.302653 * pd.Series([0.28, -1.39, 0.0]).std() / math.sqrt(3), rel=1e-5)
    sc = out.loc[("digits", "SCANN")]
    assert not sc["target_met"] and sc["mc_target_met"] and sc["at_target_change_pt"] == pytest.approx(-1.66 / 3)
    bc = out.loc[("breast_cancer", "SCANN")]  # one run never reached 10x: missed whatever the other says
    assert not bc["target_met"] and bc["at_target_seeds"] == 1


def test_the_10x_network_is_the_least_compressed_one_at_or_beyond_the_target(tmp_path):
    pd.DataFrame({"iteration": [0, 1, 2, 3], "params": [500, 120, 95, 40],
                  "test_acc": [0.97, 0.96, 0.955, 0.90], "val_acc": [0.98, 0.97, 0.96, 0.9]}).to_csv(
        tmp_path / "structure.csv")
    at = bench._at_target(tmp_path, {"baseline_params": 1000, "baseline_test_acc": 0.96})
    assert at["iteration"] == 2 and at["ratio"] == pytest.approx(1000 / 95) and at["change_pt"] == pytest.approx(-0.5)
    # no iteration reaches 10x of a 300-parameter baseline
    assert bench._at_target(tmp_path, {"baseline_params": 300, "baseline_test_acc": 0.9})["ratio"] is None
    # image mode: the ratio of the fully connected part (the convolutions' 300 params are not SCANN's)
    pd.DataFrame({"iteration": [0, 1, 2, 3], "params": [800, 420, 395, 340],
                  "test_acc": [0.97, 0.96, 0.955, 0.90], "val_acc": [0.98, 0.97, 0.96, 0.9]}).to_csv(
        tmp_path / "structure.csv")
    at = bench._at_target(tmp_path, {"baseline_params": 1300, "baseline_fc_params": 1000, "mode": "image",
                                     "baseline_test_acc": 0.96})
    assert at["iteration"] == 2 and at["params"] == 95 and at["ratio"] == pytest.approx(1000 / 95)


def test_bad_flags_exit_2_before_any_run(tmp_path, capsys):
    assert bench.main(["--datasets", "iris", "--out", str(tmp_path)]) == 2
    assert "unknown data set 'iris'" in capsys.readouterr().err
    assert bench.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--scann-recovery"):
        bench.main(["--scann-recovery", "digits=linear", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--dr-scann-recovery"):
        bench.main(["--dr-scann-recovery", "mnist5k=cosine", "--out", str(tmp_path)])
    assert bench.main(["--methods", "DR+SCANN", "--datasets", "mnist5k", "--out", str(tmp_path)]) == 2
    assert "DR+SCANN does not run on mnist5k" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--dr-scann-epochs"):
        bench.main(["--dr-scann-epochs", "digits=0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--methods"):
        bench.main(["--methods", "SCANN,MLP", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--scann-weight-decay"):
        bench.main(["--scann-weight-decay", "breast_cancer=-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--scann-weight-decay"):
        bench.main(["--scann-weight-decay", "breast_cancer=inf", "--out", str(tmp_path)])
    assert bench._weight_decay("breast_cancer=1e-3,digits=0") == {"breast_cancer": 1e-3, "digits": 0.0}
    assert bench._methods("dr+scann") == ["DR+SCANN"]
    assert not (tmp_path / "scann_runs").exists()


def test_each_method_gets_its_own_recovery_schedule_and_dr_scann_reuses_the_baseline(tmp_path, monkeypatch):
    """--scann-recovery reaches only the SCANN runs, --dr-scann-recovery only the DR+SCANN runs."""
    import json

    seen = []

    def fake_trial(cfg, run_dir):
        seen.append(dict(cfg))
        run_dir.mkdir(parents=True)
        (run_dir / "arch.json").write_text(json.dumps({"baseline_hidden": [24]}))
        pd.DataFrame({"iteration": [0], "params": [100], "test_acc": [0.97], "val_acc": [0.98]}).to_csv(
            run_dir / "structure.csv")
        return {"baseline_params": 1000, "params": 100, "baseline_test_acc": 0.97, "test_acc": 0.97,
                "baseline_val_acc": 0.98, "val_acc": 0.98, "connections": 90, "total_compression_ratio": 10.0,
                "flops": 1, "baseline_flops": 10, "depth": 1, "neurons": 5, "mc_met": True,
                "dr_method": "pca", "dr_ratio": 0.5}

    monkeypatch.setattr(bench, "_trial", fake_trial)
    args = bench._args(["--scann-recovery", "breast_cancer=cosine", "--dr-scann-recovery", "digits=cosine-last",
                        "--out", str(tmp_path / "a"), "--reference-trainings", "1"])
    for name in ("digits", "breast_cancer"):
        rows = bench.run_dataset(name, 7, args, tmp_path / "a")
        assert [r["method"] for r in rows] == ["SCANN", "DR+SCANN"] and rows[0]["ratio"] == 10.0
    assert [(c["recovery_schedule"], c["checkpoint_epochs"]) for c in seen] == [
        ("constant", True), ("cosine", False), ("cosine", True), ("constant", True)]
    assert [c["epochs_per_op"] for c in seen] == [40, 80, 40, 40]  # DR_SCANN_EPOCHS: digits DR+SCANN
    assert rows[0]["at_target"]["ratio"] == 10.0 and rows[0]["at_target"]["change_pt"] == 0.0
    assert "baseline_hidden" not in seen[0] and seen[1]["baseline_hidden"] == [24]
    assert seen[1]["dr_method"] == "search" and seen[1]["select_folds"] == bench.SELECT_FOLDS["digits"]
    seen.clear()
    bench.run_dataset("digits", 7, bench._args(["--dr-scann-epochs", "", "--epochs-per-op", "30", "--reference-trainings",
                                                "1"]), tmp_path / "c")
    assert [c["epochs_per_op"] for c in seen] == [30, 30]
    seen.clear()  # the defaults: breast_cancer anneals (SCANN round 3, DR+SCANN round 11), digits DR+SCANN
    # anneals and keeps the last epoch (round 5)
    bench.run_dataset("digits", 7, bench._args(["--reference-trainings", "1"]), tmp_path / "b")
    bench.run_dataset("breast_cancer", 7, bench._args(["--reference-trainings", "1"]), tmp_path / "b")
    assert [(c["recovery_schedule"], c["checkpoint_epochs"]) for c in seen] == [
        ("constant", True), ("cosine", False), ("cosine", True), ("cosine", True)]
    # DR_SELECT (round 11): breast_cancer's DR+SCANN runs start from the most compressed DR model that holds
    assert [c.get("dr_select") for c in seen] == [None, "best", None, "most_compressed"]
    # SCANN_WEIGHT_DECAY (round 10): breast_cancer's SCANN runs only
    assert [c.get("scann_weight_decay") for c in seen] == [None, None, 1e-3, None]
    seen.clear()  # --scann-weight-decay reaches the SCANN runs of its data sets only
    wd = bench._args(["--scann-weight-decay", "digits=5e-4", "--reference-trainings", "1"])
    bench.run_dataset("digits", 7, wd, tmp_path / "d")
    bench.run_dataset("breast_cancer", 7, wd, tmp_path / "d")
    assert [c.get("scann_weight_decay") for c in seen] == [5e-4, None, None, None]
    seen.clear()  # --dr-select reaches the DR+SCANN runs of its data sets only; '' is Algorithm 1's best everywhere
    for spec in ("digits=most_compressed", ""):
        for name in ("digits", "breast_cancer"):
            bench.run_dataset(name, 7, bench._args(["--dr-select", spec, "--reference-trainings", "1"]),
                              tmp_path / f"e{len(spec)}")
    assert [c.get("dr_select") for c in seen] == [None, "most_compressed", None, "best", None, "best", None, "best"]
    for bad in ("breast_cancer=smallest", "mnist5k=best", "breast_cancer"):
        with pytest.raises(SystemExit, match="--dr-select wants tabular name=best|most_compressed"):
            bench.main(["--dr-select", bad, "--out", str(tmp_path / "f")])
    assert not (tmp_path / "f" / "scann_runs").exists()


def test_the_10x_check_judges_against_the_mean_of_the_baseline_trainings(tmp_path, monkeypatch):
    """Round 7 on: the reference is the mean test accuracy of --reference-trainings trainings of the
    baseline architecture, computed once per (data set, seed) for both methods; the change against
    the run's own baseline network is kept beside it; mnist5k keeps its single network."""
    import json

    from experiments.methods import scann as trial_mod

    calls = []

    def fake_trial(cfg, run_dir):
        run_dir.mkdir(parents=True)
        (run_dir / "arch.json").write_text(json.dumps({"baseline_hidden": [24]}))
        pd.DataFrame({"iteration": [0, 1], "params": [200, 100], "test_acc": [0.97, 0.96],
                      "val_acc": [0.98, 0.98]}).to_csv(run_dir / "structure.csv")
        return {"baseline_params": 1000, "params": 100, "baseline_test_acc": 0.97, "test_acc": 0.96,
                "baseline_val_acc": 0.98, "val_acc": 0.98, "connections": 90, "total_compression_ratio": 10.0,
                "flops": 1, "baseline_flops": 10, "depth": 1, "neurons": 5, "mc_met": True,
                "dr_method": "pca", "dr_ratio": 0.5}

    def fake_accs(cfg, hidden, trainings):
        calls.append((cfg.dataset, cfg.seed, tuple(hidden), trainings))
        return [0.97, 0.95, 0.96, 0.96][:trainings]

    monkeypatch.setattr(bench, "_trial", fake_trial)
    monkeypatch.setattr(trial_mod, "baseline_test_accs", fake_accs)
    rows = bench.run_dataset("digits", 7, bench._args(["--reference-trainings", "4"]), tmp_path / "a")
    assert calls == [("digits_flat", 7, (24,), 4)]  # once for SCANN and DR+SCANN
    for r in rows:
        assert r["reference"]["mean"] == pytest.approx(0.96) and r["reference"]["reproduces"]
        assert r["at_target"]["change_pt"] == pytest.approx(0.0)  # 0.96 against the mean 0.96
        assert r["at_target"]["change_single_pt"] == pytest.approx(-1.0)  # against the run's own 0.97
    s = bench.summarize(pd.DataFrame(rows))
    assert s["at_target_change_pt"].tolist() == pytest.approx([0.0, 0.0]) and s["target_met"].all()
    assert s["at_target_change_single_pt"].tolist() == pytest.approx([-1.0, -1.0])
    monkeypatch.setattr(trial_mod, "baseline_test_accs", lambda *a: [0.95, 0.97])
    rows = bench.run_dataset("digits", 8, bench._args(["--reference-trainings", "2"]), tmp_path / "b")
    assert not rows[0]["reference"]["reproduces"]  # flagged, not silently used
    calls.clear()
    rows = bench.run_dataset("digits", 9, bench._args(["--reference-trainings", "1"]), tmp_path / "c")
    assert calls == [] and rows[0]["reference"] is None and rows[0]["at_target"]["change_pt"] == pytest.approx(-1.0)
    assert bench.main(["--reference-trainings", "0", "--out", str(tmp_path / "d")]) == 2


def test_pool_with_joins_earlier_rounds_runs_in_the_verdict(tmp_path, monkeypatch, capsys):
    """Round 9 on: --pool-with adds an earlier round's runs of the same pairs to the verdict (its own
    summary is kept beside it); a missing file, a seed run twice or other method settings are refused
    before any run."""
    import json

    from experiments.methods import scann as trial_mod

    def fake_trial(cfg, run_dir):
        acc = 0.95 if cfg["seed"] < 10 else 0.975  # round 1: -2 pt at 10x, round 2: +0.5 pt
        run_dir.mkdir(parents=True)
        (run_dir / "arch.json").write_text(json.dumps({"baseline_hidden": [24]}))
        pd.DataFrame({"iteration": [0, 1], "params": [200, 100], "test_acc": [0.97, acc],
                      "val_acc": [0.98, 0.98]}).to_csv(run_dir / "structure.csv")
        return {"baseline_params": 1000, "params": 100, "baseline_test_acc": 0.97, "test_acc": acc,
                "baseline_val_acc": 0.98, "val_acc": 0.98, "connections": 90, "total_compression_ratio": 10.0,
                "flops": 1, "baseline_flops": 10, "depth": 1, "neurons": 5, "mc_met": True, "selection_acc": None,
                "select_folds": 8, "dr_method": "pca", "dr_ratio": 0.5}

    monkeypatch.setattr(bench, "_trial", fake_trial)
    monkeypatch.setattr(trial_mod, "baseline_test_accs", lambda cfg, hidden, n: [0.97] * n)
    common = ["--datasets", "breast_cancer", "--methods", "SCANN", "--jobs", "1", "--seeds", "2"]
    assert bench.main(common + ["--out", str(tmp_path / "r1")]) == 0
    first = tmp_path / "r1" / "scann_compression.json"
    assert not json.loads(first.read_text())["all_targets_met"]
    assert bench.main(common + ["--first-seed", "10", "--out", str(tmp_path / "r2"), "--pool-with", str(first)]) == 0
    out = json.loads((tmp_path / "r2" / "scann_compression.json").read_text())
    assert out["summary"][0]["seeds"] == 2 and out["summary"][0]["target_met"]  # this round alone: +0.5
    pooled = out["summary_pooled"][0]
    assert pooled["seeds"] == 4 and pooled["at_target_change_pt"] == pytest.approx(-0.75)
    assert not out["all_targets_met"] and out["pooled_with"] == [str(first)]  # the verdict is the pooled one
    assert (tmp_path / "r2" / "scann_compression.png").stat().st_size > 0
    assert f"pooled with 2 runs of earlier rounds ({first};" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="seeds \\[0, 1\\] are also in this round"):
        bench.main(common + ["--out", str(tmp_path / "r3"), "--pool-with", str(first)])
    assert not (tmp_path / "r3" / "scann_runs").exists()  # refused before any run
    with pytest.raises(SystemExit, match="it ran with tolerance=0.005, this round with 0.01"):
        bench.main(common + ["--first-seed", "20", "--tolerance", "0.01", "--out", str(tmp_path / "r6"),
                             "--pool-with", str(first)])
    assert not (tmp_path / "r6" / "scann_runs").exists()
    assert bench.main(common + ["--first-seed", "20", "--dr-scann-recovery", "", "--out", str(tmp_path / "r7"),
                                "--pool-with", str(first)]) == 0  # a digits-only setting: breast_cancer pools
    with pytest.raises(SystemExit, match="no runs of this round"):
        bench.main(common + ["--datasets", "digits", "--out", str(tmp_path / "r5"), "--pool-with", str(first)])
    with pytest.raises(SystemExit, match="--pool-with .*missing.json"):
        bench.main(common + ["--out", str(tmp_path / "r4"), "--pool-with", str(tmp_path / "missing.json")])
    assert not (tmp_path / "r4" / "scann_runs").exists()


def test_pool_with_compares_one_methods_settings_only_when_that_method_is_pooled():
    """Round 8's stored file (weight decay 1e-4 everywhere) pools with a breast_cancer DR+SCANN round
    at its DR+SCANN settings -- SCANN_WEIGHT_DECAY reaches SCANN runs only -- but not with a SCANN
    one; settings newer than the file (dr_select, round 11) count with the value it ran with."""
    from pathlib import Path

    path = str(Path(bench.__file__).parent / "results" / "scann_round8.json")
    (_, runs, settings), = bench._read_pool(path)
    round8_dr = ["--dr-scann-recovery", "digits=cosine-last", "--dr-select", ""]
    args = bench._args(["--datasets", "breast_cancer", "--first-seed", "2000", *round8_dr])
    bench._same_settings(path, settings, args, {("breast_cancer", "DR+SCANN")})
    with pytest.raises(SystemExit, match="scann_weight_decay=''"):
        bench._same_settings(path, settings, args, {("breast_cancer", "SCANN"), ("breast_cancer", "DR+SCANN")})
    units = bench.plan(["breast_cancer"], args)
    pooled = bench._pooled_runs([(path, runs, settings)], units, bench._args(["--methods", "DR+SCANN",
                                                                               "--first-seed", "2000", *round8_dr]))
    assert len(pooled) == 9 and set(pooled["method"]) == {"DR+SCANN"}
    # today's breast_cancer DR+SCANN settings (round 11) are not round 8's: it does not pool
    with pytest.raises(SystemExit, match="dr_scann_recovery='digits=cosine-last'"):
        bench._same_settings(path, settings, bench._args([]), {("breast_cancer", "DR+SCANN")})
    with pytest.raises(SystemExit, match="dr_select=''"):
        bench._same_settings(path, settings, bench._args(["--dr-scann-recovery", "digits=cosine-last"]),
                             {("breast_cancer", "DR+SCANN")})
