"""Benchmark: compression ratio of SCANN and DR+SCANN against the fully connected baseline.

Run ``python -m bench.scann_compression`` from the repository root (``--help`` for the flags;
``--seeds 1`` for a quick look).  Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt`` (Tables III
and VII).  One run per data set, method and seed (data split), side by side:

* ``digits`` (scikit-learn's 8x8 digits as 64 tabular features, ``digits_flat``) and
  ``breast_cancer``: the baseline is the best-validation MLP of the trial's grid; **SCANN**
  synthesises from the original features; **DR+SCANN** first runs Algorithm 1 (each DR model = the
  baseline with every layer shrunk by the ratio), then SCANN on the reduced data, seeded from the
  chosen DR model.
* ``mnist5k`` (embedded 5,000-image MNIST) with LeNet-5 (Caffe): SCANN synthesises the fully
  connected part on the fixed convolutional features; the ratio is that of the fully connected
  part (the part SCANN changes; the whole network's ratio is printed too).  DR+SCANN is not run
  on images: the paper applies DR to non-image data only (Sec. 3.1).

What each (data set, method) runs with -- keep schedule, epochs, recovery, weight decay, Algorithm
1's settings, cross-validation, seeds -- is data: the settings file (``--settings``, default
``bench/scann_compression.yml`` next to this module), read into :class:`BenchSettings`.  Every run
prunes "iteratively to the final size" along a decreasing keep schedule, so one run visits a range
of sizes, and exports its **most compressed checkpoint within the tolerance** of the baseline's
accuracy on training data only (the paper's "M.C." network): on the validation split, or where that
split is too small to resolve the tolerance (``select_folds``), on the accuracy pooled over a
cross-validation of the training + validation data (``select_folds`` of the trial,
:mod:`experiments.methods.scann`).

Verdict.  A (data set, method) meets the target when every seed's run reaches >= 10x and the mean
test-accuracy change of each run's least compressed >= 10x network -- picked by its size alone from
the run's pruning trajectory (the trial's ``select=min_ratio`` rule) -- is >= -0.5 points.  On the
tabular sets the reference is the mean test accuracy of ``reference_trainings`` trainings of the
baseline architecture on the run's split (the change against the run's own baseline network is
printed and stored beside it).  The M.C. networks are reported beside it with their own rule
(geometric-mean ratio >= 10x, mean change >= -0.5 points: ``mc_target_met``), as is the ratio one
would report if the choice were made on the test split (reference only).  ``--pool-with`` adds the
runs of earlier results of the same (data set, method) pairs to the verdict; it refuses a file
whose runs had other settings or share a seed with this run.

Results worth keeping, and the history of the protocol and of every setting:
``bench/results/scann/`` (``NOTES.md``).  Time (2 CPU cores, ``--jobs 2``, 1 torch thread per run):
about 2 hours for the default settings (digits 8, breast_cancer 18, mnist5k 3 seeds).

Writes ``bench/out/scann_compression.json`` and ``.png`` and the run folders under
``bench/out/scann_runs/`` (``python -m analysis bench/out/scann_runs`` makes the paper's tables).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.config import build_config  # noqa: E402
from experiments.errors import UserError  # noqa: E402

TARGET_RATIO = 10.0
TARGET_DROP = 0.005  # accuracy within 0.5 points
#: The benchmark's data set names and the trial's.
DATASETS = {"digits": "digits_flat", "breast_cancer": "breast_cancer", "mnist5k": "mnist5k"}
#: Methods and the settings entry of each.
METHODS = {"SCANN": "scann", "DR+SCANN": "dr_scann"}
DEFAULT_SETTINGS = Path(__file__).with_name("scann_compression.yml")
#: ``recovery`` values: (the trial's ``recovery_schedule``, its ``checkpoint_epochs``).
RECOVERY = {"constant": ("constant", True), "cosine": ("cosine", True), "cosine-last": ("cosine", False)}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class ScannRun:
    """One (data set, method)'s trial settings (see the settings file's header)."""

    keep: tuple[float, ...]
    iterations: int | None = None
    epochs_per_op: int = 40
    recovery: Literal["constant", "cosine", "cosine-last"] = "constant"
    weight_decay: float | None = None
    baseline_epochs: int = 100
    conv_epochs: int = 8

    def __post_init__(self):
        if not self.keep:
            raise UserError("keep needs at least one share")
        if self.iterations is not None and self.iterations < 0:
            raise UserError(f"iterations must be >= 0, got {self.iterations}")
        if self.epochs_per_op < 1:
            raise UserError(f"epochs_per_op must be >= 1, got {self.epochs_per_op}")

    def schedule(self) -> tuple[int, list[float]]:
        """``(iterations, keep schedule)``: by default one iteration per keep value after the first."""
        if self.iterations is None:
            return len(self.keep) - 1, list(self.keep)
        return self.iterations, list(self.keep[: self.iterations + 1])


@dataclass(frozen=True, kw_only=True)
class DrScannRun(ScannRun):
    """A DR+SCANN entry: also Algorithm 1's methods (``()``: every inductive one), ratios and choice."""

    dr_methods: tuple[str, ...] = ("pca", "fa", "ica", "rp_gaussian")
    dr_ratios: tuple[float, ...] = (0.75, 0.5, 0.25)
    dr_select: Literal["best", "most_compressed"] = "best"


