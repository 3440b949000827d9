"""Benchmark: EPNAS search efficiency against its baselines, and what performance prediction buys.

Run ``python -m bench.epnas_efficiency`` from the repository root (``--help`` for the flags).
Everything runs in one process, with one seed, on one data set (scikit-learn's 8x8 ``digits``,
held in memory) and one evaluator, so the numbers are side by side:

(A) **search** - EPNAS (:class:`strategies.epnas.EpnasController`) and the three baselines of
    :mod:`strategies.search_baselines` (uniform random search, regularized evolution, EAS-style
    random morphing) each get the same budget (``episodes x steps x branches`` trials) on the
    layer-by-layer space under the same resource constraints, and every trial is trained the same
    way (proxy training: ``--proxy-epochs`` epochs of SGD-Nesterov, cosine, no sharing, so arms
    do not help each other).  Reported per arm: best reward, best feasible accuracy, fraction of
    feasible trials, mean reward of the last episode's trials, trials until the final best
    random-search reward was first reached.  This is the paper's Fig. 4 claim ("significantly
    outperform random search") at toy scale; the trials run one after another, so branches are
    a sequence here, not parallel.
(B) **performance prediction** - ``--rank-archs`` random architectures are trained twice: the
    reference (``--full-epochs`` epochs, batch 32, lr 0.05) and the proxy of Sec. 3.4 (batch and
    learning rate ``--proxy-scale`` (2) times larger, cosine over ``--full-epochs`` with early stop at half, plus the
    parameter-sharing dictionary filled by earlier models).  Reported: Spearman rank correlation
    of the two accuracies and the wall-clock ratio reference / proxy (the paper: about 5x).

Writes ``bench/out/epnas_efficiency.json`` and ``.png``.  Timings depend on the machine's load
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
from experiments.methods.epnas import SharedWeights
from search_spaces.epnas import SpaceConfig, arch_cost, build_network, random_arch
from strategies.epnas import EpnasConfig, EpnasController, constrained_reward
from strategies.search_baselines import BASELINES
from strategies.training import cosine_schedule, evaluate, sgd_nesterov, train_epoch

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class BenchConfig:
    branches: int = 4
    episodes: int = 4
    steps: int = 3
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


def run_search(cfg: BenchConfig, ev: Evaluator, log=print) -> dict:
    space = SpaceConfig(kind="layer", max_layers=cfg.max_layers, stem_channels=16)
    ctl_cfg = EpnasConfig(branches=cfg.branches, episodes=cfg.episodes, steps=cfg.steps, seed=cfg.seed,
                          params_max=cfg.params_max, flops_max=cfg.flops_max, init_units=2)
    constraints = {"params": (None, cfg.params_max), "flops": (None, cfg.flops_max)}
    arms = {"epnas": EpnasController(ctl_cfg, space), "random": BASELINES["random"](ctl_cfg, space),
            "evolution": BASELINES["evolution"](ctl_cfg, space, population=8, sample=3),
            "morph": BASELINES["morph"](ctl_cfg, space)}
    out = {}
    for name, search in arms.items():
        t0 = time.perf_counter()
        trials = []
        while not search.finished:
            for key, arch, meta in search.propose():
                acc, _ = ev.accuracy(arch, space, epochs=cfg.proxy_epochs, stop=cfg.proxy_epochs, batch=64, lr=0.05,
                                     seed=cfg.seed + meta["trial"])
                c = arch_cost(arch, space, ev.shape, ev.classes)
                usage = {"params": c.params, "flops": c.flops, "intensity": c.intensity}
                reward = constrained_reward(acc, usage, constraints)
                search.tell(key, reward)
                trials.append({"trial": meta["trial"], "episode": meta["episode"], "reward": reward, "accuracy": acc,
                               "params": c.params, "flops": c.flops, "feasible": reward == acc})
        trials.sort(key=lambda r: r["trial"])
        last = [r["reward"] for r in trials if r["episode"] == cfg.episodes - 1]
        feasible = [r["accuracy"] for r in trials if r["feasible"]]
        out[name] = {"best_reward": max(r["reward"] for r in trials),
                     "best_feasible_accuracy": max(feasible) if feasible else None,
                     "feasible_fraction": len(feasible) / len(trials),
                     "last_episode_mean_reward": sum(last) / len(last) if last else None,
                     "rewards": [r["reward"] for r in trials], "time_s": time.perf_counter() - t0}
        log(f"{name:10s} best reward {out[name]['best_reward']:.3f}  feasible {out[name]['feasible_fraction']:.2f}  "
            f"last-episode mean {out[name]['last_episode_mean_reward']:.3f}  ({out[name]['time_s']:.0f} s)")
    target = out["random"]["best_reward"]
    for arm in out.values():
        hits = [i for i, r in enumerate(arm["rewards"]) if r >= target]
        arm["trials_to_random_best"] = hits[0] + 1 if hits else None
    return out


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
    search = run_search(cfg, ev, log)
    pred = run_prediction(cfg, ev, log)
    ratios = {f"{k}_best_reward_over_random": search[k]["best_reward"] / search["random"]["best_reward"]
              for k in search}
    return {"config": asdict(cfg), "search": search, "prediction": pred, "ratios": ratios,
            "loadavg": [load0, os.getloadavg()[0]], "torch": torch.__version__}


def plot(res: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    for name, arm in res["search"].items():
        rewards = arm["rewards"]
        best = [max(rewards[:i + 1]) for i in range(len(rewards))]
        a.plot(range(1, len(best) + 1), best, label=name)
    a.set(xlabel="trials", ylabel="best reward so far", title="(A) search under constraints")
    a.legend(fontsize="small")
    a.grid(alpha=0.3)
    p = res["prediction"]
    b.scatter(p["full_accuracy"], p["proxy_accuracy"])
    b.set(xlabel="reference accuracy", ylabel="proxy accuracy",
          title=f"(B) prediction: rho={p['spearman']:.2f}, {p['speedup']:.1f}x faster")
    b.grid(alpha=0.3)
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
    print(json.dumps(res["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
