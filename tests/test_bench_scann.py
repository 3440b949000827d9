"""The SCANN benchmark's bookkeeping: which runs it plans and how it judges them (no training)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from bench import scann_compression as bench


def _row(ds, method, seed, ratio, drop, held=True, at=(11.0, 0.0)):
    at_ratio, at_change = at
    return {"dataset": ds, "method": method, "seed": seed, "baseline_params": 1000, "params": 1000 / ratio,
            "ratio": ratio, "acc_drop_points": drop, "baseline_test_acc": 0.97, "test_acc": 0.97 - drop / 100,
            "met_on_validation": held, "test_selected": {"ratio": None}, "seconds": 1.0,
            "at_target": {"ratio": at_ratio, "change_pt": at_change if at_ratio else None}}


def settings_file(tmp_path, name="settings.yml", **changes):
    """The default settings file with ``changes`` (``"digits.scann.recovery": "cosine"``; None deletes)."""
    data = yaml.safe_load(bench.DEFAULT_SETTINGS.read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    out = tmp_path / name
    out.write_text(yaml.safe_dump(data))
    return str(out)


def test_plan_runs_enough_seeds_for_a_thousand_test_predictions_from_the_first_seed():
    settings = bench.load_settings()
    args = SimpleNamespace(seeds=None, first_seed=100, bench=settings)
    units = bench.plan(["digits", "breast_cancer", "mnist5k"], args)
    assert sorted(units) == sorted([("digits", 100 + k) for k in range(8)] + [("mnist5k", 100 + k) for k in range(3)]
                                   + [("breast_cancer", 100 + k) for k in range(18)])
    assert units[0] == ("digits", 100)  # slowest first, seed by seed
    from experiments.data import load_tabular_dataset

    # seeds: at least the fewest (>= 4) for >= 1,000 pooled test predictions (digits 8, breast_cancer 18)
    for name, least in (("digits", 8), ("breast_cancer", 18)):
        n_test = len(load_tabular_dataset(bench.DATASETS[name], seed=100).y_test)
        assert getattr(settings, name).seeds == max(least, math.ceil(1000 / n_test)), (name, n_test)
    assert bench.plan(["breast_cancer"], SimpleNamespace(seeds=2, first_seed=0, bench=settings)) == [
        ("breast_cancer", 0), ("breast_cancer", 1)]


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


def test_bad_flags_and_settings_fail_before_any_run(tmp_path, capsys):
    """Bad flags exit 2; a bad settings file -- a misspelt key, a value out of range, a trial setting
    the trial would refuse -- is a one-line error naming the key, before any run."""
    assert bench.main(["--datasets", "iris", "--out", str(tmp_path)]) == 2
    assert "unknown data set 'iris'" in capsys.readouterr().err
    assert bench.main(["--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert bench.main(["--methods", "DR+SCANN", "--datasets", "mnist5k", "--out", str(tmp_path)]) == 2
    assert "DR+SCANN does not run on mnist5k" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--methods"):
        bench.main(["--methods", "SCANN,MLP", "--out", str(tmp_path)])
    assert bench._methods("dr+scann") == ["DR+SCANN"]
    bad = {
        "digits.scann.epochs_per_opp": (40, "unknown config key 'digits.scann.epochs_per_opp' "
                                            "\\(did you mean 'epochs_per_op'\\?\\)"),
        "digits.scann.recovery": ("linear", "digits.scann.recovery: 'linear' is not one of"),
        "mnist5k.dr_scann": ({"keep": [0.5]}, "mnist5k.dr_scann: DR\\+SCANN does not run on mnist5k"),
        "digits.dr_scann.epochs_per_op": (0, "digits.dr_scann: epochs_per_op must be >= 1"),
        "breast_cancer.scann.weight_decay": (-1.0, "breast_cancer.scann: need finite lr > 0, finite weight_decay"),
        "breast_cancer.dr_scann.dr_select": ("smallest", "breast_cancer.dr_scann.dr_select: 'smallest' is not one of"),
        "breast_cancer.dr_scann.dr_methods": (["pca", "tsne"], "unknown DR method 'tsne'"),
        "breast_cancer.scann.keep": ([0.5, 1.5], "prune_keep_schedule must be in"),
        "reference_trainings": (0, "reference_trainings must be >= 1"),
        "breast_cancer.seeds": (None, "breast_cancer: .*missing .*'seeds'"),
    }
    for key, (value, match) in bad.items():
        path = settings_file(tmp_path, **{key: value})
        with pytest.raises(SystemExit, match=f"^error: --settings {path}: .*{match}") as info:
            bench.main(["--settings", path, "--out", str(tmp_path)])
        assert "\n" not in str(info.value), key
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(SystemExit, match="expected a mapping"):
        bench.main(["--settings", str(tmp_path / "list.yml"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--settings .*missing.yml"):
        bench.main(["--settings", str(tmp_path / "missing.yml"), "--out", str(tmp_path)])
    assert not (tmp_path / "scann_runs").exists()


def fake_trial(seen=None, accs=None):
    """A stand-in for the trial: records its config, writes what the benchmark reads."""
    import json

    def trial(cfg, run_dir):
        if seen is not None:
            seen.append(dict(cfg))
        acc = 0.97 if accs is None else accs(cfg)
        run_dir.mkdir(parents=True)
        (run_dir / "arch.json").write_text(json.dumps({"baseline_hidden": [24]}))
        pd.DataFrame({"iteration": [0, 1], "params": [200, 100], "test_acc": [0.97, acc],
                      "val_acc": [0.98, 0.98]}).to_csv(run_dir / "structure.csv")
        return {"baseline_params": 1000, "params": 100, "baseline_test_acc": 0.97, "test_acc": acc,
                "baseline_val_acc": 0.98, "val_acc": 0.98, "connections": 90, "total_compression_ratio": 10.0,
                "flops": 1, "baseline_flops": 10, "depth": 1, "neurons": 5, "mc_met": True, "selection_acc": None,
                "select_folds": cfg.get("select_folds", 0), "dr_method": "pca", "dr_ratio": 0.5}

    return trial


def test_each_method_gets_its_own_settings_and_dr_scann_reuses_the_baseline(tmp_path, monkeypatch):
    """Each (data set, method) entry of the settings reaches that pair's trials only."""
    seen = []
    monkeypatch.setattr(bench, "_trial", fake_trial(seen))
    args = bench._args(["--settings", settings_file(tmp_path, reference_trainings=1)])
    for name in ("digits", "breast_cancer"):
        rows = bench.run_dataset(name, 7, args, tmp_path / "a")
        assert [r["method"] for r in rows] == ["SCANN", "DR+SCANN"] and rows[0]["ratio"] == 10.0
    # the defaults: breast_cancer anneals each pruned size's recovery, digits DR+SCANN anneals and keeps
    # the last epoch
    assert [(c["recovery_schedule"], c["checkpoint_epochs"]) for c in seen] == [
        ("constant", True), ("cosine", False), ("cosine", True), ("cosine", True)]
    assert [c["epochs_per_op"] for c in seen] == [40, 80, 40, 40]  # digits DR+SCANN trains 80 epochs
    # breast_cancer's DR+SCANN runs start from the most compressed DR model that holds
    assert [c.get("dr_select") for c in seen] == [None, "best", None, "most_compressed"]
    assert [c.get("scann_weight_decay") for c in seen] == [None, None, 1e-3, None]  # breast_cancer SCANN only
    assert rows[0]["at_target"]["ratio"] == 10.0 and rows[0]["at_target"]["change_pt"] == 0.0
    assert "baseline_hidden" not in seen[0] and seen[1]["baseline_hidden"] == [24]
    assert seen[1]["dr_method"] == "search" and seen[1]["select_folds"] == args.bench.digits.select_folds == 8
    assert seen[0]["prune_keep_schedule"] == list(args.bench.digits.scann.keep) and seen[0]["iterations"] == 13
    seen.clear()  # a setting of one (data set, method) reaches that pair's runs only
    path = settings_file(tmp_path, reference_trainings=1, **{"digits.scann.weight_decay": 5e-4,
                                                             "digits.dr_scann.dr_select": "most_compressed",
                                                             "digits.dr_scann.epochs_per_op": 30})
    for name in ("digits", "breast_cancer"):
        bench.run_dataset(name, 7, bench._args(["--settings", path]), tmp_path / "b")
    assert [c.get("scann_weight_decay") for c in seen] == [5e-4, None, 1e-3, None]
    assert [c.get("dr_select") for c in seen] == [None, "most_compressed", None, "most_compressed"]
    assert [c["epochs_per_op"] for c in seen] == [40, 30, 40, 40]
    seen.clear()  # mnist5k: LeNet-5's epochs and the image schedule (8 iterations: the last size repeats)
    bench.run_dataset("mnist5k", 7, args, tmp_path / "c")
    assert len(seen) == 1 and seen[0]["iterations"] == 8 and len(seen[0]["prune_keep_schedule"]) == 8
    assert seen[0]["conv_epochs"] == 8 and seen[0]["epochs_per_op"] == 1 and "baseline_epochs" not in seen[0]