@dataclass(frozen=True, kw_only=True)
class DatasetSettings:
    """One data set's entry: its seeds, cross-validated size choice and the methods' settings."""

    seeds: int
    select_folds: int = 0
    scann: ScannRun | None = None
    dr_scann: DrScannRun | None = None

    def __post_init__(self):
        if self.seeds < 1:
            raise UserError(f"seeds must be >= 1, got {self.seeds}")


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """The settings file: one :class:`DatasetSettings` per data set, and what all runs share."""

    scheme: Literal["A", "B", "C"] = "C"
    tolerance: float = TARGET_DROP
    reference_trainings: int = 8
    digits: DatasetSettings
    breast_cancer: DatasetSettings
    mnist5k: DatasetSettings

    def __post_init__(self):
        if self.reference_trainings < 1:
            raise UserError(f"reference_trainings must be >= 1, got {self.reference_trainings}")
        if self.mnist5k.dr_scann is not None:
            raise UserError("mnist5k.dr_scann: DR+SCANN does not run on mnist5k (the paper applies DR to "
                            "non-image data only)")

    def run(self, name: str, method: str) -> ScannRun | None:
        return getattr(getattr(self, name), METHODS[method])


def trial_config(settings: BenchSettings, name: str, method: str, seed: int, threads: int = 1) -> dict[str, Any]:
    """The trial config (``ScannTrialConfig`` keys) of ``method`` on data set ``name`` at ``seed``."""
    ds, run = getattr(settings, name), settings.run(name, method)
    iterations, keep = run.schedule()
    schedule, checkpoint_epochs = RECOVERY[run.recovery]
    cfg: dict[str, Any] = dict(dataset=DATASETS[name], seed=seed, scheme=settings.scheme, select="most_compressed",
                               tolerance=settings.tolerance, threads=threads, device="cpu", progress=False,
                               iterations=iterations, prune_keep_schedule=keep, epochs_per_op=run.epochs_per_op,
                               recovery_schedule=schedule, checkpoint_epochs=checkpoint_epochs)
    if ds.select_folds:
        cfg["select_folds"] = ds.select_folds
    if name == "mnist5k":
        cfg["conv_epochs"] = run.conv_epochs
    else:
        cfg["baseline_epochs"] = run.baseline_epochs
    if run.weight_decay is not None:
        cfg["scann_weight_decay"] = run.weight_decay
    if isinstance(run, DrScannRun):
        cfg.update(dr_method="search", dr_methods=list(run.dr_methods), dr_ratios=list(run.dr_ratios),
                   dr_select=run.dr_select)
    return cfg


def _pair_settings(settings: BenchSettings, name: str, method: str) -> dict[str, Any]:
    """What the runs of one (data set, method) ran with: their trial config but for the seed and the
    machine, and the 10x check's reference trainings (tabular)."""
    cfg = {k: v for k, v in trial_config(settings, name, method, 0).items()
           if k not in ("seed", "threads", "device", "progress")}
    if name != "mnist5k":
        cfg["reference_trainings"] = settings.reference_trainings
    return cfg


def _located(data: dict[str, Any], error: UserError) -> UserError:
    """``error`` naming the entry it comes from: a range check names its field only."""
    pieces = [(f"{name}.{key}", cls, data[name][key]) for name in DATASETS if isinstance(data.get(name), dict)
              for key, cls in (("scann", ScannRun), ("dr_scann", DrScannRun)) if isinstance(data[name].get(key), dict)]
    pieces += [(name, DatasetSettings, {k: v for k, v in data[name].items() if k not in ("scann", "dr_scann")})
               for name in DATASETS if isinstance(data.get(name), dict)]
    for where, cls, entry in pieces:
        try:
            build_config(cls, entry, prefix=f"{where}.")
        except UserError as e:
            return e if str(e).startswith(where) or f"'{where}." in str(e) else UserError(f"{where}: {e}")
    return error


