"""Trial runner for growing networks by structured continuous sparsification (one trial = one growth).

Paper: ``../shared/seeds/001_a6039e1e4b9b8530.txt``.  Grow a seed family
(:mod:`search_spaces.growth_spaces`) from one filter per layer and one unit per stage to a
parameter (or FLOPs) ``budget`` with :class:`strategies.growth.GrowthSearch`, export the dense
compact network, optionally fine-tune it (``finetune_epochs``; Sec. 4.2 fine-tunes 40 epochs on
CIFAR, Sec. 4.1 none), and report top-1 on the test split, params, FLOPs and the training FLOPs
actually spent against those of the full seed network over the same epochs.

Run folder (DESIGN.md): ``metrics.csv`` (phase ``grow`` / ``finetune``: accuracies, active
params/FLOPs, training FLOPs of the epoch, units per stage, lambdas), ``structure.csv`` (per
epoch and structure: active, s, temperature, counter, sampling probability), ``arch.json``
(per-layer widths, active units, the layout), ``model.pt`` (state_dict of
:class:`search_spaces.growth_spaces.CompactNet`; rebuild with ``build_compact(arch)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.growth_spaces import FAMILIES, GrowableNet, build_compact, full_arch, make_layout
from strategies.growth import GrowthConfig, GrowthSearch, enlarge_kernel_cache
from strategies.training import cosine_schedule, evaluate, sgd_nesterov, train_epoch

from ..data import make_loaders
from ..harness import CommonConfig, RunContext, load_images, per_sample_train_flops, pick, resolve_device
from ..export import test_batch

__all__ = ["GrowthTrialConfig", "run"]


@dataclass(frozen=True, kw_only=True)
class GrowthTrialConfig(CommonConfig, GrowthConfig):
    """Flat trial config: data (CommonConfig) + growth (GrowthConfig) + seed family + fine-tuning."""

    dataset: str = "cifar10"
    family: str = "resnet20"
    width: float = 1.0
    stage_blocks: tuple[int, ...] = ()      # () = the family's maximum depth
    max_blocks: int = 0                      # cap on units per stage (0 = none)
    grow_layers: bool | None = None          # None = the family's default
    stem: str | None = None                  # None = the family's stem
    finetune_epochs: int = 0
    finetune_lr: float = 0.01
    record_structures: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.family not in FAMILIES:
            raise UserError(f"unknown seed family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if not self.width > 0:
            raise UserError(f"width must be > 0, got {self.width}")
        if self.max_blocks < 0:
            raise UserError(f"max_blocks must be >= 0, got {self.max_blocks}")
        if self.finetune_epochs < 0:
            raise UserError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not self.finetune_lr > 0:
            raise UserError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        # the layout's own checks (depths, stem, layer indicators) before any data is read
        make_layout(self.family, width=self.width, stage_blocks=self.stage_blocks or None,
                    grow_layers=self.grow_layers, stem=self.stem, max_blocks=self.max_blocks or None)


def layout_for(cfg: GrowthTrialConfig, splits):
    return make_layout(cfg.family, num_classes=splits.num_classes, in_channels=splits.input_shape[0],
                       width=cfg.width, stage_blocks=cfg.stage_blocks or None, grow_layers=cfg.grow_layers,
                       stem=cfg.stem, max_blocks=cfg.max_blocks or None)


def run(cfg: GrowthTrialConfig, ctx: RunContext) -> dict[str, Any]:
    enlarge_kernel_cache()    # effective when this is the process's first convolution (a trial's is)
    splits = load_images(cfg)
    layout = layout_for(cfg, splits)   # bad layouts fail before any data is touched by training
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
    device = resolve_device(cfg.device)
    totals = ctx.state.setdefault("totals", {"train_flops": 0, "full_train_flops": 0})

    torch.manual_seed(cfg.seed)
    net = GrowableNet(layout, mask_init=cfg.mask_init, mask_spread=cfg.mask_spread)
    search = GrowthSearch(net, pick(GrowthConfig, cfg), input_shape=splits.input_shape,
                          steps_per_epoch=len(train_loader), seed=cfg.seed, device=device)

    # ---- grow ---------------------------------------------------------------------------
    grow = ctx.phase("grow", cfg.epochs, seed=cfg.seed, loader=train_loader,
                     desc=f"grow {cfg.family} budget={cfg.budget}")
    grow.restore({"search": search})
    if search.epoch == 0 and cfg.record_structures and not ctx.run.rows("structure"):
        ctx.run.append("structure", search.structure_rows(0), flush=False)

    def grow_epoch(epoch: int, bar) -> dict[str, Any]:
        row = search.run_epoch(train_loader, bar=bar)
        val = evaluate(search.net, val_loader, device)
        totals["train_flops"] += row["train_flops"]
        totals["full_train_flops"] += row["full_train_flops"]
        row.update({"val_loss": val.loss, "val_acc": val.acc, "cum_train_flops": totals["train_flops"],
                    "cum_full_train_flops": totals["full_train_flops"]})
        if cfg.record_structures:
            ctx.run.append("structure", search.structure_rows(epoch + 1), flush=False)
        return row

    grow.run(grow_epoch, state={"search": search})

    # ---- export (+ optional fine-tuning) ------------------------------------------------
    compact, arch = search.export()
    compact = compact.to(device)
    grown_val = evaluate(compact, val_loader, device)
    ctx.run.write_json("arch.json", arch)
    torch.manual_seed(cfg.seed + 1)
    finetune = ctx.phase("finetune", cfg.finetune_epochs, seed=cfg.seed, reseed=1, loader=train_loader,
                         desc="fine-tune")
    if cfg.finetune_epochs:
        opt = sgd_nesterov(compact.parameters(), lr=cfg.finetune_lr, momentum=cfg.weight_momentum,
                           weight_decay=cfg.weight_decay, nesterov=False)
        sched = cosine_schedule(opt, cfg.finetune_epochs * len(train_loader))
        ft_cost = costmodel.profile(build_compact(arch), splits.input_shape)

        def finetune_epoch(epoch: int, bar) -> dict[str, Any]:
            tr = train_epoch(compact, train_loader, opt, scheduler=sched, device=device,
                             where=f"finetune epoch {epoch}", bar=bar)
            # counted once, after the first epoch; kept in the checkpoint, so a resumed process does
            # not run the loader (a global-RNG draw) at a point where the first process did not
            if "finetune_per_sample" not in ctx.state:
                ctx.state["finetune_per_sample"] = per_sample_train_flops(compact, val_loader, device)
            ft_flops = ctx.state["finetune_per_sample"] * tr.n
            totals["train_flops"] += ft_flops
            val = evaluate(compact, val_loader, device)
            return {"train_loss": tr.loss, "train_acc": tr.acc, "val_loss": val.loss, "val_acc": val.acc,
                    "lr": opt.param_groups[0]["lr"], "train_flops": ft_flops, "cum_train_flops": totals["train_flops"],
                    "params": ft_cost.params, "flops": ft_cost.flops}

        finetune.run(finetune_epoch, state={"model": compact, "opt": opt, "sched": sched})
    compact.eval()
    test = evaluate(compact, test_loader, device)
    ctx.save_model(compact, test_batch(test_loader), val=val_loader, num_classes=splits.num_classes)
    cost = costmodel.profile(compact.cpu(), splits.input_shape)
    full = costmodel.profile(build_compact(full_arch(layout)), splits.input_shape)
    savings = totals["full_train_flops"] / totals["train_flops"] if totals["train_flops"] else 0.0
    summary = {
        "default": test.acc,
        "top1": test.acc,
        "test_loss": test.loss,
        "grown_val_acc": grown_val.acc,
        "params": cost.params,
        "flops": cost.flops,
        "params_ratio": cost.params / full.params,
        "flops_ratio": cost.flops / full.flops,
        "full_params": full.params,
        "full_flops": full.flops,
        "train_flops": totals["train_flops"],
        "full_train_flops": totals["full_train_flops"],
        "train_cost_savings": savings,
        "grow_time_s": grow.time_s,
        "finetune_time_s": finetune.time_s,
        "depth": len(arch["layers"]),
        "family": cfg.family,
        "budget": cfg.budget,
        "budget_type": cfg.budget_type,
        "dataset": cfg.dataset,
    }
    for s, n in enumerate(arch["stage_units"], start=1):
        summary[f"units_stage{s}"] = n
    return summary
