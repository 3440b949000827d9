"""SCANN's Algorithm 2: alternate architecture changes and weight training, keep the checkpoints.

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt`` (Sec. 3.7, Algorithm 2).  The checkpoint with
the best validation accuracy (ties: fewer connections) is the output (:class:`ScannSynthesis`,
H.A.); it also keeps the most compressed checkpoint whose validation accuracy is within
``tolerance`` of a reference (the MLP baseline), the paper's "M.C." column of Tables VI/VII
(the rules: :mod:`strategies.scann.selection`).

Deviations and choices where the paper is silent (or its text was lost in our copy)
-----------------------------------------------------------------------------------
* Hidden neurons are ordered in groups, not one by one (see :mod:`search_spaces.feedforward`).
* Pruning removes a neuron once all its connections are gone (the paper's rule), so growth can
  reconnect a half-connected neuron; evaluated and exported networks are additionally cleaned of
  neurons without inputs or outputs (function-preserving), and all figures count that structure.
* Keep targets (``prune_keep``) are shares of the *seed's* allowed connections -- a fixed size
  like Sec. 4.1's "19.3K connections" -- not of the current network, which shrinks as neurons go.
* The convolutional part in image mode is frozen after training the baseline ("kept the same").
* Checkpoints are taken every epoch after an iteration's last pruning (``checkpoint_epochs``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from search_spaces.cost import CountedLoader
from search_spaces.feedforward import FeedForwardNet

from ..training import TensorLoader, evaluate, train_epoch
from .config import ScannConfig
from .networks import TensorData, network_cost
from .operations import (enforce_masks, full_growth, grow_connections, grow_neurons, install_mask_hook,
                         make_optimizer, prune_connections)
from .selection import best_validation, most_compressed, select_checkpoint, within_tolerance

__all__ = ["Checkpoint", "CostFn", "ScannSynthesis", "synthesize"]

CostFn = Callable[[FeedForwardNet], tuple[int, int]]


@dataclass
class Checkpoint:
    """A synthesised network at the end of an iteration and its figures."""

    iteration: int
    val_acc: float
    test_acc: float | None
    connections: int
    params: int
    flops: int
    neurons: int
    depth: int
    snapshot: dict[str, Any] = field(repr=False)

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("snapshot")
        return d


class ScannSynthesis:
    """Algorithm 2: iterate architecture changes (per scheme) and weight training; keep checkpoints.

    ``cfg`` is a resolved :class:`ScannConfig` (:meth:`ScannConfig.resolve`).  Iteration 0 trains
    the seed for ``initial_epochs`` and applies the initial pruning (``initial_prune`` of the
    existing connections, else down to ``keep_at(0)``); iterations ``1..iterations`` apply the
    scheme's operations, each followed by ``epochs_per_op`` epochs.  Every iteration yields one
    checkpoint (its best-validation epoch after the last pruning, see
    ``ScannConfig.checkpoint_epochs``), which may become ``best`` (the paper's output, "H.A.") or
    ``compact`` (fewest parameters with validation accuracy within ``tolerance`` of
    ``reference_acc``, "M.C."); with ``keep_all`` every iteration's checkpoint is kept in
    ``checkpoints`` as well.  :meth:`step` runs one iteration (one epoch of a resumable training
    phase; :meth:`state_dict` is its state).

    ``cost_fn(net) -> (params, flops)`` defaults to the FC network's sparse cost; image mode
    passes one that adds the convolutional extractor.  The test split (if any) is evaluated for
    the record only; it never influences a choice.

    ``epoch_plan`` (one epoch number per iteration, 1-based) replaces the validation choice of
    each checkpoint's epoch: iteration ``i``'s checkpoint is its state after ``epoch_plan[i]``
    recovery epochs, so the validation data choose nothing (a cross-validation fold replays the
    epochs its main run chose, see ``experiments.methods.scann``).  Every record holds the epoch
    its checkpoint was taken at (``epoch``).
    """

    def __init__(self, net: FeedForwardNet, cfg: ScannConfig, data: TensorData, *, seed: int = 0,
                 reference_acc: float | None = None, tolerance: float = 0.005, cost_fn: CostFn | None = None,
                 keep_all: bool = False, epoch_plan: Sequence[int] | None = None):
        if not cfg.resolved:
            raise ValueError("ScannSynthesis needs a resolved config (ScannConfig.resolve or .for_scheme)")
        self.net = net
        self.epoch_plan = list(epoch_plan) if epoch_plan is not None else None
        if self.epoch_plan is not None and len(self.epoch_plan) < cfg.iterations + 1:
            raise ValueError(f"epoch_plan needs one epoch per iteration ({cfg.iterations + 1}), "
                             f"got {len(self.epoch_plan)}")
        self.keep_all = keep_all
        self.cfg = cfg
        self.data = data
        self.reference_acc = reference_acc
        self.tolerance = tolerance
        self.cost_fn = cost_fn or network_cost
        self.generator = torch.Generator().manual_seed(seed)
        # one generator for the batches and the growth draws, so a resumed synthesis draws the same;
        # counted: each record's ``train_flops`` (the synthesis's training cost)
        self.loader = CountedLoader(TensorLoader(data.X_train, data.y_train, batch_size=cfg.batch_size,
                                                 generator=self.generator))
        self.optimizer = make_optimizer(net, cfg)
        self._hook = install_mask_hook(self.optimizer, net)
        enforce_masks(self.optimizer, net)
        #: Keep targets are shares of the *seed's* allowed connections ("prune until 19.3K
        #: connections are left"): a fixed size, whatever neurons were removed since.
        self.reference_connections = net.allowed_connections()
        self.iteration = 0
        self.best: Checkpoint | None = None
        self.compact: Checkpoint | None = None
        #: Every iteration's checkpoint (``keep_all``), for a choice made outside (e.g. by cross-validation).
        self.checkpoints: list[Checkpoint] = []
        self.history: list[dict[str, Any]] = []

    # ---- loop ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.iteration > self.cfg.iterations

    def _growth_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.data.X_train, self.data.y_train
        if len(y) <= self.cfg.growth_batch:
            return X, y
        idx = torch.randperm(len(y), generator=self.generator)[: self.cfg.growth_batch].to(X.device)
        return X[idx], y[idx]

    def _train(self, epochs: int, what: str) -> tuple[float, float]:
        """``epochs`` passes over the training split; the last one's (loss, accuracy)."""
        stats = None
        for e in range(epochs):
            stats = train_epoch(self.net, self.loader, self.optimizer,
                                where=f"SCANN iteration {self.iteration} ({what}) epoch {e}")
        return (stats.loss, stats.acc) if stats is not None else (float("nan"), float("nan"))

    def _train_tracked(self, epochs: int, what: str) -> tuple[tuple[float, float], dict[str, Any] | None, int]:
        """Train after the iteration's last pruning; with ``checkpoint_epochs`` return the snapshot
        of the best-validation epoch, or with ``epoch_plan`` the one after the planned epoch (the
        network itself keeps its last state); ``(train figures, snapshot or None, its epoch)``."""
        cfg = self.cfg
        best, best_key, best_epoch, tr = None, None, epochs, (float("nan"), float("nan"))
        planned = None
        if self.epoch_plan is not None:
            planned = min(max(int(self.epoch_plan[self.iteration]), 1), epochs)
        try:
            for e in range(epochs):
                for g in self.optimizer.param_groups:
                    g["lr"] = cfg.recovery_lr_at(e, epochs)
                tr = self._train(1, what)
                if planned is not None:
                    if e + 1 == planned:
                        best, best_epoch = self.net.snapshot(), planned
                    continue
                if not cfg.checkpoint_epochs:
                    continue
                val = evaluate(self.net, self.data.val)
                if best_key is None or (val.acc, -val.loss) > best_key:  # ties in accuracy: lower validation loss
                    best, best_key, best_epoch = self.net.snapshot(), (val.acc, -val.loss), e + 1
            return tr, best, best_epoch
        finally:
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.lr

    def _prune(self, counts: dict[str, int], iteration: int, initial: bool = False) -> None:
        cfg = self.cfg
        fraction = cfg.initial_prune if initial else cfg.prune_fraction
        if fraction is not None:
            p, r = prune_connections(self.net, fraction=fraction, optimizer=self.optimizer)
        else:
            keep = round(cfg.keep_at(iteration) * self.reference_connections)
            p, r = prune_connections(self.net, keep=keep, optimizer=self.optimizer)
        counts["pruned"] += p
        counts["neurons_removed"] += r

    def _apply(self, op: str, counts: dict[str, int]) -> None:
        cfg, net = self.cfg, self.net
        if op == "grow_connections":
            X, y = self._growth_batch()
            how = {"threshold": cfg.growth_threshold} if cfg.growth_threshold is not None else {"to": cfg.grow_to}
            counts["grown"] += grow_connections(net, X, y, optimizer=self.optimizer, **how)
        elif op == "full_growth":
            counts["grown"] += full_growth(net, self.optimizer)
        elif op == "grow_neurons":
            X, _ = self._growth_batch()
            added = grow_neurons(net, X, cfg.neuron_growth, max_neurons=cfg.max_neurons, noise=cfg.noise,
                                 generator=self.generator, optimizer=self.optimizer)
            counts["neurons_added"] += len(added)
        elif op == "prune":
            self._prune(counts, self.iteration)

    def step(self) -> dict[str, Any]:
        """Run one iteration; returns its record (also appended to ``history``)."""
        if self.finished:
            raise RuntimeError("synthesis already finished")
        cfg = self.cfg
        t0 = time.time()
        counts = {"grown": 0, "pruned": 0, "neurons_added": 0, "neurons_removed": 0}
        tr = (float("nan"), float("nan"))
        flops0 = self.loader.flops
        if self.iteration == 0:
            ops = ["seed", "prune"]
            if cfg.initial_epochs:
                tr = self._train(cfg.initial_epochs, "seed")
            self._prune(counts, 0, initial=True)
            tr, snap, epoch = self._train_tracked(cfg.epochs_per_op, "prune")
        else:
            ops = list(cfg.ops)
            for op in ops[:-1]:
                self._apply(op, counts)
                if cfg.epochs_per_op:
                    tr = self._train(cfg.epochs_per_op, op)
            self._apply(ops[-1], counts)
            tr, snap, epoch = self._train_tracked(cfg.epochs_per_op, ops[-1])
        record = self._record(ops, counts, tr, time.time() - t0, snap, epoch)
        record["train_flops"] = self.loader.flops - flops0
        self.iteration += 1
        return record

    def _record(self, ops: list[str], counts: dict[str, int], train: tuple[float, float], seconds: float,
                snapshot: dict[str, Any] | None = None, epoch: int | None = None) -> dict[str, Any]:
        data = self.data
        net = FeedForwardNet.from_snapshot(snapshot, device=data.X_val.device) if snapshot is not None else self.net
        net = net.cleaned()  # same function; the figures are those of the real structure
        val = evaluate(net, data.val)
        test = evaluate(net, data.test) if data.test is not None else None
        params, flops = self.cost_fn(net)
        stats = net.stats()
        ckpt = Checkpoint(iteration=self.iteration, val_acc=val.acc, test_acc=None if test is None else test.acc,
                          connections=net.connections, params=params, flops=flops, neurons=net.num_hidden,
                          depth=stats["depth"], snapshot=net.snapshot())
        if self.keep_all:
            self.checkpoints.append(ckpt)
        self.best = best_validation([c for c in (self.best, ckpt) if c is not None])
        if self.reference_acc is not None and within_tolerance(val.acc, self.reference_acc, self.tolerance):
            self.compact = most_compressed([c for c in (self.compact, ckpt) if c is not None])
        record = {"iteration": self.iteration, "ops": "+".join(ops), "train_loss": train[0], "train_acc": train[1],
                  "val_loss": val.loss, "val_acc": val.acc, "test_loss": None if test is None else test.loss,
                  "test_acc": ckpt.test_acc, "params": params, "flops": flops, **stats,
                  "raw_connections": self.net.connections, "raw_neurons": self.net.num_hidden, **counts,
                  "epoch": epoch, "time_s": seconds}
        self.history.append(record)
        return record

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> Checkpoint:
        while not self.finished:
            rec = self.step()
            if callback is not None:
                callback(rec)
        assert self.best is not None
        return self.best

    def selected(self, select: str = "best_val") -> tuple[Checkpoint, bool]:
        """The output checkpoint: ``best_val`` (Algorithm 2) or ``most_compressed`` (falls back to
        ``best_val`` when no checkpoint is within the tolerance); ``(checkpoint, met)``."""
        if self.best is None:
            raise RuntimeError("no iteration has run")
        return select_checkpoint(select, best=self.best, compact=self.compact)

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.snapshot(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "iteration": self.iteration,
                "reference_connections": self.reference_connections,
                "best": self.best, "compact": self.compact, "checkpoints": list(self.checkpoints),
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.restore(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.reference_connections = int(state["reference_connections"])
        self.best, self.compact = state["best"], state["compact"]
        self.checkpoints = list(state.get("checkpoints", []))
        self.history = list(state["history"])


def synthesize(net: FeedForwardNet, cfg: ScannConfig, data: TensorData, *, seed: int = 0,
               reference_acc: float | None = None, tolerance: float = 0.005,
               callback: Callable[[dict[str, Any]], None] | None = None) -> tuple[FeedForwardNet, ScannSynthesis]:
    """Run Algorithm 2 and return ``(best-validation network, the synthesis object)``."""
    synth = ScannSynthesis(net, cfg, data, seed=seed, reference_acc=reference_acc, tolerance=tolerance)
    best = synth.run(callback)
    return FeedForwardNet.from_snapshot(best.snapshot), synth