def load_settings(path: str | os.PathLike = DEFAULT_SETTINGS) -> BenchSettings:
    """The settings file ``path`` (YAML); a bad file or value is a one-line error naming it."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise UserError("expected a mapping of settings")
        try:
            settings = build_config(BenchSettings, data)
        except UserError as e:
            raise _located(data, e) from None
    except (OSError, yaml.YAMLError, UserError) as e:
        raise SystemExit(f"error: --settings {path}: {str(e).splitlines()[0]}") from None
    for name in DATASETS:  # every trial config the file asks for is valid, before any run
        for method in METHODS:
            if settings.run(name, method) is not None:
                from experiments.methods.scann import ScannTrialConfig

                try:
                    build_config(ScannTrialConfig, trial_config(settings, name, method, 0))
                except UserError as e:
                    raise SystemExit(f"error: --settings {path}: {name}.{METHODS[method]}: {e}") from None
    return settings


#: Settings of rounds run before the settings file (flags ``--select-folds`` ... in their JSON):
#: the keep schedules they ran with, and the value of each flag a file predates.
_FLAG_KEEP = {"tabular": (0.4, 0.3, 0.22, 0.17, 0.13, 0.1, 0.085, 0.07, 0.06, 0.05, 0.04, 0.033, 0.027, 0.022),
              "dr": (0.8, 0.65, 0.5, 0.4, 0.3, 0.22, 0.17, 0.13, 0.1, 0.085, 0.07, 0.06, 0.05, 0.04),
              "image": (0.1, 0.06, 0.04, 0.03, 0.023, 0.015, 0.01, 0.007)}
_FLAG_BEFORE = {"reference_trainings": 1, "scann_weight_decay": "", "dr_select": ""}


def _settings_from_flags(flags: dict[str, Any], seeds: dict[str, int]) -> BenchSettings:
    """An older result file's settings (its flags, ``name=value,...`` lists per data set) as today's
    :class:`BenchSettings`; ``seeds``: its number of seeds per data set."""
    flags = {**_FLAG_BEFORE, **flags}

    def per_dataset(key: str) -> dict[str, str]:
        return dict(item.split("=", 1) for item in str(flags.get(key) or "").split(",") if item)

    folds, recovery, dr_recovery = per_dataset("select_folds"), per_dataset("scann_recovery"), \
        per_dataset("dr_scann_recovery")
    decay, dr_epochs, dr_select = per_dataset("scann_weight_decay"), per_dataset("dr_scann_epochs"), \
        per_dataset("dr_select")
    its = flags.get("iterations")
    methods = "" if flags["dr_methods"] == "all" else flags["dr_methods"]
    out: dict[str, Any] = {}
    for name in DATASETS:
        entry: dict[str, Any] = {"seeds": max(1, seeds.get(name, 1)), "select_folds": int(folds.get(name, 0))}
        if name == "mnist5k":
            entry["scann"] = dict(keep=_FLAG_KEEP["image"], iterations=8 if its is None else its,
                                  epochs_per_op=flags["image_epochs_per_op"], conv_epochs=flags["conv_epochs"])
        else:
            common = dict(iterations=its, baseline_epochs=flags["baseline_epochs"])
            entry["scann"] = dict(common, keep=_FLAG_KEEP["tabular"], epochs_per_op=flags["epochs_per_op"],
                                  recovery=recovery.get(name, "constant"),
                                  weight_decay=float(decay[name]) if name in decay else None)
            entry["dr_scann"] = dict(common, keep=_FLAG_KEEP["dr"],
                                     epochs_per_op=int(dr_epochs.get(name, flags["epochs_per_op"])),
                                     recovery=dr_recovery.get(name, "constant"), dr_select=dr_select.get(name, "best"),
                                     dr_methods=[m for m in methods.split(",") if m],
                                     dr_ratios=[float(r) for r in flags["dr_ratios"].split(",")])
        out[name] = entry
    return build_config(BenchSettings, dict(scheme=flags["scheme"], tolerance=flags["tolerance"],
                                            reference_trainings=flags["reference_trainings"], **out))


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.scann_compression", description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=str(DEFAULT_SETTINGS),
                   help="the settings file: what each (data set, method)'s trials run with (YAML)")
    p.add_argument("--datasets", default="digits,breast_cancer,mnist5k", help="comma list of: " + ", ".join(DATASETS))
    p.add_argument("--methods", default="SCANN,DR+SCANN",
                   help="comma list of SCANN, DR+SCANN (DR+SCANN alone searches the baseline grid itself: the same "
                        "winner, as training is seeded)")
    p.add_argument("--seeds", type=int, default=None,
                   help="this many seeds (data splits) per data set instead of the settings' (e.g. 1 for a quick look)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--jobs", type=int, default=2, help="(data set, seed) runs in parallel, each in its own process")
    p.add_argument("--pool-with", default="",
                   help="earlier results' scann_compression.json files (comma list): their runs of the same (data "
                        "set, method) pairs join this run's in the verdict; this run's own summary is kept too")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--resume", action="store_true",
                   help="keep earlier run folders (finished runs are reused, interrupted ones resume); "
                        "default: start clean, so results always come from the current code")
    args = p.parse_args(argv)
    args.bench = load_settings(args.settings)
    return args


def _methods(spec: str) -> list[str]:
    names = [m.strip().upper() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise SystemExit(f"error: --methods wants a comma list of SCANN, DR+SCANN, got {spec!r}")
    return names


# --------------------------------------------------------------------------- one (data set, seed)


def _trial(method_cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from experiments.harness import execute
    from experiments.methods.scann import ScannTrialConfig, run

    cfg = build_config(ScannTrialConfig, method_cfg)
    return execute("scann", cfg, run, run_dir)


def _sizes(run_dir: Path, summary: dict[str, Any]) -> tuple[pd.DataFrame, int, int]:
    """The run's ``structure.csv`` and the sizes its compression ratio is taken on
    (:func:`strategies.scann.compression_ratio`): ``(table, baseline params, fixed params)``; image
    mode: the baseline's fully connected part, the extractor's params fixed."""
    base = summary["baseline_params"]
    fixed = base - summary.get("baseline_fc_params", base) if summary.get("mode") == "image" else 0
    return pd.read_csv(run_dir / "structure.csv"), base - fixed, fixed


def _picked(row, base: int, fixed: int, **extra: Any) -> dict[str, Any]:
    from strategies.scann import compression_ratio

    return {"ratio": compression_ratio(int(row.params), base, fixed_params=fixed), "params": int(row.params) - fixed,
            "test_acc": float(row.test_acc), "iteration": int(row.iteration), **extra}


def _test_selected(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The most compressed iteration whose *test* accuracy is within 0.5 points (reference only)."""
    from strategies.scann import within_tolerance

    st, base, fixed = _sizes(run_dir, summary)
    ok = st[[within_tolerance(a, summary["baseline_test_acc"], TARGET_DROP) for a in st["test_acc"]]]
    if ok.empty:
        return {"ratio": None, "params": None, "test_acc": None}
    return _picked(ok.sort_values("params").iloc[0], base, fixed)


