"""Trial runner for the ProxylessNAS search-scope study (one trial = one search + retrain).

Paper: ``../shared/seeds/003_364944a1cb8aa754.txt``.  Search the scoped ResNet-50 with
:class:`strategies.proxyless.ProxylessSearch`, export the argmax architecture, retrain it from
scratch on the training split with the weight settings of the search (SGD-Nesterov, lr 0.05,
momentum 0.9, wd 4e-5, cosine), report top-1 on the test split, params and FLOPs.
``scope: none`` trains the plain ResNet-50 baseline with the same retrain settings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.resnet_scoped import SCOPES, STEMS, block_labels, build_resnet, scoped_resnet
from strategies.proxyless import ProxylessConfig, ProxylessSearch
from strategies.training import cosine_schedule, evaluate, sgd_nesterov, train_epoch

from ..data import make_loaders
from ..harness import CommonConfig, RunContext, load_images, pick, reseed_loader, resolve_device, rng_state, set_rng_state
from ..runfolder import atomic_torch_save

__all__ = ["ProxylessTrialConfig", "run"]


@dataclass(frozen=True, kw_only=True)
class ProxylessTrialConfig(CommonConfig, ProxylessConfig):
    """Flat trial config: data (CommonConfig) + search (ProxylessConfig) + space + retrain."""

    dataset: str = "cifar10"
    scope: str = "s"
    width: float = 1.0
    stem: str = "cifar"
    retrain_epochs: int = 200       # the paper retrains "under the same settings"; count not given

    def __post_init__(self):
        super().__post_init__()
        if self.scope not in SCOPES and self.scope != "none":
            raise UserError(f"unknown scope {self.scope!r}; valid scopes: s, m, l, f (none: plain baseline)")
        if not self.width > 0:
            raise UserError(f"width must be > 0, got {self.width}")
        if self.stem not in STEMS:
            raise UserError(f"unknown stem {self.stem!r}; valid: {', '.join(STEMS)}")
        if self.retrain_epochs < 0:
            raise UserError(f"retrain_epochs must be >= 0, got {self.retrain_epochs}")


def _space_kwargs(cfg: ProxylessTrialConfig, splits) -> dict[str, Any]:
    return dict(num_classes=splits.num_classes, width=cfg.width, stem=cfg.stem, in_channels=splits.input_shape[0])


def run(cfg: ProxylessTrialConfig, ctx: RunContext) -> dict[str, Any]:
    splits = load_images(cfg)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
    space_kwargs = _space_kwargs(cfg, splits)
    state = ctx.resumed or {}
    device = resolve_device(cfg.device)
    times = state.get("times", {"search": 0.0, "retrain": 0.0})

    # ---- search ------------------------------------------------------------------------
    search_epochs_done = state.get("search_epochs_done", 0)
    arch: dict[str, str] | None = {} if cfg.scope == "none" else state.get("arch")
    exit_epoch = state.get("exit_epoch")
    if arch is None:
        search = ProxylessSearch(scoped_resnet(cfg.scope, **space_kwargs), pick(ProxylessConfig, cfg),
                                 input_shape=splits.input_shape, seed=cfg.seed, device=device)
        if state.get("search") is not None:
            search.load_state_dict(state["search"])
            set_rng_state(state["rng"])
        epoch = search_epochs_done
        with ctx.bar(cfg.search_epochs * len(train_loader), f"search scope={cfg.scope}", cfg.progress) as bar:
            bar.update(epoch * len(train_loader))
            while epoch < cfg.search_epochs and not search.should_stop():
                reseed_loader(train_loader, cfg.seed, epoch)
                t0 = time.time()
                row = search.run_epoch(epoch, train_loader, val_loader,
                                       record=lambda rows: ctx.run.append("trajectory", rows, flush=False), bar=bar)
                times["search"] += time.time() - t0
                row["time_s"] = times["search"]
                ctx.report_epoch(row)
                epoch += 1
                ctx.run.save_checkpoint({"search": search.state_dict(), "search_epochs_done": epoch,
                                         "times": times, "rng": rng_state()})
        search_epochs_done = epoch
        arch = search.export()
        exit_epoch = search.exit.exit_epoch
        del search
    ctx.run.write_json("arch.json", {"scope": cfg.scope, "arch": arch, "labels": block_labels(cfg.scope),
                                     "space": space_kwargs})

    # ---- retrain from scratch ----------------------------------------------------------
    torch.manual_seed(cfg.seed + 1)
    model = build_resnet(arch, cfg.scope, **space_kwargs).to(device)
    opt = sgd_nesterov(model.parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum,
                       weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    sched = cosine_schedule(opt, max(1, cfg.retrain_epochs * len(train_loader)))
    start = 0
    if state.get("retrain") is not None:
        r = state["retrain"]
        model.load_state_dict(r["model"])
        opt.load_state_dict(r["opt"])
        sched.load_state_dict(r["sched"])
        start = r["epochs_done"]
        set_rng_state(state["rng"])
    cost = costmodel.profile(model, splits.input_shape)
    with ctx.bar(cfg.retrain_epochs * len(train_loader), f"retrain scope={cfg.scope}", cfg.progress) as bar:
        bar.update(start * len(train_loader))
        for epoch in range(start, cfg.retrain_epochs):
            reseed_loader(train_loader, cfg.seed, epoch, phase=1)
            t0 = time.time()
            tr = train_epoch(model, train_loader, opt, scheduler=sched, device=device,
                             where=f"retrain epoch {epoch}", bar=bar)
            val = evaluate(model, val_loader, device)
            times["retrain"] += time.time() - t0
            ctx.report_epoch({"phase": "retrain", "epoch": epoch, "train_loss": tr.loss, "train_acc": tr.acc,
                              "val_loss": val.loss, "val_acc": val.acc, "lr": opt.param_groups[0]["lr"],
                              "params": cost.params, "flops": cost.flops, "time_s": times["retrain"]})
            ctx.run.save_checkpoint({"arch": arch, "search_epochs_done": search_epochs_done, "times": times,
                                     "exit_epoch": exit_epoch, "rng": rng_state(),
                                     "retrain": {"model": model.state_dict(), "opt": opt.state_dict(),
                                                 "sched": sched.state_dict(), "epochs_done": epoch + 1}})
    test = evaluate(model, test_loader, device)
    atomic_torch_save(model.state_dict(), ctx.run.file("model.pt"))
    return {
        "default": test.acc,
        "top1": test.acc,
        "test_loss": test.loss,
        "params": cost.params,
        "flops": cost.flops,
        "bytes": cost.bytes,
        "intensity": cost.intensity,
        "search_epochs": search_epochs_done,
        "exit_epoch": -1 if exit_epoch is None else exit_epoch,
        "search_time_s": times["search"],
        "retrain_time_s": times["retrain"],
        "scope": cfg.scope,
        "dataset": cfg.dataset,
        "arch": arch,
    }
