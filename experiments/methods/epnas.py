"""Trial runner for EPNAS: one trial = one morphed network, proxy-trained (performance prediction).

Paper: ``../shared/seeds/004_bfe1c9d7ecd157ae.txt`` (Sec. 3.4, training details Sec. 4.1).  The
architecture comes from the controller (:mod:`strategies.epnas_nni` puts it, with episode /
step / branch / parent and the resource constraints, into the trial's NNI parameters).  The trial

1. builds the network (:func:`search_spaces.epnas.build_network`; an invalid one is a one-line
   error, exit 2, which the controller counts as a failed trial);
2. loads matching weights from the global parameter-sharing dictionary (:class:`strategies.epnas_sharing.SharedWeights`,
   keys ``"<layer index>:<op type>"``; mismatched shapes are sliced or padded);
3. proxy-trains it: SGD-Nesterov, large batch with a proportionally larger learning rate
   (``lr * batch_size / batch_ref``; the paper's 0.5 at batch 1024), cosine decay over ``epochs``
   (20) and an early stop after ``stop_epoch`` (10) epochs;
4. reports ``default`` = the constrained reward (``strategies.epnas.constrained_reward``) of the
   validation accuracy, and numeric ``accuracy``, ``params``, ``flops``, ``bytes``, ``intensity``,
   ``episode``, ``step``, ``branch``, ``parent``, ``trial`` (web UI columns);
5. writes its weights back into the sharing dictionary (for each key the better accuracy wins).

``final: 1`` (sent by the tuner after the search, for each of the top-K feasible networks): the
network is instead trained from scratch, without sharing, with the final-training settings
(:class:`strategies.epnas_evaluator.FinalTrainingConfig`: the paper's PNAS retraining, 600 epochs,
cosine, crop/flip/brightness/contrast); phase ``final``.  Every trial reports the same numeric
keys, ``final`` (0 / 1) and ``test_acc`` (test accuracy of the trained network) included.

The sharing file is ``<run folder>/../epnas_shared.pt`` unless ``share_file`` is given: on the
local training service ``<experiment>/environments/local-env/trials/epnas_shared.pt``, shared by
all trials of the experiment.  Across SSH hosts give ``share_file`` a path every host sees; a
trial that cannot use the experiment's dictionary says so (``share_ok = 0``, a warning in its log).
"""
from __future__ import annotations

import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_spaces.cost import CountedLoader
from search_spaces.epnas import SpaceConfig, arch_cost, arch_from_json, build_network, random_arch, validate_arch
from search_spaces.errors import UserError
from strategies.epnas import RewardConfig, constrained_reward, constraints_of
from strategies.epnas_evaluator import FinalTrainingConfig, ProxyTrainingConfig, final_loader, final_train
from strategies.epnas_sharing import SharedWeights
from strategies.training import cosine_schedule, evaluate, fit_epoch, sgd_nesterov

from ..data import make_loaders
from ..harness import CommonConfig, RunContext, load_images, pick, resolve_device
from ..export import test_batch

__all__ = ["EpnasTrialConfig", "space_config", "run"]

SHARE_NAME = "epnas_shared.pt"


@dataclass(frozen=True, kw_only=True)
class EpnasTrialConfig(CommonConfig, ProxyTrainingConfig, FinalTrainingConfig, RewardConfig):
    """Flat trial config: data (CommonConfig) + space + proxy training (:class:`ProxyTrainingConfig`,
    the same settings :class:`strategies.epnas_evaluator.EpnasEvaluator` takes) + final training +
    reward + controller tags."""

    dataset: str = "cifar10"
    batch_size: int = 1024            # performance prediction: BZ 1024 (Sec. 4.1)
    arch: str = ""                    # architecture JSON; "": a random network drawn with ``seed``
    space: str = "layer"
    max_layers: int = 12
    max_branches: int = 5
    stem_channels: int = 32
    cell_channels: int = 16
    cells_per_stage: int = 2
    stages: int = 3
    min_spatial: int = 4
    share: bool = True
    share_file: str = ""
    trial: int = -1
    episode: int = -1
    step: int = -1
    branch: int = -1
    parent: int = -1
    algorithm: str = "epnas"          # which search proposed the trial (tuner classArgs ``algorithm``)
    entropy: float | None = None      # policy entropy of the morph (EPNAS only; nats per decision)
    action: str = ""                  # the morph that made this network from ``parent``, in words
    final: int = 0                    # 1: final training of a found network (tuner's last trials)
    final_rank: int = -1              # its rank among the top-K feasible networks (0 = best)
    final_asked: int = 0              # K (tuner classArgs ``final_top_k``)
    final_found: int = 0              # feasible networks the search found (may be < K)

    def __post_init__(self):
        super().__post_init__()
        space_config(self)  # range checks of the space fields
        for name, (lo, hi) in constraints_of(self).items():
            if lo is not None and hi is not None and lo > hi:
                raise UserError(f"{name}_min={lo:g} is above {name}_max={hi:g}")


