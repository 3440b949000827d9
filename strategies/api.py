"""The Python API of the methods NNI has no slot for: growth and SCANN, in ``NasExperiment``'s shape.

ProxylessNAS and EPNAS run in NNI's own ``NasExperiment(space, evaluator, strategy)``
(:class:`strategies.proxyless.CompactProxyless` with :class:`strategies.proxyless.ProxylessEvaluator`;
:class:`strategies.epnas_nni.EpnasStrategy` with :class:`strategies.epnas_evaluator.EpnasEvaluator`).
Growth by continuous sparsification and SCANN's grow-and-prune synthesis change the network's
weights *and* its shape as they train; NNI 3.0 has neither a one-shot slot for that (its one-shot
strategies search over a fixed supernet of mutables) nor a multi-trial one (a trial there is a
fixed architecture).  :class:`Experiment` gives them the same shape::

    exp = Experiment(GrowableNet(layout), ImageEvaluator(train, val, test_loader=test),
                     GrowthStrategy(GrowthConfig(epochs=160, budget=0.35)))
    exp.run()                                  # -> exp.result: arch, model, test_acc, params, flops, rows
    arch, = exp.export_top_models(formatter="dict")

    exp = Experiment(seed_network(cfg, n_in, n_out), TensorEvaluator(TensorData(...)), ScannStrategy(cfg))

The strategies call the same loops as the trial runners (:mod:`experiments.methods.growth`,
:mod:`experiments.methods.scann`): :class:`strategies.growth.GrowthSearch` epochs in a
:class:`strategies.training.TrainingPhase`, :func:`strategies.scann.synthesize`.  Nothing is
written to disk (``result["rows"]`` holds the metrics rows); the nnictl configs are the way to the
web UI and run folders.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn

from search_spaces import cost as costmodel
from search_spaces.errors import UserError

from .training import MemoryHost, TrainingPhase, cosine_schedule, evaluate, fit_epoch, sgd_nesterov

__all__ = ["Experiment", "ImageEvaluator", "TensorEvaluator", "GrowthStrategy", "ScannStrategy"]


class ImageEvaluator:
    """Loaders of an image task: ``train_loader`` trains, ``val_loader`` scores each epoch,
    ``test_loader`` (optional) scores the exported network; ``input_shape`` defaults to the first
    training sample's."""

    def __init__(self, train_loader, val_loader, *, test_loader=None, input_shape: tuple[int, ...] | None = None,
                 device: str = "cpu", progress: bool = False):
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.input_shape = tuple(input_shape) if input_shape is not None else tuple(train_loader.dataset[0][0].shape)
        self.device, self.progress = torch.device(device), progress


class TensorEvaluator:
    """An in-memory tabular task (:class:`strategies.scann.TensorData`: train / val / test tensors)."""

    def __init__(self, data, *, progress: bool = False):
        self.data, self.progress = data, progress


