"""The survey comparison (issue #6): the trial runner's rows, the FLOPs target, resume, bad input,
the analysis table/plot and the benchmark's settings and verdict."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from experiments import trial
from experiments.methods import survey as survey_mod
from search_spaces import cost as costmodel
from search_spaces.growth_spaces import build_compact, full_arch, make_layout
from strategies import training as training_mod

REPO = Path(__file__).resolve().parents[1]
# allow_degenerate: the networks these tiny runs train learn nothing (exported anyway; the check: test_degenerate.py)
TINY = ["--dataset", "digits", "--limit", "160", "--image_size", "8", "--family", "resnet20",
        "--stage_blocks", "[1,1,1]", "--width", "0.25", "--epochs", "2", "--finetune_epochs", "1",
        "--batch_size", "32", "--progress", "false", "--threads", "1", "--allow_degenerate", "true"]
KEYS = {"default", "top1", "params", "flops", "target_flops", "target_deviation", "reached", "search_time_s",
        "train_time_s", "total_time_s", "train_flops", "baseline_flops", "baseline_params", "flops_ratio"}


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        trial.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


def _summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def _baseline_flops() -> int:
    lay = make_layout("resnet20", num_classes=10, in_channels=1, width=0.25, stage_blocks=(1, 1, 1), grow_layers=False)
    return costmodel.count_flops(build_compact(full_arch(lay)), (1, 8, 8))


@pytest.mark.parametrize("argv,needle", [
    (["--variant", "lasso"], "unknown variant 'lasso'"),
    (["--target_fraction", "1.5"], "target_fraction must be in (0, 1]"),
    (["--target_fraction", "0"], "target_fraction must be in (0, 1]"),
    (["--target_flops", "-5"], "target_flops must be > 0"),
    (["--target_flops", "1e12"], "must be in (0,"),
    (["--variant", "scann", "--dataset", "mnist5k"], "scann synthesises feed-forward networks"),
    (["--variant", "growth", "--method_options", "{strength: 2}"], "method_options apply to"),
    (["--epoks", "3"], "unknown config key 'epoks'"),
    (["--family", "resnet99"], "unknown family 'resnet99'"),
])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys, tmp_path):
    code, err = _run(["survey", *TINY, *argv, "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert needle.lower() in err[0].lower()


def test_target_resolution():
    cfg = survey_mod.SurveyTrialConfig(dataset="digits")
    assert survey_mod.resolve_target(cfg, 3000) == 1000
    cfg = survey_mod.SurveyTrialConfig(dataset="digits", target_flops=1234)
    assert survey_mod.resolve_target(cfg, 3000) == 1234


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("survey") / "baseline"
    assert trial.main(["survey", *TINY, "--variant", "baseline", "--run-dir", str(d)]) == 0
    return d


def test_baseline_row_and_run_folder(baseline_run):
    s = _summary(baseline_run)
    assert KEYS <= set(s)
    assert s["variant"] == "baseline" and s["group"] == "baseline" and s["source"] == "measured"
    full = _baseline_flops()
    assert s["flops"] == s["baseline_flops"] == full
    assert s["target_flops"] == round(full / 3)
    assert s["target_deviation"] == pytest.approx(full / s["target_flops"] - 1)
    with open(baseline_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["train"] * 3          # epochs + finetune_epochs, one network
    assert (baseline_run / "model.pt").exists() and (baseline_run / "arch.json").exists()
    for k in KEYS:
        assert isinstance(s[k], (int, float))


def test_growth_row_reaches_the_flops_budget(tmp_path):
    d = tmp_path / "growth"
    assert trial.main(["survey", *TINY, "--variant", "growth", "--run-dir", str(d)]) == 0
    s = _summary(d)
    assert s["group"] == "ours" and s["flops"] <= s["target_flops"] * 1.02
    assert s["reached"] == 1 and s["budget"] == pytest.approx(s["target_flops"] / s["baseline_flops"])
    assert (d / "structure.csv").exists()     # growth's own files are in the same folder


def test_interrupted_baseline_resumes_to_the_same_result(baseline_run, tmp_path, monkeypatch):
    d = tmp_path / "run"
    original = training_mod.train_epoch
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*a, **k)

    monkeypatch.setattr(training_mod, "train_epoch", flaky)
    with pytest.raises(KeyboardInterrupt):
        trial.main(["survey", *TINY, "--variant", "baseline", "--run-dir", str(d)])
    assert (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()
    monkeypatch.undo()
    assert trial.main(["survey", *TINY, "--variant", "baseline", "--run-dir", str(d)]) == 0
    a, b = _summary(d), _summary(baseline_run)
    assert a["top1"] == b["top1"] and a["flops"] == b["flops"]
    with open(d / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]


# ---- analysis ------------------------------------------------------------------------------------
def _fake_run(root: Path, variant: str, top1: float, flops: float, group: str, source="measured", comparable=1,
              seed=0) -> Path:
    d = root / f"{variant}_{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"method": "survey", "config": {"variant": variant, "seed": seed,
                                                                             "dataset": "digits"}, "seed": seed}))
    s = {"method": "survey", "default": top1, "top1": top1, "flops": flops, "params": flops / 10,
         "target_flops": 1e6, "target_deviation": flops / 1e6 - 1, "reached": int(flops <= 1.02e6),
         "search_time_s": 1.0, "train_time_s": 2.0, "total_time_s": 3.0, "train_flops": 0, "variant": variant,
         "group": group, "source": source, "dataset": "digits", "comparable": comparable}
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_analysis_table_plot_and_cli(tmp_path, capsys):
    from analysis.__main__ import main as analysis_main
    from analysis.survey import survey_table

    root = tmp_path / "exp"
    _fake_run(root, "baseline", 0.95, 3e6, "baseline")
    _fake_run(root, "morphnet", 0.90, 1.0e6, "survey")
    _fake_run(root, "group_lasso", 0.88, 0.9e6, "survey")
    _fake_run(root, "growth", 0.92, 0.95e6, "ours")
    _fake_run(root, "growth", 0.94, 0.97e6, "ours", seed=1)
    _fake_run(root, "gensynth", 0.916, 44.658e6, "survey", source="published", comparable=0)
    t = survey_table(sorted(root.iterdir()))
    assert list(t["variant"]) == ["baseline", "group_lasso", "morphnet", "gensynth", "growth"]
    g = t.set_index("variant").loc["growth"]
    assert g["n"] == 2 and g["top1_%"] == pytest.approx(93.0) and g["from_target_%"] == pytest.approx(-4.0)
    assert t.set_index("variant").loc["baseline", "from_target_%"] == pytest.approx(200.0)
    assert analysis_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "Survey table" in out and "MorphNet" in out and "Generative Synthesis" in out
    assert (root / "analysis" / "survey_table.csv").exists()
    png = root / "analysis" / "survey.png"
    assert png.exists() and png.stat().st_size > 10_000


# ---- benchmark helpers ----------------------------------------------------------------------------
def test_bench_reads_the_nnictl_configs_settings():
    from bench.compact_survey import demo_settings

    settings, variants = demo_settings(REPO / "experiments/configs/compact_survey_demo.yml")
    assert "scann" in variants and "baseline" in variants and len(variants) == len(set(variants))
    cfg = survey_mod.SurveyTrialConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    assert cfg.dataset == "digits" and cfg.device == "cpu"
    for name, dataset, blocks, survey_name in (("compact_survey.yml", "cifar10", (5, 5, 5), "resnet32"),
                                               ("compact_survey_cifar100.yml", "cifar100", (8, 8, 8), "resnet50")):
        path = REPO / "experiments/configs" / name
        full = yaml.safe_load(path.read_text())
        assert set(full["searchSpace"]["variant"]["_value"]) == set(survey_mod.VARIANTS) - {"scann"}
        assert full["maxTrialNumber"] == len(full["searchSpace"]["variant"]["_value"])
        opts, _ = demo_settings(path)
        opts["data_dir"] = "/data"
        cfg = survey_mod.SurveyTrialConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
        assert (cfg.dataset, cfg.stage_blocks, cfg.target_fraction) == (dataset, blocks, pytest.approx(1 / 3))
        assert survey_mod._baseline_name(cfg) == survey_name     # the survey's published rows apply


def test_bench_verdict(tmp_path):
    from analysis.survey import survey_table
    from bench.compact_survey import verdict

    root = tmp_path / "exp"
    _fake_run(root, "morphnet", 0.90, 1.0e6, "survey")
    _fake_run(root, "variational_dropout", 0.85, 0.8e6, "survey")
    _fake_run(root, "growth", 0.91, 0.99e6, "ours")
    _fake_run(root, "proxyless", 0.95, 1.5e6, "ours")     # more accurate, but more FLOPs: does not count
    v = verdict(survey_table(sorted(root.iterdir())))
    assert v["best_baseline"] == "morphnet"
    assert v["conv"]["met"] and v["conv"]["winners"] == ["growth"]
    root2 = tmp_path / "exp2"
    _fake_run(root2, "morphnet", 0.90, 1.0e6, "survey")
    _fake_run(root2, "growth", 0.89, 0.5e6, "ours")
    assert not verdict(survey_table(sorted(root2.iterdir())))["conv"]["met"]


# ---- every measured variant end to end (tiny) -----------------------------------------------------
@pytest.mark.parametrize("variant,final_phase", [
    ("group_lasso", "finetune"),
    ("morphnet", "retrain"),             # MorphNet's expanded network is trained from scratch
    ("variational_dropout", "finetune"),
    ("proxyless", "retrain"),
    ("epnas", "retrain"),
])
def test_variant_rows(variant, final_phase, tmp_path):
    d = tmp_path / variant
    extra = ["--epnas_episodes", "1", "--epnas_branches", "2", "--epnas_steps", "1", "--epnas_proxy_epochs", "1",
             "--epnas_max_layers", "4"] if variant == "epnas" else []
    assert trial.main(["survey", *TINY, "--variant", variant, *extra, "--run-dir", str(d)]) == 0
    s = _summary(d)
    assert KEYS <= set(s) and s["variant"] == variant and s["method"] == "survey"
    assert s["group"] == ("ours" if variant in survey_mod.OURS else "survey")
    # the exported network is what was measured: its FLOPs and the target's distance agree
    assert s["target_deviation"] == pytest.approx(s["flops"] / s["target_flops"] - 1)
    assert s["reached"] == int(s["flops"] <= 1.02 * s["target_flops"])
    if variant in ("group_lasso", "morphnet", "variational_dropout", "proxyless"):
        import torch

        arch = json.loads((d / "arch.json").read_text())
        net = build_compact(arch)
        net.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        assert costmodel.count_flops(net, (1, 8, 8)) == s["flops"]
    with open(d / "metrics.csv") as f:
        phases = [r["phase"] for r in csv.DictReader(f)]
    assert phases[-1] == final_phase
    n_final = sum(p == final_phase for p in phases)
    assert n_final == (3 if final_phase == "retrain" else 1)   # from scratch: epochs + finetune_epochs


def test_gensynth_row_is_published_and_marked(tmp_path):
    d = tmp_path / "gensynth"
    assert trial.main(["survey", *TINY, "--variant", "gensynth", "--run-dir", str(d)]) == 0
    s = _summary(d)
    assert s["source"] == "published" and s["comparable"] == 0 and s["measured"] == 0
    # the web UI's measured columns hold nothing of another data set: the published numbers have their own keys
    assert s["default"] == 0 and s["top1"] == 0 and s["flops"] == 0 and s["reached"] == 0
    assert s["published_top1"] == pytest.approx(0.916) and s["published_flops"] == pytest.approx(44.658e6)
    # the distance is the survey's own (its ResNet-32 baseline, 144.369 MFLOPs / 3), not a made-up 0
    assert s["published_target_deviation"] == pytest.approx(44.658 / (144.369 / 3) - 1)
    assert "cifar10/resnet32" in s["notes"] and s["search_time_s"] == 0
    assert not (d / "model.pt").exists() and s["onnx_ok"] == 0
    # the analysis table still lists the published row, marked published
    from analysis.survey import survey_table

    row = survey_table([d]).set_index("variant").loc["gensynth"]
    assert row["source"] == "published" and row["top1_%"] == pytest.approx(91.6) and row["reached"] == 1


@pytest.mark.parametrize("variant", ["proxyless", "epnas"])
def test_unreachable_target_is_reported_in_the_row_not_a_crash(variant, tmp_path):
    d = tmp_path / variant
    extra = ["--epnas_episodes", "1", "--epnas_branches", "2", "--epnas_steps", "1", "--epnas_proxy_epochs", "1",
             "--epnas_max_layers", "4"] if variant == "epnas" else []
    argv = ["survey", *TINY, "--variant", variant, *extra, "--target_flops", "100", "--epochs", "1",
            "--finetune_epochs", "0", "--run-dir", str(d)]
    assert trial.main(argv) == 0
    s = _summary(d)
    assert s["reached"] == 0 and s["target_deviation"] > 1 and s["target_flops"] == 100
    assert ("cheapest" in s["notes"]) if variant == "proxyless" else ("unsatisfiable" in s["notes"] or
                                                                       "no feasible" in s["notes"])


def test_proxyless_ratios_are_checked_by_the_space(capsys, tmp_path):
    code, err = _run(["survey", *TINY, "--variant", "proxyless", "--proxyless_ratios", "[0.5, 1.0]",
                      "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and "ratio" in err[0].lower()


@pytest.mark.parametrize("variant", ["morphnet", "variational_dropout"])
def test_interrupted_compressor_search_resumes_to_the_same_result(variant, tmp_path, monkeypatch):
    from strategies import survey as baselines

    argv = ["survey", *TINY, "--variant", variant, "--epochs", "3"]
    ref = tmp_path / "ref"
    assert trial.main([*argv, "--run-dir", str(ref)]) == 0
    cls = baselines.COMPRESSORS[variant]
    original = cls.train_epoch

    def flaky(self, epoch, *a, **k):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, epoch, *a, **k)

    monkeypatch.setattr(cls, "train_epoch", flaky)
    d = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trial.main([*argv, "--run-dir", str(d)])
    assert (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()
    monkeypatch.undo()
    assert trial.main([*argv, "--run-dir", str(d)]) == 0
    a, b = _summary(d), _summary(ref)
    assert (a["top1"], a["flops"], a["params"]) == (b["top1"], b["flops"], b["params"])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time_s", "cpu_time_s", "time")} for r in rows]  # noqa: E731
    with open(d / "metrics.csv") as f, open(ref / "metrics.csv") as g:
        got, want = strip(csv.DictReader(f)), strip(csv.DictReader(g))
    assert got == want                        # every epoch's figures, not only the end result
    final = "retrain" if variant == "morphnet" else "finetune"
    assert [(r["phase"], r["epoch"]) for r in got][:3] == [("search", "0"), ("search", "1"), ("search", "2")]
    assert got[-1]["phase"] == final


def test_analysis_keeps_data_sets_apart(tmp_path):
    from analysis.survey import report_study, survey_table

    root = tmp_path / "exp"
    _fake_run(root, "baseline", 0.95, 3e6, "baseline")
    d = _fake_run(root, "baseline", 0.90, 9e6, "baseline", seed=1)
    for name in ("summary.json",):
        s = json.loads((d / name).read_text())
        s["dataset"] = "mnist5k"
        (d / name).write_text(json.dumps(s))
    runs = sorted(root.iterdir())
    with pytest.raises(ValueError, match="several data sets"):
        survey_table(runs)
    res = report_study(runs, tmp_path / "out")
    assert sorted(p.name for p in res.files) == ["survey_digits.png", "survey_mnist5k.png",
                                                 "survey_table_digits.csv", "survey_table_mnist5k.csv"]
    assert survey_table(runs, dataset="mnist5k")["top1_%"].tolist() == [pytest.approx(90.0)]