def test_the_10x_check_judges_against_the_mean_of_the_baseline_trainings(tmp_path, monkeypatch):
    """The reference is the mean test accuracy of reference_trainings trainings of the baseline
    architecture, computed once per (data set, seed) for both methods; the change against the run's
    own baseline network is kept beside it; mnist5k keeps its single network."""
    from experiments.methods import scann as trial_mod

    calls = []

    def fake_accs(cfg, hidden, trainings):
        calls.append((cfg.dataset, cfg.seed, tuple(hidden), trainings))
        return [0.97, 0.95, 0.96, 0.96][:trainings]

    def args(n):
        return bench._args(["--settings", settings_file(tmp_path, f"ref{n}.yml", reference_trainings=n)])

    monkeypatch.setattr(bench, "_trial", fake_trial(accs=lambda cfg: 0.96))
    monkeypatch.setattr(trial_mod, "baseline_test_accs", fake_accs)
    rows = bench.run_dataset("digits", 7, args(4), tmp_path / "a")
    assert calls == [("digits_flat", 7, (24,), 4)]  # once for SCANN and DR+SCANN
    for r in rows:
        assert r["reference"]["mean"] == pytest.approx(0.96) and r["reference"]["reproduces"]
        assert r["at_target"]["change_pt"] == pytest.approx(0.0)  # 0.96 against the mean 0.96
        assert r["at_target"]["change_single_pt"] == pytest.approx(-1.0)  # against the run's own 0.97
    s = bench.summarize(pd.DataFrame(rows))
    assert s["at_target_change_pt"].tolist() == pytest.approx([0.0, 0.0]) and s["target_met"].all()
    assert s["at_target_change_single_pt"].tolist() == pytest.approx([-1.0, -1.0])
    monkeypatch.setattr(trial_mod, "baseline_test_accs", lambda *a: [0.95, 0.97])
    rows = bench.run_dataset("digits", 8, args(2), tmp_path / "b")
    assert not rows[0]["reference"]["reproduces"]  # flagged, not silently used
    calls.clear()
    rows = bench.run_dataset("digits", 9, args(1), tmp_path / "c")
    assert calls == [] and rows[0]["reference"] is None and rows[0]["at_target"]["change_pt"] == pytest.approx(-1.0)
    calls.clear()
    assert bench.run_dataset("mnist5k", 9, args(4), tmp_path / "d")[0]["reference"] is None and calls == []