def space_config(cfg: Any) -> SpaceConfig:
    return SpaceConfig(kind=cfg.space, max_layers=cfg.max_layers, max_branches=cfg.max_branches,
                       stem_channels=cfg.stem_channels, cell_channels=cfg.cell_channels,
                       cells_per_stage=cfg.cells_per_stage, stages=cfg.stages, min_spatial=cfg.min_spatial)


def _share_store(cfg: EpnasTrialConfig, ctx: RunContext) -> tuple[SharedWeights | None, int]:
    """The sharing dictionary this trial uses and whether it is the experiment's (``share_ok``).

    ``share_file`` (a path every host sees: an NFS mount, NNI's ``sharedStorage`` mount point ...)
    when given; else the file beside the trial's run folder, which is the experiment's only on the
    local training service.  On NNI's remote service that default is per host (or per trial in
    reuse mode), and a ``share_file`` whose folder does not exist on this host cannot be the
    experiment's dictionary: both say so in the log and as ``share_ok = 0`` in the metrics, instead
    of sharing silently less than asked (an unreachable file: no sharing at all)."""
    if not cfg.share:
        return None, 0
    if cfg.share_file:
        path = Path(cfg.share_file).expanduser()
        if not path.parent.is_dir():
            warnings.warn(f"parameter sharing: {path.parent} does not exist on this host; this trial shares "
                          "nothing (share_ok=0): share_file must be a path every host sees", RuntimeWarning,
                          stacklevel=2)
            return None, 0
        return SharedWeights(path), 1
    if os.environ.get("NNI_PLATFORM") == "remote":
        warnings.warn("parameter sharing: no share_file on NNI's remote training service, so only this "
                      "host's trials share weights (share_ok=0); set share_file to a path every host sees",
                      RuntimeWarning, stacklevel=2)
        return SharedWeights(ctx.run.path.resolve().parent / SHARE_NAME), 0
    return SharedWeights(ctx.run.path.resolve().parent / SHARE_NAME), 1


def run(cfg: EpnasTrialConfig, ctx: RunContext) -> dict[str, Any]:
    space = space_config(cfg)
    arch = arch_from_json(cfg.arch) if cfg.arch else random_arch(space, random.Random(cfg.seed))
    arch = validate_arch(arch, space)
    if cfg.final:
        return run_final(cfg, ctx, arch, space)
    splits = load_images(cfg)
    train_loader, val_loader, test_loader = make_loaders(splits, batch_size=cfg.batch_size, seed=cfg.seed)
    device = resolve_device(cfg.device)
    model = build_network(arch, space, input_shape=splits.input_shape, num_classes=splits.num_classes)
    cost = arch_cost(arch, space, splits.input_shape, splits.num_classes)
    lr = cfg.lr * cfg.batch_size / cfg.batch_ref  # keep LR / batch size constant (Smith et al. 2018)
    store, share_ok = _share_store(cfg, ctx)
    if "shared_loaded" not in ctx.state:
        ctx.state["shared_loaded"] = store.load_into(model) if store is not None else 0
    model.to(device)
    opt = sgd_nesterov(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       nesterov=cfg.nesterov)
    sched = cosine_schedule(opt, cfg.epochs * len(train_loader))
    ctx.run.write_json("arch.json", {"arch": arch, "space": cfg.space, "space_config": vars(space)})

    counted = CountedLoader(train_loader)   # the proxy training's FLOPs: the trial's search cost

    def proxy_epoch(epoch: int, bar) -> dict[str, Any]:
        before = counted.flops
        _, val, row = fit_epoch(model, counted, val_loader, opt, scheduler=sched, device=device,
                                where=f"epoch {epoch}", bar=bar)
        ctx.state["val_acc"] = val.acc
        return {**row, "params": cost.params, "flops": cost.flops, "train_flops": counted.flops - before}

    # the cosine schedule spans ``epochs``; training stops early after ``stop_epoch`` (prediction)
    proxy = ctx.phase("proxy", cfg.stop_epoch, seed=cfg.seed, loader=train_loader, desc=f"epnas trial {cfg.trial}")
    proxy.run(proxy_epoch, state={"model": model, "opt": opt, "sched": sched})
    val_acc, shared_loaded = ctx.state.get("val_acc", 0.0), ctx.state["shared_loaded"]
    usage = {"params": cost.params, "flops": cost.flops, "intensity": cost.intensity}
    reward = constrained_reward(val_acc, usage, constraints_of(cfg), cfg.base_penalty)
    test_acc = evaluate(model, test_loader, device).acc
    model.cpu()
    # a search candidate: at chance (or worse) it is marked ``degenerate`` and scored, not failed -- its
    # low accuracy is the reward the controller learns from; non-finite weights are never shared
    ctx.save_model(model, test_batch(test_loader), val=val_loader, num_classes=splits.num_classes, candidate=True)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    shared_written = store.update(model, val_acc) if store is not None and finite else 0
    return _summary(cfg, arch, cost, reward, val_acc, test_acc, device, shared_loaded=shared_loaded,
                    share_ok=share_ok, shared_written=shared_written, epochs_trained=cfg.stop_epoch,
                    train_time_s=proxy.time_s, final=0)


