"""analysis/: synthetic run folders with known trajectories -> exact convergence epochs,
Table I, valid PNGs, the CLI and the notebook (executed headless with the venv's Python)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402

import analysis  # noqa: E402
from analysis import proxyless  # noqa: E402

CHOICES = [f"k{k}_{a}" for k in (3, 5) for a in ("relu", "leakyrelu", "mish")]
SCOPE_BLOCKS = {"s": 3, "m": 9, "l": 13, "f": 16}
STEPS_PER_EPOCH = 10


# ---- synthetic run folders ------------------------------------------------------------------
def _alphas(winner: str | None, epoch: float) -> dict[str, float]:
    """alpha per candidate: ``winner`` clearly on top; None -> all zero (uniform tie)."""
    if winner is None:
        return {c: 0.0 for c in CHOICES}
    a = {c: -0.03 * i for i, c in enumerate(CHOICES)}
    a[winner] = 0.4 + 0.05 * epoch
    return a


def _softmax(a: dict[str, float]) -> dict[str, float]:
    m = max(a.values())
    e = {k: math.exp(v - m) for k, v in a.items()}
    s = sum(e.values())
    return {k: v / s for k, v in e.items()}


def plan_for(n_blocks: int, epochs: int, switch: int, wobble: bool = True) -> dict[str, list[str | None]]:
    """Per-epoch argmax of each block:
    block01: k5_mish before ``switch``, k3_relu from ``switch`` on   -> converges at ``switch``
    block02: uniform tie at epoch 0, then k3_relu                     -> converges at 1
    block03 (if ``wobble`` and ``epochs`` >= 8): A A B A A A B B      -> converges at 6
    others: one candidate throughout                                 -> converges at 0
    """
    plan = {"block01": ["k5_mish" if e < switch else "k3_relu" for e in range(epochs)]}
    if n_blocks >= 2:
        plan["block02"] = [None] + ["k3_relu"] * (epochs - 1)
    if n_blocks >= 3:
        if wobble and epochs >= 8:
            plan["block03"] = (["k5_relu"] * 2 + ["k3_mish"] + ["k5_relu"] * 3 + ["k3_mish"] * (epochs - 6))
        else:
            plan["block03"] = ["k5_leakyrelu"] * epochs
    for b in range(4, n_blocks + 1):
        plan[f"block{b:02d}"] = [CHOICES[b % 6]] * epochs
    return plan


def write_run(path: Path, *, scope: str, seed: int = 0, method: str = "proxyless", epochs: int = 8,
              switch: int = 3, top1: float = 0.9, params: float = 23.79e6, flops: float = 1.3e9,
              exit_epoch: int | None = None, search_time_s: float = 100.0, dataset: str = "digits",
              trajectory: bool = True, wobble: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "method": method, "config": {"scope": scope, "dataset": dataset, "search_epochs": epochs},
        "seed": seed, "env": {"python": "3.11"}}))
    rows = ["phase,epoch,train_loss,train_acc,val_loss,val_acc,lr,time_s,test_acc,params,flops"]
    if method != "baseline":
        for e in range(epochs):
            rows.append(f"search,{e},{1.5 - 0.1 * e},{0.5 + 0.04 * e},{1.6 - 0.1 * e},{0.45 + 0.04 * e},0.05,12.5,,,")
    for e in range(6):
        acc = top1 - 0.05 * (5 - e)
        rows.append(f"retrain,{e},{1.0 - 0.1 * e},{acc + 0.02},{1.1 - 0.1 * e},{acc - 0.01},0.05,10.0,{acc},{params:.0f},{flops:.0f}")
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    arch = {}
    if trajectory and method == "proxyless":
        plan = plan_for(SCOPE_BLOCKS[scope], epochs, switch, wobble)
        lines = ["epoch,step,label,choice,alpha,prob"]
        for e in range(epochs):
            for frac in (0.0, 0.5):  # epoch-end record, then an intra-epoch record
                ep, step = e + frac, e * STEPS_PER_EPOCH + int(frac * STEPS_PER_EPOCH)
                for label, seq in plan.items():
                    winner = seq[e]
                    if label == "block01" and frac and e == epochs - 2:
                        winner = "k5_leakyrelu"  # intra-epoch flicker: must not count
                    a = _alphas(winner, ep)
                    p = _softmax(a)
                    lines += [f"{ep:g},{step},{label},{c},{a[c]!r},{p[c]!r}" for c in CHOICES]
        (path / "trajectory.csv").write_text("\n".join(lines) + "\n")
        arch = {label: seq[-1] for label, seq in plan.items()}
        (path / "arch.json").write_text(json.dumps({**arch, "_scope": scope}))
    (path / "summary.json").write_text(json.dumps({
        "method": method, "scope": scope, "top1": top1, "params": params, "flops": flops,
        "search_epochs": epochs if method != "baseline" else 0, "exit_epoch": exit_epoch,
        "search_time_s": search_time_s if method != "baseline" else None, "retrain_time_s": 60.0,
        "arch": arch, "default": top1}))
    return path


def make_study(root: Path, full: bool = True) -> Path:
    """An NNI-like experiment folder: trials in non-sorted order + db/ and log/.
    ``full=False``: only the f, s (seed 0) and baseline trials (fewer figures to draw)."""
    t = root / "exp" / "trials"
    write_run(t / "Zq1", scope="f", switch=4, top1=0.9322, params=25.23e6, flops=1.5e9, exit_epoch=6,
              epochs=7, search_time_s=400)
    write_run(t / "Bb2", scope="s", seed=0, switch=1, top1=0.90, params=23.53e6, search_time_s=90,
              wobble=False)
    write_run(t / "Cc0", scope="none", method="baseline", top1=0.911, params=23.53e6, flops=1.3e9)
    if full:
        write_run(t / "Aa7", scope="l", switch=3, top1=0.9207, params=23.79e6, search_time_s=300)
        write_run(t / "Mm3", scope="s", seed=1, switch=1, top1=0.92, params=23.53e6, search_time_s=110,
                  wobble=False)
        write_run(t / "Kk9", scope="m", switch=2, top1=0.9235, params=24.58e6, search_time_s=200,
                  wobble=False)
    (root / "exp" / "db").mkdir()
    (root / "exp" / "db" / "nni.sqlite").write_bytes(b"")
    (root / "exp" / "log").mkdir()
    (root / "exp" / "log" / "nnimanager.log").write_text("log\n")
    return root / "exp"


def assert_png(path: Path, min_kb: float = 15) -> None:
    assert path.is_file(), path
    assert path.stat().st_size > min_kb * 1024, (path, path.stat().st_size)
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400, img.shape
    assert float(np.std(img[..., :3])) > 0.02  # not a blank canvas


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- convergence --------------------------------------------------------------------------
def test_convergence_epochs_exact(tmp_path):
    run = analysis.load_run(write_run(tmp_path / "run", scope="l", switch=3))
    conv = proxyless.convergence(run)
    assert list(conv["block"]) == [f"block{b:02d}" for b in range(1, 14)]  # deepest first
    c = conv.set_index("block")
    assert c.loc["block01", "convergence_epoch"] == 3  # the 5.5 flicker is intra-epoch: ignored
    assert c.loc["block01", "final_choice"] == "k3_relu"
    assert c.loc["block01", "n_switches"] == 1
    assert c.loc["block02", "convergence_epoch"] == 1  # the uniform tie at epoch 0 is no argmax
    assert c.loc["block03", "convergence_epoch"] == 6
    assert c.loc["block03", "n_switches"] == 3
    assert (c.loc["block04":, "convergence_epoch"] == 0).all()
    assert (c["final_choice"] == c["arch_choice"]).all()
    expected = _softmax(_alphas("k3_relu", 7))["k3_relu"]
    assert c.loc["block01", "final_prob"] == pytest.approx(expected)
    assert proxyless.max_convergence_epoch(conv) == 6


def test_epoch_records_rules():
    import pandas as pd

    # Two records share whole epoch 2 (steps 20 and 25): the later one counts.  No prob
    # column: it is recomputed from alpha.
    rows = []
    for epoch, step, winner in [(0, 0, "a"), (1, 10, "a"), (2, 20, "a"), (2, 25, "b"), (2.5, 27, "a"), (3, 30, "b")]:
        for ch in "abc":
            rows.append({"epoch": epoch, "step": step, "label": "block01", "choice": ch,
                         "alpha": 1.0 if ch == winner else 0.0})
    path_df = pd.DataFrame(rows)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trajectory.csv"
        path_df.to_csv(p, index=False)
        traj = analysis.read_trajectory(p)
    assert traj.groupby("step")["prob"].sum().round(12).eq(1).all()
    conv = proxyless.convergence(traj)
    assert conv.loc[0, "convergence_epoch"] == 2 and conv.loc[0, "final_choice"] == "b"


# ---- Table I ------------------------------------------------------------------------------
def test_table1_rows_order_values(tmp_path):
    runs = analysis.load_runs(make_study(tmp_path))
    assert len(runs) == 6
    t = proxyless.table1(runs)
    assert list(t["scope"]) == ["baseline", "s", "m", "l", "f"]
    assert list(t["model"]) == ["baseline", "proxyless-s", "proxyless-m", "proxyless-l", "proxyless-f"]
    assert list(t["params_M"]) == [23.53, 23.53, 24.58, 23.79, 25.23]
    assert list(t["top1"]) == [91.10, 91.00, 92.35, 92.07, 93.22]
    assert list(t["n_runs"]) == [1, 2, 1, 1, 1]
    assert t.loc[1, "top1_std"] == pytest.approx(1.41, abs=0.005)
    assert t.loc[0, "flops_M"] == 1300.0
    assert list(t["search_time_s"].iloc[1:]) == [100.0, 200.0, 300.0, 400.0]
    # convergence: max over blocks (s, m: block01's switch; l: block03 settles at 6;
    # f has 7 epochs, so no block03 wobble -> block01's switch at 4)
    assert t["convergence_epoch"].iloc[1:].tolist() == [1, 2, 6, 4]
    assert t["convergence_epoch"].isna().iloc[0]
    assert t["exit_epoch"].isna().tolist() == [True, True, True, True, False]
    assert t.loc[4, "exit_epoch"] == 6


# ---- files, CLI ---------------------------------------------------------------------------
def test_cli_study_writes_tables_and_images(tmp_path):
    exp = make_study(tmp_path, full=False)
    out = tmp_path / "out"
    r = run_cli(exp, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "Table I" in r.stdout and "proxyless-f" in r.stdout and str(out / "table1.csv") in r.stdout
    for name in ("table1.csv", "table1_runs.csv", "runs.csv", "convergence.csv"):
        assert (out / name).is_file(), name
    assert_png(out / "scopes.png")
    for trial in ("Zq1", "Bb2"):
        assert_png(out / "runs" / trial / "trajectories.png", min_kb=40)
        assert_png(out / "runs" / trial / "curves.png")
        assert (out / "runs" / trial / "convergence.csv").is_file()
    assert_png(out / "runs" / "Cc0" / "curves.png")
    assert not (out / "runs" / "Cc0" / "trajectories.png").exists()
    assert not (exp / "analysis").exists()
    import pandas as pd

    t = pd.read_csv(out / "table1.csv")
    assert list(t["scope"]) == ["baseline", "s", "f"]
    conv = pd.read_csv(out / "convergence.csv")
    assert len(conv) == 16 + 3 and set(conv["run"]) == {"Zq1", "Bb2"}


def test_single_run_default_out(tmp_path):
    run_dir = write_run(tmp_path / "runs" / "proxyless" / "s_seed0", scope="s", exit_epoch=5)
    res = analysis.report(run_dir)
    assert {p.name for p in res.files} == {"curves.png", "trajectories.png", "convergence.csv"}
    assert all(p.parent == run_dir / "analysis" for p in res.files)
    assert_png(run_dir / "analysis" / "trajectories.png", min_kb=30)
    # the outputs folder is not mistaken for a run on the next pass
    assert [r.name for r in analysis.load_runs(tmp_path / "runs")] == ["s_seed0"]


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_cli_bad_path_exit_2(tmp_path, kind):
    target = tmp_path / "nope"
    if kind == "empty":
        target.mkdir()
        (target / "sub").mkdir()
    elif kind == "file":
        target.write_text("x")
    r = run_cli(target)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], r.stderr


def test_unknown_method_gets_generic_report_and_registry(tmp_path):
    write_run(tmp_path / "c" / "g1", scope="l", method="growth", trajectory=False)
    write_run(tmp_path / "c" / "p1", scope="s", switch=1)
    unfinished = write_run(tmp_path / "c" / "p2", scope="m", switch=2)
    (unfinished / "summary.json").unlink()  # still searching
    res = analysis.report(tmp_path / "c")
    t = res.tables["runs"]
    assert list(t["method"]) == ["growth", "proxyless", "proxyless"]
    assert (tmp_path / "c" / "analysis" / "runs" / "p2" / "trajectories.png").is_file()
    assert list(res.tables["table1"]["scope"]) == ["s"]  # growth is not in Table I
    assert (tmp_path / "c" / "analysis" / "runs" / "g1" / "curves.png").is_file()
    assert not (tmp_path / "c" / "analysis" / "runs" / "g1" / "trajectories.png").exists()
    with pytest.raises(ValueError):
        analysis.register("proxyless", run=lambda run, out: analysis.Output())


def test_fig3_layout(tmp_path):
    run = analysis.load_run(write_run(tmp_path / "run", scope="f", epochs=5))
    fig = proxyless.plot_trajectories(run)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 16
    assert axes[0].get_title().startswith("block 1 (deepest)")
    assert axes[2].get_title().startswith("block 3")
    styles = {line.get_linestyle() for line in axes[0].lines if line.get_label().startswith("_")}
    assert {"-", "--"} <= styles
    assert len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:6] == ["k3 ReLU", "k3 LeakyReLU", "k3 Mish", "k5 ReLU", "k5 LeakyReLU", "k5 Mish"]


# ---- notebook -----------------------------------------------------------------------------
def test_notebook_runs_headless(tmp_path, run_notebook):
    exp = tmp_path / "runs"
    write_run(exp / "l_seed0", scope="l", exit_epoch=6)
    write_run(exp / "resnet50", scope="none", method="baseline", top1=0.911)
    outputs = run_notebook(exp)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1 + 1 + 2  # scopes + Fig. 3 for the proxyless run + curves for both runs
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "proxyless-l" in html and "baseline" in html and "block13" in html
    assert not (exp / "analysis").exists()  # the notebook only reads