def test_pool_with_joins_earlier_runs_in_the_verdict(tmp_path, monkeypatch, capsys):
    """--pool-with adds an earlier result's runs of the same pairs to the verdict (this run's own
    summary is kept beside it); a missing file, a seed run twice or other method settings are
    refused before any run."""
    import json

    from experiments.methods import scann as trial_mod

    # the first result: -2 pt at 10x, the second: +0.5 pt
    monkeypatch.setattr(bench, "_trial", fake_trial(accs=lambda cfg: 0.95 if cfg["seed"] < 10 else 0.975))
    monkeypatch.setattr(trial_mod, "baseline_test_accs", lambda cfg, hidden, n: [0.97] * n)
    common = ["--datasets", "breast_cancer", "--methods", "SCANN", "--jobs", "1", "--seeds", "2"]
    assert bench.main(common + ["--out", str(tmp_path / "r1")]) == 0
    first = tmp_path / "r1" / "scann_compression.json"
    stored = json.loads(first.read_text())
    assert not stored["all_targets_met"]
    assert stored["settings"]["bench"]["breast_cancer"]["scann"]["recovery"] == "cosine"  # what it ran with
    assert bench.main(common + ["--first-seed", "10", "--out", str(tmp_path / "r2"), "--pool-with", str(first)]) == 0
    out = json.loads((tmp_path / "r2" / "scann_compression.json").read_text())
    assert out["summary"][0]["seeds"] == 2 and out["summary"][0]["target_met"]  # this run alone: +0.5
    pooled = out["summary_pooled"][0]
    assert pooled["seeds"] == 4 and pooled["at_target_change_pt"] == pytest.approx(-0.75)
    assert not out["all_targets_met"] and out["pooled_with"] == [str(first)]  # the verdict is the pooled one
    assert (tmp_path / "r2" / "scann_compression.png").stat().st_size > 0
    assert f"pooled with 2 runs of earlier rounds ({first};" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="seeds \\[0, 1\\] are also in this run"):
        bench.main(common + ["--out", str(tmp_path / "r3"), "--pool-with", str(first)])
    assert not (tmp_path / "r3" / "scann_runs").exists()  # refused before any run
    tolerance = settings_file(tmp_path, "tol.yml", tolerance=0.01)
    with pytest.raises(SystemExit, match="it ran breast_cancer SCANN with tolerance=0.005, this run with 0.01"):
        bench.main(common + ["--first-seed", "20", "--settings", tolerance, "--out", str(tmp_path / "r6"),
                             "--pool-with", str(first)])
    assert not (tmp_path / "r6" / "scann_runs").exists()
    other_pairs = settings_file(tmp_path, "other.yml", **{"digits.dr_scann.recovery": "constant",
                                                          "breast_cancer.dr_scann.epochs_per_op": 20})
    assert bench.main(common + ["--first-seed", "20", "--settings", other_pairs, "--out", str(tmp_path / "r7"),
                                "--pool-with", str(first)]) == 0  # other pairs' settings: breast_cancer SCANN pools
    with pytest.raises(SystemExit, match="no runs of this run's"):
        bench.main(common + ["--datasets", "digits", "--out", str(tmp_path / "r5"), "--pool-with", str(first)])
    with pytest.raises(SystemExit, match="--pool-with .*missing.json"):
        bench.main(common + ["--out", str(tmp_path / "r4"), "--pool-with", str(tmp_path / "missing.json")])
    assert not (tmp_path / "r4" / "scann_runs").exists()


