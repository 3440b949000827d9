"""Benchmark: EPNAS search efficiency against its baselines, and what performance prediction buys.

Run ``python -m bench.epnas_efficiency`` from the repository root (``--help`` for the flags).
Everything runs in one process, on one data set (scikit-learn's 8x8 ``digits``, held in memory)
and one evaluator, so the numbers are side by side:

(A) **search** - EPNAS (:class:`strategies.epnas.EpnasController`), EPNAS with the parameter-
    sharing dictionary (``epnas_share``: every trial starts from the shared weights and writes its
    own back, Sec. 3.4) and the three baselines of :mod:`strategies.search_baselines` (uniform
    random search, regularized evolution, EAS-style random morphing) each get the same budget
    (``episodes x steps x branches`` trained models) on the layer-by-layer space under the same
    resource constraints, for ``--seeds`` search seeds (3); every trial is trained the same way
    (proxy training: ``--proxy-epochs`` epochs of SGD-Nesterov, cosine).  Reported: (i) the number
    of trained models EPNAS needs to reach random search's final best reward (same seed), as a
    fraction of the budget (target: median over seeds <= 0.5); (ii) the area under the best-so-far
    curve (mean best reward over the budget) per arm with 95% percentile-bootstrap CIs over seeds,
    and the EPNAS / random AUC ratio (paired bootstrap); (iii) the same ratio for sharing on / off.
    Target checks print MET / NOT MET as measured.  This is the paper's Fig. 4 claim
    ("significantly outperform random search") at toy scale; the trials run one after another,
    so branches are a sequence here, not parallel.
(B) **performance prediction** - ``--rank-archs`` random architectures are trained twice: the
    reference (``--full-epochs`` epochs, batch 32, lr 0.05) and the proxy of Sec. 3.4 (batch and
    learning rate ``--proxy-scale`` (2) times larger, cosine over ``--full-epochs`` with early stop at half, plus the
    parameter-sharing dictionary filled by earlier models).  Reported: Spearman rank correlation
    of the two accuracies and the wall-clock ratio reference / proxy (the paper: about 5x).

``--rank-archs 0`` skips (B).  Writes ``bench/out/epnas_efficiency.json`` and ``.png``.  Timings depend on the machine's load
(2 shared cores here): the 1-minute load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from experiments.data import load_image_dataset
from strategies.epnas_sharing import SharedWeights
from search_spaces.epnas import SpaceConfig, arch_cost, build_network, random_arch
from strategies.epnas import EpnasConfig, EpnasController, constrained_reward
from strategies.search_baselines import BASELINES
from strategies.training import cosine_schedule, evaluate, sgd_nesterov, train_epoch

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class BenchConfig:
    branches: int = 4
    episodes: int = 3
    steps: int = 3
    seeds: int = 3                   # search seeds seed .. seed + seeds - 1 (bootstrap CIs over them)
    max_layers: int = 6
    params_max: float = 20_000
    flops_max: float = 1_000_000
    proxy_epochs: int = 2
    rank_archs: int = 12
    full_epochs: int = 6
    proxy_scale: int = 2             # proxy batch and LR = reference x this (8x ranks badly on 1.4k images)
    seed: int = 0
    threads: int = 1


def _batches(x, y, size, gen=None):
    idx = torch.randperm(len(y), generator=gen) if gen is not None else torch.arange(len(y))
    return [(x[idx[i:i + size]], y[idx[i:i + size]]) for i in range(0, len(y), size)]


class Evaluator:
    """Train-and-score on in-memory digits tensors (train / val splits of the project's loader)."""

    def __init__(self, seed: int):
        splits = load_image_dataset("digits", seed=seed, augment=False)
        stack = lambda ds: (torch.stack([ds[i][0] for i in range(len(ds))]),  # noqa: E731
                            torch.tensor([ds[i][1] for i in range(len(ds))]))
        self.train, self.val = stack(splits.train), stack(splits.val)
        self.shape, self.classes = splits.input_shape, splits.num_classes

    def accuracy(self, arch, space, *, epochs: int, stop: int, batch: int, lr: float, seed: int,
                 store: SharedWeights | None = None) -> tuple[float, float]:
        torch.manual_seed(seed)
        model = build_network(arch, space, input_shape=self.shape, num_classes=self.classes)
        if store is not None:
            store.load_into(model)
        t0 = time.perf_counter()
        opt = sgd_nesterov(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        n_batches = math.ceil(len(self.train[1]) / batch)
        sched = cosine_schedule(opt, epochs * n_batches)
        gen = torch.Generator().manual_seed(seed)
        for e in range(stop):
            train_epoch(model, _batches(*self.train, batch, gen), opt, scheduler=sched, where=f"bench epoch {e}")
        acc = evaluate(model, _batches(*self.val, 256)).acc
        if store is not None:
            store.update(model, acc)
        return acc, time.perf_counter() - t0


ARMS = ("epnas", "epnas_share", "random", "evolution", "morph")


def run_search(cfg: BenchConfig, ev: Evaluator, seed: int, log=print) -> dict:
    """Every arm once with search seed ``seed``: per arm the rewards in trial order and figures."""
    space = SpaceConfig(kind="layer", max_layers=cfg.max_layers, stem_channels=16)
    ctl_cfg = EpnasConfig(branches=cfg.branches, episodes=cfg.episodes, steps=cfg.steps, seed=seed,
                          params_max=cfg.params_max, flops_max=cfg.flops_max, init_units=2)
    constraints = {"params": (None, cfg.params_max), "flops": (None, cfg.flops_max)}
    make = {"epnas": lambda: EpnasController(ctl_cfg, space), "epnas_share": lambda: EpnasController(ctl_cfg, space),
            "random": lambda: BASELINES["random"](ctl_cfg, space),
            "evolution": lambda: BASELINES["evolution"](ctl_cfg, space, population=8, sample=3),
            "morph": lambda: BASELINES["morph"](ctl_cfg, space)}
    out = {}
    for name in ARMS:
        search = make[name]()
        t0 = time.perf_counter()
        trials = []
        with tempfile.TemporaryDirectory() as d:
            # parameter sharing only in the epnas_share arm (a fresh dictionary per seed)
            store = SharedWeights(Path(d) / "shared.pt") if name == "epnas_share" else None
            while not search.finished:
                for key, arch, meta in search.propose():
                    acc, _ = ev.accuracy(arch, space, epochs=cfg.proxy_epochs, stop=cfg.proxy_epochs, batch=64,
                                         lr=0.05, seed=seed * 1000 + meta["trial"], store=store)
                    c = arch_cost(arch, space, ev.shape, ev.classes)
                    usage = {"params": c.params, "flops": c.flops, "intensity": c.intensity}
                    reward = constrained_reward(acc, usage, constraints)
                    search.tell(key, reward)
                    trials.append({"trial": meta["trial"], "episode": meta["episode"], "reward": reward,
                                   "accuracy": acc, "feasible": reward == acc})
        trials.sort(key=lambda r: r["trial"])
        rewards = [r["reward"] for r in trials]
        last = [r["reward"] for r in trials if r["episode"] == cfg.episodes - 1]
        feasible = [r["accuracy"] for r in trials if r["feasible"]]
        out[name] = {"best_reward": max(rewards), "auc": auc(rewards),
                     "best_feasible_accuracy": max(feasible) if feasible else None,
                     "feasible_fraction": len(feasible) / len(trials),
                     "last_episode_mean_reward": sum(last) / len(last) if last else None,
                     "rewards": rewards, "time_s": time.perf_counter() - t0}
        log(f"seed {seed} {name:11s} best {out[name]['best_reward']:.3f}  AUC {out[name]['auc']:.3f}  "
            f"feasible {out[name]['feasible_fraction']:.2f}  ({out[name]['time_s']:.0f} s)")
    target = out["random"]["best_reward"]
    for arm in out.values():
        hits = [i for i, r in enumerate(arm["rewards"]) if r >= target]
        arm["trials_to_random_best"] = hits[0] + 1 if hits else None
    return out


def best_so_far(rewards: Sequence[float]) -> list[float]:
    out, best = [], -math.inf
    for r in rewards:
        best = max(best, r)
        out.append(best)
    return out


def auc(rewards: Sequence[float]) -> float:
    """Normalised area under the best-so-far curve over trained models (mean best-so-far)."""
    curve = best_so_far(rewards)
    return sum(curve) / len(curve)


def bootstrap_ci(values: Sequence[float], stat=None, *, n: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)``: percentile bootstrap over the seeds of the mean (or ``stat``)."""
    stat = stat or (lambda v: sum(v) / len(v))
    rng = random.Random(seed)
    values = list(values)
    boots = sorted(stat([values[rng.randrange(len(values))] for _ in values]) for _ in range(n))
    lo, hi = boots[int((1 - level) / 2 * (n - 1))], boots[int((1 + level) / 2 * (n - 1))]
    return stat(values), lo, hi


def paired_ratio_ci(num: Sequence[float], den: Sequence[float], **kw) -> tuple[float, float, float]:
    """Bootstrap CI of mean(num) / mean(den), resampling seeds in pairs."""
    pairs = list(zip(num, den))
    return bootstrap_ci(pairs, lambda v: sum(a for a, _ in v) / max(1e-12, sum(b for _, b in v)), **kw)


def summarise(per_seed: list[dict], budget: int) -> dict:
    """Across seeds: fraction of the budget EPNAS needs to reach random's final best, AUCs with
    bootstrap CIs, EPNAS / random and sharing on / off AUC ratios, and the target checks."""
    arms = list(per_seed[0])
    aucs = {a: [s[a]["auc"] for s in per_seed] for a in arms}
    fracs = [None if s["epnas"]["trials_to_random_best"] is None else s["epnas"]["trials_to_random_best"] / budget
             for s in per_seed]
    ordered = sorted(math.inf if f is None else f for f in fracs)
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    auc_ci = {a: bootstrap_ci(v) for a, v in aucs.items()}
    vs_random = paired_ratio_ci(aucs["epnas"], aucs["random"])
    share = paired_ratio_ci(aucs["epnas_share"], aucs["epnas"])
    share_vs_random = paired_ratio_ci(aucs["epnas_share"], aucs["random"])
    checks = {
        "epnas_reaches_random_best_within_half_budget (median fraction <= 0.5)": median <= 0.5,
        "epnas_auc_above_random (ratio > 1)": vs_random[0] > 1,
        "epnas_auc_above_random_ci (CI low > 1)": vs_random[1] > 1,
        "sharing_on_auc_at_least_off (ratio >= 1)": share[0] >= 1,
    }
    return {"fraction_of_budget_to_random_best": fracs, "median_fraction": median if math.isfinite(median) else None,
            "auc": {a: {"mean": m, "ci95": [lo, hi], "per_seed": aucs[a]} for a, (m, lo, hi) in auc_ci.items()},
            "auc_ratio_epnas_over_random": {"ratio": vs_random[0], "ci95": list(vs_random[1:])},
            "auc_ratio_share_on_over_off": {"ratio": share[0], "ci95": list(share[1:])},
            "auc_ratio_share_on_over_random": {"ratio": share_vs_random[0], "ci95": list(share_vs_random[1:])},
            "best_reward_mean": {a: sum(s[a]["best_reward"] for s in per_seed) / len(per_seed) for a in arms},
            "feasible_fraction_mean": {a: sum(s[a]["feasible_fraction"] for s in per_seed) / len(per_seed)
                                       for a in arms},
            "checks": checks}


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def run_prediction(cfg: BenchConfig, ev: Evaluator, log=print) -> dict:
    space = SpaceConfig(kind="layer", max_layers=cfg.max_layers, stem_channels=16)
    rng = random.Random(cfg.seed)
    archs = [random_arch(space, rng, units=rng.randint(min(2, cfg.max_layers), min(4, cfg.max_layers)))
             for _ in range(cfg.rank_archs)]
    full, proxy, t_full, t_proxy = [], [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as d:
        store = SharedWeights(Path(d) / "shared.pt")
        for i, arch in enumerate(archs):
            a, t = ev.accuracy(arch, space, epochs=cfg.full_epochs, stop=cfg.full_epochs, batch=32, lr=0.05,
                               seed=cfg.seed + i)
            full.append(a)
            t_full += t
            a, t = ev.accuracy(arch, space, epochs=cfg.full_epochs, stop=max(1, cfg.full_epochs // 2),
                               batch=32 * cfg.proxy_scale, lr=0.05 * cfg.proxy_scale, seed=cfg.seed + i, store=store)
            proxy.append(a)
            t_proxy += t
    rho = _spearman(full, proxy)
    log(f"prediction: Spearman {rho:.3f}, time reference/proxy {t_full / t_proxy:.2f}x")
    return {"spearman": rho, "time_full_s": t_full, "time_proxy_s": t_proxy, "speedup": t_full / t_proxy,
            "full_accuracy": full, "proxy_accuracy": proxy}


def run(cfg: BenchConfig, *, log=print) -> dict:
    torch.set_num_threads(cfg.threads)
    load0 = os.getloadavg()[0]
    ev = Evaluator(cfg.seed)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    per_seed = [run_search(cfg, ev, s, log) for s in seeds]
    budget = cfg.episodes * cfg.steps * cfg.branches
    summary = summarise(per_seed, budget)
    pred = run_prediction(cfg, ev, log) if cfg.rank_archs >= 2 else None
    search = {a: {k: [s[a][k] for s in per_seed] for k in per_seed[0][a]} for a in per_seed[0]}
    ratios = {f"{k}_best_reward_over_random": summary["best_reward_mean"][k] / summary["best_reward_mean"]["random"]
              for k in search}
    return {"config": asdict(cfg), "seeds": seeds, "budget": budget, "search": search, "summary": summary,
            "prediction": pred, "ratios": ratios, "loadavg": [load0, os.getloadavg()[0]], "torch": torch.__version__}


def report(res: dict) -> str:
    s, b = res["summary"], res["budget"]
    lines = [f"budget {b} trained models per arm, seeds {res['seeds']}"]
    fr = ", ".join("not reached" if f is None else f"{f:.2f}" for f in s["fraction_of_budget_to_random_best"])
    med = "not reached" if s["median_fraction"] is None else f"{s['median_fraction']:.2f}"
    lines.append(f"(i)   EPNAS models to reach random search's final best, fraction of budget: per seed [{fr}], "
                 f"median {med} (target <= 0.5)")
    lines.append("(ii)  AUC of best-so-far (mean best reward over the budget), 95% bootstrap CI over seeds:")
    for a, v in s["auc"].items():
        lines.append(f"        {a:11s} {v['mean']:.4f}  [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]")
    r = s["auc_ratio_epnas_over_random"]
    lines.append(f"      AUC ratio EPNAS / random        {r['ratio']:.4f}  [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
    r = s["auc_ratio_share_on_over_off"]
    lines.append(f"(iii) AUC ratio EPNAS share on / off  {r['ratio']:.4f}  [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
    r = s["auc_ratio_share_on_over_random"]
    lines.append(f"      AUC ratio EPNAS share on / random {r['ratio']:.4f}  [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
    for name, ok in s["checks"].items():
        lines.append(f"check {name}: {'MET' if ok else 'NOT MET'}")
    p = res["prediction"]
    if p:
        lines.append(f"prediction: Spearman {p['spearman']:.3f}, time reference/proxy {p['speedup']:.2f}x")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.8))
    a, b, c = fig.subplots(1, 3)
    for name, arm in res["search"].items():
        curves = [best_so_far(r) for r in arm["rewards"]]
        xs = range(1, len(curves[0]) + 1)
        mean = [sum(v) / len(v) for v in zip(*curves)]
        a.plot(xs, mean, label=name)
        a.fill_between(xs, [min(v) for v in zip(*curves)], [max(v) for v in zip(*curves)], alpha=0.12)
    a.set(xlabel="trained models", ylabel="best reward so far",
          title=f"(A) search, mean (min-max) over {len(res['seeds'])} seeds")
    a.legend(fontsize="small")
    a.grid(alpha=0.3)
    aucs = res["summary"]["auc"]
    names = list(aucs)
    means = [aucs[n]["mean"] for n in names]
    err = [[m - aucs[n]["ci95"][0] for n, m in zip(names, means)], [aucs[n]["ci95"][1] - m for n, m in zip(names, means)]]
    b.bar(range(len(names)), means, yerr=err, capsize=4, color="tab:blue", alpha=0.7)
    b.set_xticks(range(len(names)), names, rotation=20, fontsize="small")
    lo = min(aucs[n]["ci95"][0] for n in names)
    b.set_ylim(max(0.0, lo - 0.05), None)
    b.set(ylabel="AUC of best-so-far", title="(B) AUC, 95% bootstrap CI over seeds")
    b.grid(alpha=0.3, axis="y")
    p = res["prediction"]
    if p:
        c.scatter(p["full_accuracy"], p["proxy_accuracy"])
        c.set(xlabel="reference accuracy", ylabel="proxy accuracy",
              title=f"(C) prediction: rho={p['spearman']:.2f}, {p['speedup']:.1f}x faster")
    c.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.epnas_efficiency", description=__doc__.split("\n\n")[0])
    for f, v in asdict(d).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--out", default=str(OUT))
    args = vars(p.parse_args(argv))
    out = Path(args.pop("out"))
    res = run(BenchConfig(**args))
    out.mkdir(parents=True, exist_ok=True)
    (out / "epnas_efficiency.json").write_text(json.dumps(res, indent=2))
    plot(res, out / "epnas_efficiency.png")
    print(report(res))
    print(json.dumps(res["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