def _at_target(run_dir: Path, summary: dict[str, Any], reference: float | None = None) -> dict[str, Any]:
    """The network the trial's ``select=min_ratio`` exports at :data:`TARGET_RATIO`
    (:func:`strategies.scann.at_min_ratio`: the least compressed iteration >= the ratio, picked by its
    size alone; ties: validation accuracy) and its test accuracy change in points against
    ``reference`` (default: the run's baseline network; tabular: the mean of the reference
    trainings, see :func:`_reference`), and against the run's baseline network
    (``change_single_pt``); ``ratio`` None when no iteration reaches the target ratio."""
    from strategies.scann import at_min_ratio

    st, base, fixed = _sizes(run_dir, summary)
    row, reached = at_min_ratio(list(st.itertuples()), TARGET_RATIO, baseline_params=base, fixed_params=fixed)
    if not reached:
        return {"ratio": None, "params": None, "test_acc": None, "change_pt": None, "change_single_pt": None,
                "iteration": None}
    single = summary["baseline_test_acc"]
    return _picked(row, base, fixed, change_pt=100 * (float(row.test_acc) - (single if reference is None else reference)),
                   change_single_pt=100 * (float(row.test_acc) - single))


def _reference(cfg: dict[str, Any], hidden: list[int], summary: dict[str, Any], trainings: int) -> dict[str, Any]:
    """The reference test accuracy of a tabular run's baseline (hidden layers ``hidden``): the mean of
    ``trainings`` trainings of its architecture on the run's split with the trial's own recipe
    (:func:`experiments.methods.scann.baseline_test_accs`; the first is the run's baseline network
    itself, checked: ``reproduces``)."""
    from experiments.methods.scann import ScannTrialConfig, baseline_test_accs

    accs = baseline_test_accs(build_config(ScannTrialConfig, cfg), hidden, trainings)
    return {"hidden": hidden, "test_accs": accs, "mean": sum(accs) / len(accs),
            "reproduces": abs(accs[0] - summary["baseline_test_acc"]) < 1e-12}


def run_dataset(name: str, seed: int, args, out: Path) -> list[dict[str, Any]]:
    """SCANN then DR+SCANN (those of ``--methods`` the settings have an entry for) on one split."""
    settings: BenchSettings = args.bench
    methods = [m for m in _methods(args.methods) if settings.run(name, m) is not None]
    results = []
    baseline_hidden = reference = None
    for method in methods:
        cfg = trial_config(settings, name, method, seed, args.threads)
        if baseline_hidden is not None:  # same seed and grid winner: the same baseline, trained once more
            cfg["baseline_hidden"] = baseline_hidden
        run_dir = out / "scann_runs" / f"{name}_{method.replace('+', '_').lower()}_seed{seed}"
        t0 = time.time()
        s = _trial(cfg, run_dir)
        if name != "mnist5k":  # DR+SCANN (after SCANN) reuses it; the reference is computed once per seed
            baseline_hidden = json.loads((run_dir / "arch.json").read_text())["baseline_hidden"]
        if name != "mnist5k" and settings.reference_trainings > 1 and reference is None:
            reference = _reference(cfg, baseline_hidden, s, settings.reference_trainings)
            if not reference["reproduces"]:
                print(f"  note: {name} seed {seed}: the first reference training does not reproduce the run's "
                      "baseline network", flush=True)
        image = s.get("mode") == "image"
        base_params = s["baseline_fc_params"] if image else s["baseline_params"]
        params = s["fc_params"] if image else s["params"]
        drop = s["baseline_test_acc"] - s["test_acc"]
        ratio = base_params / max(1, params)
        results.append({
            "dataset": name, "method": method, "seed": seed, "run_dir": str(run_dir.relative_to(out)),
            "baseline_params": base_params, "baseline_test_acc": s["baseline_test_acc"],
            "baseline_val_acc": s["baseline_val_acc"], "params": params, "connections": s["connections"],
            "test_acc": s["test_acc"], "val_acc": s["val_acc"], "ratio": ratio, "acc_drop_points": 100 * drop,
            "whole_network_ratio": s["total_compression_ratio"], "flops": s["flops"],
            "baseline_flops": s["baseline_flops"], "depth": s["depth"], "neurons": s["neurons"],
            "met_on_validation": bool(s["mc_met"]), "select_folds": s.get("select_folds", 0),
            "selection_acc": s.get("selection_acc"), "selection_baseline_acc": s.get("selection_baseline_acc"),
            "dr_method": s["dr_method"], "dr_ratio": s["dr_ratio"],
            "dr_select": s.get("dr_select"), "dr_highest_method": s.get("dr_highest_method"),
            "dr_highest_ratio": s.get("dr_highest_ratio"),
            "target_ratio_met": ratio >= TARGET_RATIO, "target_accuracy_met": drop <= TARGET_DROP + 1e-9,
            "test_selected": _test_selected(run_dir, s),
            "at_target": _at_target(run_dir, s, None if reference is None else reference["mean"]),
            "reference": reference,
            "seconds": time.time() - t0, "trial_seconds": s.get("time_s"),
        })
        r = results[-1]
        at = r["at_target"]
        at_txt = f"at {at['ratio']:.1f}x {at['change_pt']:+.2f} pt" if at["ratio"] else f"never {TARGET_RATIO:.0f}x"
        if reference is not None:
            at_txt += f" vs the mean of {len(reference['test_accs'])} baselines {100 * reference['mean']:.2f}"
        print(f"  {name:14s} {method:9s} seed {seed}: {params:>7d} params ({ratio:5.1f}x), test "
              f"{100 * s['test_acc']:.2f} vs {100 * s['baseline_test_acc']:.2f} ({-r['acc_drop_points']:+.2f} pt); "
              f"{at_txt}{'  DR ' + s['dr_method'] + '@' + str(s['dr_ratio']) if method == 'DR+SCANN' else ''}"
              f"  [{r['seconds']:.0f} s]", flush=True)
    return results


