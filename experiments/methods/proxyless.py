"""Trial runner for the ProxylessNAS search-scope study (one trial = one search + retrain).

Paper: ``../shared/seeds/003_364944a1cb8aa754.txt``.  Search the scoped ResNet-50 with
:class:`strategies.proxyless.ProxylessSearch`, export the argmax architecture, retrain it from
scratch on the training split with the weight settings of the search (SGD-Nesterov, lr 0.05,
momentum 0.9, wd 4e-5, cosine), report top-1 on the test split, params and FLOPs.
``scope: none`` trains the plain ResNet-50 baseline with the same retrain settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from search_spaces import cost as costmodel
from search_spaces.errors import UserError
from search_spaces.resnet_scoped import SCOPES, STEMS, block_labels, build_resnet, scoped_resnet
from strategies.proxyless import ProxylessConfig, ProxylessSearch, retrain
from strategies.training import evaluate

from ..data import make_loaders
from ..export import test_batch
from ..harness import CommonConfig, RunContext, load_images, pick, resolve_device

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
    device = resolve_device(cfg.device)

    # ---- search ------------------------------------------------------------------------
    search_phase = ctx.phase("search", cfg.search_epochs, seed=cfg.seed, loader=train_loader,
                             desc=f"search scope={cfg.scope}")
    if cfg.scope == "none":
        found = {"arch": {}, "exit_epoch": None}
    elif search_phase.done:
        found = search_phase.result
    else:
        search = ProxylessSearch(scoped_resnet(cfg.scope, **space_kwargs), pick(ProxylessConfig, cfg),
                                 input_shape=splits.input_shape, seed=cfg.seed, device=device)

        counted = costmodel.CountedLoader(train_loader)   # the search's training FLOPs (its cost)

        def search_epoch(epoch: int, bar) -> dict[str, Any]:
            before = counted.flops
            row = search.run_epoch(epoch, counted, val_loader,
                                   record=lambda rows: ctx.run.append("trajectory", rows, flush=False), bar=bar)
            return {**row, "train_flops": counted.flops - before}

        search_phase.run(search_epoch, state={"search": search}, until=search.should_stop)
        found = search_phase.finish({"arch": search.export(), "exit_epoch": search.exit.exit_epoch})
        del search
    arch, exit_epoch = found["arch"], found["exit_epoch"]
    ctx.run.write_json("arch.json", {"scope": cfg.scope, "arch": arch, "labels": block_labels(cfg.scope),
                                     "space": space_kwargs})

    # ---- retrain from scratch ----------------------------------------------------------
    torch.manual_seed(cfg.seed + 1)
    model = build_resnet(arch, cfg.scope, **space_kwargs).to(device)
    cost = costmodel.profile(model, splits.input_shape)
    retrained = retrain(model, pick(ProxylessConfig, cfg), train_loader, val_loader, cfg.retrain_epochs, host=ctx,
                        seed=cfg.seed, device=device, extra={"params": cost.params, "flops": cost.flops},
                        desc=f"retrain scope={cfg.scope}")
    test = evaluate(model, test_loader, device)
    ctx.save_model(model, test_batch(test_loader), val=val_loader, num_classes=splits.num_classes)
    return {
        "default": test.acc,
        "top1": test.acc,
        "test_loss": test.loss,
        "params": cost.params,
        "flops": cost.flops,
        "bytes": cost.bytes,
        "intensity": cost.intensity,
        "search_epochs": search_phase.epochs_done,
        "exit_epoch": -1 if exit_epoch is None else exit_epoch,
        "search_time_s": search_phase.time_s,
        "retrain_time_s": retrained.time_s,
        "scope": cfg.scope,
        "dataset": cfg.dataset,
        "arch": arch,
    }