RESULTS = Path(bench.__file__).parent / "results" / "scann"


def test_pool_with_reads_the_kept_results_flags_as_settings(tmp_path):
    """The kept results of rounds run with the old per-data-set flags are read as today's settings:
    round 8 (weight decay 1e-4 everywhere, constant DR+SCANN recovery) pools with a breast_cancer
    DR+SCANN run at its settings but not with a SCANN one; a flag newer than a file counts with the
    value it ran with (dr_select: best); rounds 10 and 11 ran today's breast_cancer SCANN and DR+SCANN
    settings."""
    path = str(RESULTS / "scann_round8.json")
    (_, runs, then), = bench._read_pool(path)
    assert then.breast_cancer.select_folds == 8 and then.reference_trainings == 8
    assert then.breast_cancer.scann.recovery == "cosine" and then.breast_cancer.scann.weight_decay is None
    assert (then.digits.dr_scann.recovery, then.digits.dr_scann.epochs_per_op) == ("cosine-last", 80)
    round8 = settings_file(tmp_path, "round8.yml", **{"breast_cancer.dr_scann.recovery": "constant",
                                                      "breast_cancer.dr_scann.dr_select": "best"})
    args = bench._args(["--settings", round8, "--methods", "DR+SCANN", "--first-seed", "2000"])
    bench._same_settings(path, then, args.bench, {("breast_cancer", "DR+SCANN")})
    with pytest.raises(SystemExit, match="it ran breast_cancer SCANN with scann_weight_decay=None, this run with 0.001"):
        bench._same_settings(path, then, args.bench, {("breast_cancer", "SCANN"), ("breast_cancer", "DR+SCANN")})
    pooled = bench._pooled_runs([(path, runs, then)], bench.plan(["breast_cancer"], args), args)
    assert len(pooled) == 9 and set(pooled["method"]) == {"DR+SCANN"}
    # today's breast_cancer DR+SCANN settings are not round 8's: it does not pool
    today = bench.load_settings()
    with pytest.raises(SystemExit, match="recovery_schedule='constant', this run with 'cosine'"):
        bench._same_settings(path, then, today, {("breast_cancer", "DR+SCANN")})
    with pytest.raises(SystemExit, match="dr_select='best', this run with 'most_compressed'"):
        bench._same_settings(path, then, bench.load_settings(settings_file(
            tmp_path, "constant.yml", **{"breast_cancer.dr_scann.recovery": "constant"})), {("breast_cancer", "DR+SCANN")})
    for n, pair in ((10, ("breast_cancer", "SCANN")), (11, ("breast_cancer", "DR+SCANN"))):
        later = str(RESULTS / f"scann_round{n}.json")
        bench._same_settings(later, bench._read_pool(later)[0][2], today, {pair})