def _summary(cfg: EpnasTrialConfig, arch: dict, cost, reward: float, val_acc: float, test_acc: float, device,
             **own: Any) -> dict[str, Any]:
    """Every EPNAS trial's summary: the same numeric keys for search and final trials."""
    reward = reward if math.isfinite(reward) else 0.0
    return {
        "default": reward,
        "reward": reward,
        "accuracy": val_acc,
        "params": cost.params,
        "flops": cost.flops,
        "bytes": cost.bytes,
        "intensity": cost.intensity,
        "trial": cfg.trial,
        "episode": cfg.episode,
        "step": cfg.step,
        "branch": cfg.branch,
        "parent": cfg.parent,
        "algorithm": cfg.algorithm,
        "entropy": cfg.entropy,
        "action": cfg.action,
        "layers": len(arch.get("layers", arch.get("branches", []))),
        **own,
        "test_acc": test_acc,
        "device": device.type,
        "arch": arch,
    }


def run_final(cfg: EpnasTrialConfig, ctx: RunContext, arch: dict, space: SpaceConfig) -> dict[str, Any]:
    """Final training of ``arch`` (``final: 1``): from scratch, no sharing, phase ``final``."""
    fcfg = pick(FinalTrainingConfig, cfg)
    splits = load_images(cfg)
    _, val_loader, test_loader = make_loaders(splits, batch_size=fcfg.final_batch_size, seed=cfg.seed)
    train_loader = final_loader(splits.train, fcfg, seed=cfg.seed)
    device = resolve_device(cfg.device)
    model = build_network(arch, space, input_shape=splits.input_shape, num_classes=splits.num_classes)
    cost = arch_cost(arch, space, splits.input_shape, splits.num_classes)
    ctx.run.write_json("arch.json", {"arch": arch, "space": cfg.space, "space_config": vars(space)})
    phase = final_train(model, train_loader, val_loader, fcfg, host=ctx, device=device, seed=cfg.seed,
                        desc=f"epnas final {cfg.final_rank}", counted=CountedLoader(train_loader),
                        extra={"params": cost.params, "flops": cost.flops})
    val_acc = evaluate(model, val_loader, device).acc
    test_acc = evaluate(model, test_loader, device).acc
    usage = {"params": cost.params, "flops": cost.flops, "intensity": cost.intensity}
    reward = constrained_reward(val_acc, usage, constraints_of(cfg), cfg.base_penalty)
    model.cpu()
    ctx.save_model(model, test_batch(test_loader), val=val_loader, num_classes=splits.num_classes)
    return _summary(cfg, arch, cost, reward, val_acc, test_acc, device, action=cfg.action or "final training",
                    shared_loaded=0, share_ok=0, shared_written=0, epochs_trained=cfg.final_epochs,
                    train_time_s=phase.time_s, final=1)