def _plot(summary: pd.DataFrame, df: pd.DataFrame, path: Path) -> None:
    """Left, the verdict: per (data set, method) each seed's test-accuracy change at its least
    compressed >= 10x network (dots), their mean and 95 % interval, the -0.5-point line.  Right, the
    M.C. networks: bars = geometric-mean ratio, dots = each seed's ratio, labels = the M.C. rule."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.8), layout="constrained")
    ax_at, ax = fig.subplots(1, 2, width_ratios=[1, 1.3])
    _plot_at_target(ax_at, summary, df)
    labels = [f"{d}\n{m}" for d, m in zip(summary["dataset"], summary["method"])]
    colors = ["tab:blue" if m == "SCANN" else "tab:green" for m in summary["method"]]
    bars = ax.bar(range(len(summary)), summary["ratio_geomean"], color=colors, alpha=0.7)
    for k, (_, r) in enumerate(summary.iterrows()):
        g = df[(df["dataset"] == r["dataset"]) & (df["method"] == r["method"])]
        ok = (g["acc_drop_points"] <= 100 * TARGET_DROP + 1e-9).to_numpy()
        jitter = [k + 0.25 * (i / max(1, len(g) - 1) - 0.5) for i in range(len(g))]
        ax.scatter([x for x, o in zip(jitter, ok) if o], g["ratio"][ok], s=14, color="black", zorder=3,
                   label="one seed (test accuracy within 0.5 pt)" if k == 0 else None)
        ax.scatter([x for x, o in zip(jitter, ok) if not o], g["ratio"][~ok], s=16, marker="x", color="red", zorder=3,
                   label="one seed (test accuracy > 0.5 pt lower)" if k == 0 else None)
        ci = "" if math.isnan(r["drop_pt_ci95"]) else f" +-{r['drop_pt_ci95']:.2f}"
        b = bars[k]
        ax.annotate(f"{r['ratio_geomean']:.2f}x\n{-r['drop_pt']:+.2f}{ci} pt\n"
                    f"M.C. rule {'met' if r['mc_target_met'] else 'missed'}",
                    (b.get_x() + b.get_width() / 2, max(b.get_height(), g["ratio"].max())), ha="center",
                    va="bottom", fontsize=8)
    ax.axhline(TARGET_RATIO, color="red", ls="--", lw=1, label=f"target {TARGET_RATIO:.0f}x")
    ax.set_xticks(range(len(summary)), labels, fontsize=8)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("compression ratio vs FC baseline (params, log)")
    seeds = ", ".join(f"{d} {n}" for d, n in summary.groupby("dataset", sort=False)["seeds"].first().items())
    ax.set_title("M.C.: the exported network, most compressed within 0.5 pt (chosen on training data)\n"
                 f"bar = geometric mean over seeds ({seeds}),\nlabel = mean test-accuracy change (95% CI)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylim(1, max(TARGET_RATIO, df["ratio"].max()) * 6)
    fig.savefig(path, dpi=120)


def _plot_at_target(ax, summary: pd.DataFrame, df: pd.DataFrame) -> None:
    single_label = "one seed, vs its own baseline network"
    pooled_label = "one seed of an earlier round (--pool-with)"
    for k, (_, r) in enumerate(summary.iterrows()):
        g = df[(df["dataset"] == r["dataset"]) & (df["method"] == r["method"])]
        reached = [isinstance(a, dict) and bool(a.get("ratio")) for a in g["at_target"]]
        ch = [a["change_pt"] for a, ok in zip(g["at_target"], reached) if ok]
        xs = [k + 0.3 * (i / max(1, len(ch) - 1) - 0.5) for i in range(len(ch))]
        rounds = g["round"] if "round" in g else pd.Series([None] * len(g), index=g.index)
        earlier = [isinstance(r, str) for r, ok in zip(rounds, reached) if ok]  # --pool-with runs
        now = [not e for e in earlier]
        ax.scatter([x for x, n in zip(xs, now) if n], [c for c, n in zip(ch, now) if n], s=14, color="black",
                   zorder=3, label="one seed" if k == 0 else None)
        if any(earlier):
            ax.scatter([x for x, e in zip(xs, earlier) if e], [c for c, e in zip(ch, earlier) if e], s=18,
                       facecolors="none", edgecolors="black", zorder=3,
                       label=pooled_label)
            pooled_label = None
        if any(isinstance(x, dict) for x in g.get("reference", [])):  # tabular: also vs the run's own network
            single = [a["change_single_pt"] for a in g["at_target"] if isinstance(a, dict) and a.get("ratio")]
            ax.scatter(xs, single, s=14, marker="x", color="0.6", zorder=2, label=single_label)
            single_label = None
        if ch:
            m, ci = r["at_target_change_pt"], r["at_target_change_ci95"]
            ax.errorbar([k + 0.25], [m], yerr=None if math.isnan(ci) else [[ci], [ci]], fmt="D",
                        color="tab:green" if r["target_met"] else "tab:red", capsize=4, zorder=4,
                        label="mean, 95% interval" if k == 0 else None)
        ratios = f"{r['at_target_ratio_geomean']:.1f}x" if r["at_target_seeds"] else "never"
        ax.annotate(f"{ratios}\n{'met' if r['target_met'] else 'MISSED'}", (k, 1.02), xycoords=("data", "axes fraction"),
                    ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.axhline(-100 * TARGET_DROP, color="red", ls="--", lw=1, label=f"-{100 * TARGET_DROP:g} pt")
    ax.set_xticks(range(len(summary)), [f"{d}\n{m}" for d, m in zip(summary["dataset"], summary["method"])], fontsize=8)
    ax.set_xlim(-0.6, len(summary) - 0.4)
    ax.set_ylabel("test accuracy - reference (pt)\n(tabular: mean of the baseline's trainings)")
    ax.set_title(f"verdict: the least compressed >= {TARGET_RATIO:.0f}x network of each run\n"
                 "(chosen by its size alone; label: geometric-mean ratio, target)", fontsize=9, pad=28)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)  # below: hides no seed


def _unit(name: str, seed: int, args, out: Path) -> list[dict[str, Any]]:
    """One (data set, seed): SCANN then DR+SCANN, in a worker process of its own (``--jobs``)."""
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")
    return run_dataset(name, seed, args, out)


def geometric_mean(values) -> float:
    vals = [float(v) for v in values]
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _ci95(values: pd.Series) -> float:
    """Half-width of the 95 % t-interval of the mean (NaN for one value)."""
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (data set, method) over seeds.  The verdict (see the module docstring) is the **check at
    the target ratio**: every seed's run reaches >= 10x and the mean test accuracy change of its least
    compressed >= 10x network is >= -0.5 points (``target_met``).  The M.C. figures (the network each
    run exports: geometric-mean ratio, mean change) and their rule, geometric mean >= 10x and mean
    change >= -0.5 points, are kept (``mc_target_met``).  Also: the arithmetic mean and smallest ratio, the 95 % t-intervals of the
    mean changes, and the seeds meeting both M.C. targets alone."""
    rows = []
    for (ds, method), g in df.groupby(["dataset", "method"], sort=False):
        n = len(g)
        drop = g["acc_drop_points"]
        half = _ci95(drop)
        ok = (g["ratio"] >= TARGET_RATIO) & (g["acc_drop_points"] <= 100 * TARGET_DROP + 1e-9)
        test_sel = [r["ratio"] for r in g["test_selected"] if isinstance(r, dict) and r.get("ratio")]
        at = [r if isinstance(r, dict) else {} for r in g.get("at_target", pd.Series([None] * n))]
        reached = [r for r in at if r.get("ratio")]
        at_change = pd.Series([r["change_pt"] for r in reached], dtype=float)
        at_single = pd.Series([r.get("change_single_pt", r["change_pt"]) for r in reached], dtype=float)
        rows.append({
            "dataset": ds, "method": method, "seeds": n, "baseline_params": g["baseline_params"].mean(),
            "params": g["params"].mean(), "ratio_geomean": geometric_mean(g["ratio"]), "ratio_mean": g["ratio"].mean(),
            "ratio_min": g["ratio"].min(), "baseline_test": g["baseline_test_acc"].mean(), "test": g["test_acc"].mean(),
            "drop_pt": drop.mean(), "drop_pt_ci95": half, "drop_pt_max": drop.max(),
            "seeds_met": int(ok.sum()), "seeds_held": int(g["met_on_validation"].sum()),
            "test_selected_ratio_geomean": geometric_mean(test_sel) if len(test_sel) == n else float("nan"),
            "at_target_seeds": len(reached),
            "at_target_ratio_geomean": geometric_mean([r["ratio"] for r in reached]) if reached else float("nan"),
            "at_target_change_pt": at_change.mean() if reached else float("nan"),
            "at_target_change_ci95": _ci95(at_change) if reached else float("nan"),
            "at_target_change_single_pt": at_single.mean() if reached else float("nan"),
            "seconds": g["seconds"].sum(),
        })
    out = pd.DataFrame(rows)
    out["mc_target_met"] = (out["ratio_geomean"] >= TARGET_RATIO) & (out["drop_pt"] <= 100 * TARGET_DROP + 1e-9)
    out["target_met"] = (out["at_target_seeds"] == out["seeds"]) & \
        (out["at_target_change_pt"] >= -100 * TARGET_DROP - 1e-9)
    return out