class GrowthStrategy:
    """Growth by structured continuous sparsification (paper 001; :mod:`strategies.growth`) on a
    :class:`search_spaces.growth_spaces.GrowableNet`, then an optional fine-tuning of the compact
    network (``finetune_epochs``, SGD with ``finetune_lr`` and the config's momentum / weight decay,
    cosine; Sec. 4.2 fine-tunes 40 epochs on CIFAR, Sec. 4.1 none) - the trial runner's steps."""

    def __init__(self, config, *, seed: int = 0, finetune_epochs: int = 0, finetune_lr: float = 0.01):
        from .growth import GrowthConfig

        if not isinstance(config, GrowthConfig):
            raise UserError(f"GrowthStrategy needs a GrowthConfig, got {type(config).__name__}")
        if finetune_epochs < 0 or not finetune_lr > 0:
            raise UserError("finetune_epochs must be >= 0 and finetune_lr > 0")
        self.config, self.seed, self.finetune_epochs, self.finetune_lr = config, seed, finetune_epochs, finetune_lr

    def run(self, space: nn.Module, evaluator: ImageEvaluator) -> dict[str, Any]:
        from search_spaces.growth_spaces import GrowableNet

        from .growth import GrowthSearch

        if not isinstance(space, GrowableNet) or not isinstance(evaluator, ImageEvaluator):
            raise UserError("GrowthStrategy runs on a GrowableNet with an ImageEvaluator")
        ev, cfg = evaluator, self.config
        host = MemoryHost(progress=ev.progress)
        search = GrowthSearch(space, cfg, input_shape=ev.input_shape, steps_per_epoch=len(ev.train_loader),
                              seed=self.seed, device=ev.device)

        def grow_epoch(epoch: int, bar) -> dict[str, Any]:
            row = search.run_epoch(ev.train_loader, bar=bar)
            val = evaluate(search.net, ev.val_loader, ev.device)
            return {**row, "val_loss": val.loss, "val_acc": val.acc}

        grow = TrainingPhase(host, "grow", cfg.epochs, seed=self.seed, loader=ev.train_loader, desc="grow")
        grow.run(grow_epoch, state={"search": search})
        compact, arch = search.export()
        compact = compact.to(ev.device)
        if self.finetune_epochs:
            torch.manual_seed(self.seed + 1)
            opt = sgd_nesterov(compact.parameters(), lr=self.finetune_lr, momentum=cfg.weight_momentum,
                               weight_decay=cfg.weight_decay, nesterov=False)
            sched = cosine_schedule(opt, self.finetune_epochs * len(ev.train_loader))
            TrainingPhase(host, "finetune", self.finetune_epochs, seed=self.seed, reseed=1, loader=ev.train_loader,
                          desc="fine-tune").run(
                lambda epoch, bar: fit_epoch(compact, ev.train_loader, ev.val_loader, opt, scheduler=sched,
                                             device=ev.device, where=f"finetune epoch {epoch}", bar=bar)[2],
                state={"model": compact, "opt": opt, "sched": sched})
        compact.eval()
        cost = costmodel.profile(compact.cpu(), ev.input_shape)
        compact.to(ev.device)
        result = {"arch": arch, "model": compact, "params": cost.params, "flops": cost.flops,
                  "params_ratio": cost.params / search.full_params, "val_acc": evaluate(compact, ev.val_loader, ev.device).acc,
                  "rows": list(host.rows)}
        if ev.test_loader is not None:
            result["test_acc"] = evaluate(compact, ev.test_loader, ev.device).acc
        return result


class ScannStrategy:
    """SCANN's grow-and-prune synthesis (paper 002; :func:`strategies.scann.synthesize`) from a seed
    :class:`search_spaces.feedforward.FeedForwardNet` (:func:`strategies.scann.networks.seed_network`).
    ``config`` must be resolved (:meth:`strategies.scann.ScannConfig.for_scheme`); the result is
    Algorithm 2's best-validation network."""

    def __init__(self, config, *, seed: int = 0, reference_acc: float | None = None, tolerance: float = 0.005):
        from .scann import ScannConfig

        if not isinstance(config, ScannConfig) or not config.resolved:
            raise UserError("ScannStrategy needs a resolved ScannConfig (ScannConfig.for_scheme(...))")
        self.config, self.seed, self.reference_acc, self.tolerance = config, seed, reference_acc, tolerance

    def run(self, space: nn.Module, evaluator: TensorEvaluator) -> dict[str, Any]:
        from .scann import synthesize
        from .scann.networks import export_network

        if not isinstance(evaluator, TensorEvaluator):
            raise UserError("ScannStrategy runs with a TensorEvaluator")
        rows: list[dict[str, Any]] = []
        best, synth = synthesize(space, self.config, evaluator.data, seed=self.seed, reference_acc=self.reference_acc,
                                 tolerance=self.tolerance, callback=rows.append)
        exported = export_network(best)
        result = {"arch": exported.arch, "model": best, "params": exported.params, "flops": exported.flops,
                  "val_acc": synth.best.val_acc, "checkpoints": [c.figures() for c in synth.checkpoints], "rows": rows}
        if evaluator.data.test is not None:
            result["test_acc"] = evaluate(best, evaluator.data.test).acc
        return result


class Experiment:
    """``Experiment(space, evaluator, strategy)``: :meth:`run` runs ``strategy.run(space, evaluator)``
    once and keeps its result; :meth:`export_top_models` gives the found network as NNI's does
    (``formatter="dict"``: the architecture, ``"instance"``: the trained compact model)."""

    def __init__(self, space: nn.Module, evaluator: Any, strategy: Any):
        if not callable(getattr(strategy, "run", None)):
            raise UserError(f"{type(strategy).__name__} is not a strategy (no run(space, evaluator))")
        self.space, self.evaluator, self.strategy = space, evaluator, strategy
        self.result: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        if self.result is None:
            self.result = self.strategy.run(self.space, self.evaluator)
        return self.result

    def export_top_models(self, top_k: int = 1, *, formatter: Literal["dict", "instance"] = "dict") -> list[Any]:
        if self.result is None:
            raise RuntimeError("run() the experiment first")
        if formatter not in ("dict", "instance"):
            raise UserError(f"formatter must be 'dict' or 'instance', got {formatter!r}")
        return [self.result["arch"] if formatter == "dict" else self.result["model"]]