def _print_summary(summary: pd.DataFrame, what: str) -> None:
    print()
    print(f"over seeds ({what}).  TARGET (verdict): every run reaches >= {TARGET_RATIO:.0f}x and its least compressed >= "
          f"{TARGET_RATIO:.0f}x network changes test accuracy by >= -{100 * TARGET_DROP:.1f} pt on average.  M.C.: "
          f"the exported network (geometric-mean ratio >= {TARGET_RATIO:.0f}x at >= -{100 * TARGET_DROP:.1f} pt mean "
          "change)")
    print("dataset         method    seeds | at target: ratio geo  change pt (95% CI)  TARGET  | M.C.: ratio geo  "
          "(mean, min)  test (baseline)  change pt (95% CI)  M.C. rule  seeds met  held | test-selected ratio")
    for _, r in summary.iterrows():
        ts = "-" if math.isnan(r["test_selected_ratio_geomean"]) else f"{r['test_selected_ratio_geomean']:.1f}x"
        ci = "" if math.isnan(r["drop_pt_ci95"]) else f" +-{r['drop_pt_ci95']:.2f}"
        aci = "" if math.isnan(r["at_target_change_ci95"]) else f" +-{r['at_target_change_ci95']:.2f}"
        at = (f"{r['at_target_ratio_geomean']:8.2f}x  {r['at_target_change_pt']:+6.2f}{aci:7s}"
              if r["at_target_seeds"] else f"{'never reached':>25s}")
        print(f"{r['dataset']:15s} {r['method']:9s} {r['seeds']:5d} |  {at}       {'met' if r['target_met'] else 'MISSED':7s}"
              f" | {r['ratio_geomean']:7.2f}x ({r['ratio_mean']:5.1f}x, {r['ratio_min']:4.1f}x) "
              f"{100 * r['test']:6.2f} ({100 * r['baseline_test']:6.2f}) {-r['drop_pt']:+6.2f}{ci:7s}      "
              f"{'met' if r['mc_target_met'] else 'missed':7s}  {r['seeds_met']:d}/{r['seeds']:d}        "
              f"{r['seeds_held']:d}/{r['seeds']:d} | {ts}")
    print("seeds met: seeds whose M.C. network meets both targets on its own; held: seeds on which some size held the "
          "baseline's accuracy on the selection data (validation, or k-fold cross-validation), else the best one "
          "was reported; test-selected: reference only")


# --------------------------------------------------------------------------- pooling with earlier results

PoolFile = tuple[str, list[dict[str, Any]], BenchSettings]


def _read_pool(paths: str) -> list[PoolFile]:
    """``--pool-with``: ``(path, runs, settings)`` of each earlier ``scann_compression.json`` (comma
    list), read before any run; a file from before the settings file has its flags mapped to
    :class:`BenchSettings` here, once.  A missing or malformed file is a one-line error."""
    out = []
    for path in filter(None, (p.strip() for p in paths.split(","))):
        try:
            data = json.loads(Path(path).read_text())
            runs, settings = data["runs"], data["settings"]
            if not isinstance(runs, list) or not all(isinstance(r, dict) and "at_target" in r for r in runs):
                raise ValueError("its runs lack the at-target figures")
            if "bench" in settings:
                bench = build_config(BenchSettings, settings["bench"])
            else:
                seeds = {n: len({r["seed"] for r in runs if r["dataset"] == n}) for n in DATASETS}
                bench = _settings_from_flags(settings, seeds)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError) as e:
            raise SystemExit(f"error: --pool-with {path}: not a readable scann_compression.json ({e})") from None
        out.append((path, runs, bench))
    return out


def _same_settings(path: str, then: BenchSettings, now: BenchSettings, pairs: set[tuple[str, str]]) -> None:
    """An earlier result pools only if it ran the pooled (data set, method) ``pairs`` as this run
    does (:func:`_pair_settings`); else a one-line error naming the first setting that differs."""
    for name, method in sorted(pairs):
        if then.run(name, method) is None:
            raise SystemExit(f"error: --pool-with {path}: it has no {name} {method} settings")
        a, b = _pair_settings(then, name, method), _pair_settings(now, name, method)
        for key in list(b) + [k for k in a if k not in b]:
            if a.get(key) != b.get(key):
                raise SystemExit(f"error: --pool-with {path}: it ran {name} {method} with {key}={a.get(key)!r}, "
                                 f"this run with {b.get(key)!r}; only runs with the same method settings pool")


def _pooled_runs(pool: list[PoolFile], units: list[tuple[str, int]], args) -> pd.DataFrame:
    """The runs of earlier results (:func:`_read_pool`) of the (data set, method) pairs this run runs
    (``units`` x ``--methods``), each marked with its file's path as ``round``; checked before any
    run.  They join this run's runs in the verdict.  A seed that this run also runs, a file with no
    runs of these pairs, or one whose method settings differ (:func:`_same_settings`) is a one-line
    error."""
    rows = []
    mine = {(n, m, seed) for n, seed in units for m in _methods(args.methods) if args.bench.run(n, m) is not None}
    pairs = {(n, m) for n, m, _ in mine}
    for path, runs, settings in pool:
        _same_settings(path, settings, args.bench, pairs)
        got = [{**r, "round": path} for r in runs if (r["dataset"], r["method"]) in pairs]
        if not got:
            raise SystemExit(f"error: --pool-with {path}: no runs of this run's (data set, method) pairs")
        again = sorted({r["seed"] for r in got if (r["dataset"], r["method"], r["seed"]) in mine})
        if again:
            raise SystemExit(f"error: --pool-with {path}: seeds {again} are also in this run")
        rows.extend(got)
    return pd.DataFrame(rows)


def plan(names: list[str], args) -> list[tuple[str, int]]:
    """The (data set, seed) runs: ``--seeds`` (or the settings') seeds from ``--first-seed``, slowest first."""
    order = {"digits": 0, "breast_cancer": 1, "mnist5k": 2}  # per-seed time: ~9, ~2.5, ~0.7 min
    units = [(n, args.first_seed + k) for n in names for k in range(args.seeds or getattr(args.bench, n).seeds)]
    return sorted(units, key=lambda u: (u[1] - args.first_seed, order[u[0]]))


def main(argv=None) -> int:
    args = _args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        print(f"error: unknown data set {unknown[0]!r}; valid: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    for flag, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            print(f"error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    methods = _methods(args.methods)
    names = [n for n in names if any(args.bench.run(n, m) is not None for m in methods)]
    if not names:
        print("error: the settings have no entry for --methods on --datasets (DR+SCANN does not run on mnist5k: "
              "the paper applies DR to non-image data only)", file=sys.stderr)
        return 2
    pool_files = _read_pool(args.pool_with)
    units = plan(names, args)
    pooled = _pooled_runs(pool_files, units, args)
    if not args.resume:
        import shutil

        shutil.rmtree(out / "scann_runs", ignore_errors=True)
    t0 = time.time()
    load0 = os.getloadavg()[0]
    print(f"SCANN compression benchmark ({args.settings}): scheme {args.bench.scheme}, {len(units)} (data set, seed) runs "
          f"from seed {args.first_seed} ({', '.join(f'{n} {sum(u[0] == n for u in units)}' for n in names)}), "
          f"{args.jobs} in parallel; target: each run's least compressed >= {TARGET_RATIO:.0f}x network within "
          f"{100 * TARGET_DROP:.1f} pt of the baseline's test accuracy on average over seeds", flush=True)
    rows: list[dict[str, Any]] = []
    if args.jobs == 1:
        for k, (name, seed) in enumerate(units, 1):
            rows.extend(_unit(name, seed, args, out))
            print(f"[{k}/{len(units)} done, {time.time() - t0:.0f} s]", flush=True)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_unit, name, seed, args, out): (name, seed) for name, seed in units}
            for k, fut in enumerate(as_completed(futures), 1):
                rows.extend(fut.result())  # a failed run stops the benchmark with its error
                print(f"[{k}/{len(units)} done, {time.time() - t0:.0f} s]", flush=True)
    rank = {u: i for i, u in enumerate(sorted(units, key=lambda u: (names.index(u[0]), u[1])))}
    rows.sort(key=lambda r: (rank[(r["dataset"], r["seed"])], r["method"] != "SCANN"))
    df = pd.DataFrame(rows)
    print()
    print("per seed:  dataset         method    seed  baseline params  params   ratio  test (baseline)  change pt  "
          "selection acc (baseline)        | at the target ratio")
    for _, r in df.iterrows():
        how = f"{r['select_folds']}-fold CV" if r["select_folds"] else "val"
        sel = "-" if r["selection_acc"] is None else \
            f"{100 * r['selection_acc']:.2f} ({100 * r['selection_baseline_acc']:.2f}) {how}"
        at = r["at_target"]
        at_txt = f"{at['ratio']:5.1f}x {at['change_pt']:+6.2f}" if at["ratio"] else "never reached"
        if at["ratio"] and r.get("reference"):
            at_txt += f" (vs its own baseline network {at['change_single_pt']:+6.2f})"
        print(f"           {r['dataset']:15s} {r['method']:9s} {r['seed']:4d} {r['baseline_params']:>15d} "
              f"{r['params']:>7d} {r['ratio']:6.1f}x {100 * r['test_acc']:6.2f} ({100 * r['baseline_test_acc']:6.2f}) "
              f"{-r['acc_drop_points']:+8.2f}  {sel:30s}  | {at_txt}"
              f"{'' if r['met_on_validation'] else '  (M.C.: no size held the accuracy, best one reported)'}")
    summary = summarize(df)
    print()
    _print_summary(summary, "this run")
    df_all = pd.concat([df, pooled], ignore_index=True) if len(pooled) else df
    summary_pooled = summarize(df_all) if len(pooled) else None
    if summary_pooled is not None:
        rounds = ", ".join(sorted({str(r) for r in pooled["round"]}))
        print(f"\npooled with {len(pooled)} runs of earlier rounds ({rounds}; --pool-with): the VERDICT")
        _print_summary(summary_pooled, "pooled")
    verdict = summary if summary_pooled is None else summary_pooled
    elapsed = time.time() - t0
    result = {
        "benchmark": "scann_compression",
        "targets": {"ratio_geomean": TARGET_RATIO, "max_mean_accuracy_drop_points": 100 * TARGET_DROP},
        "settings": {**{k: v for k, v in vars(args).items() if k != "bench"}, "bench": asdict(args.bench)},
        "runs": rows,
        "summary": summary.to_dict(orient="records"),
        "pooled_with": [path for path, _, _ in pool_files],
        "summary_pooled": None if summary_pooled is None else summary_pooled.to_dict(orient="records"),
        "all_targets_met": bool(verdict["target_met"].all()),
        "all_mc_targets_met": bool(verdict["mc_target_met"].all()),
        "seconds": elapsed,
        "trial_seconds_total": float(df["trial_seconds"].fillna(0).sum()),  # also for runs reused by --resume
        "load_average_1min": {"start": load0, "end": os.getloadavg()[0]},
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "jobs": args.jobs},
    }
    (out / "scann_compression.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    _plot(verdict, df_all, out / "scann_compression.png")
    print(f"\n{elapsed:.0f} s (the trials' own time: {df['trial_seconds'].fillna(0).sum():.0f} s); wrote "
          f"{out / 'scann_compression.json'} and {out / 'scann_compression.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
