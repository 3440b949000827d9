"""The one resumable training phase every method runs, and the step helpers it is made of.

A run is a sequence of *phases* (ProxylessNAS: ``search`` then ``retrain``; growth: ``grow`` then
``finetune``; SCANN: ``baseline`` then ``scann`` ...).  :class:`TrainingPhase` owns what is the same
in all of them, so a method adds an epoch function, never another loop:

* **reseeding**: before epoch ``e`` the training loader's generator is reseeded with
  :func:`reseed_loader` (``seed * 100003 + reseed * 50000 + e``), so a resumed run sees the same batches;
* **resume**: at each epoch end the phase saves the ``state_dict()`` of the objects it was handed
  (model, optimizer, scheduler, a search strategy ...) and the global RNG states into the host's
  checkpoint; a new process that finds them loads them and continues at the next epoch.  The RNG
  states are restored exactly once, at the point where the checkpoint was taken (a phase's epoch
  end or its :meth:`TrainingPhase.finish`), which is the only point where they are that run's state;
* **progress**: a tqdm bar per phase (stderr: the terminal and NNI's trial log);
* **reporting**: the epoch function's row gets ``phase``, ``epoch`` and the phase's cumulative
  ``time_s`` (wall) and ``cpu_time_s`` (``time.process_time``: this process's CPU seconds, which
  do not grow when other processes share the cores) and goes to the host (a trial's
  ``metrics.csv`` + NNI intermediate result); a row's ``train_flops`` (counted training FLOPs of
  the epoch) is summed into the phase's record;
* **checkpointing**: through the host (a trial's ``checkpoint.pt``, written atomically).

The host is anything with a ``state`` dict, ``checkpoint()``, ``report(row)`` and ``progress``:
:class:`experiments.harness.RunContext` for a trial, :class:`MemoryHost` for in-process use
(the Python API, cross-validation folds, benchmarks), where nothing is written.

Data: a ``torch.utils.data.DataLoader`` or its tensor twin :class:`TensorLoader` (shuffled
mini-batches of in-memory tensors drawn with a ``torch.Generator``), so tabular methods train with
the same :func:`train_epoch` and :func:`evaluate` as the image ones.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.errors import TrialFailed

__all__ = ["EpochStats", "MemoryHost", "PhaseHost", "TensorLoader", "TrainingPhase", "check_finite",
           "cosine_schedule", "epoch_seed", "evaluate", "fit_epoch", "progress", "reseed_loader", "rng_state",
           "seed_everything", "set_rng_state", "sgd_nesterov", "train_epoch"]


# --------------------------------------------------------------------------- RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states (augmentation draws from them; on a GPU, dropout and every random op on
    CUDA tensors draw from the CUDA generators), for checkpoints."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def epoch_seed(seed: int, epoch: int, *, phase: int = 0) -> int:
    """The seed of one (seed, phase, epoch): the one reseed rule of the project."""
    return seed * 100003 + phase * 50000 + epoch


def reseed_loader(loader: Any, seed: int, epoch: int, *, phase: int = 0) -> None:
    """Reshuffle deterministically per (seed, phase, epoch) (:func:`epoch_seed`)."""
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(epoch_seed(seed, epoch, phase=phase))


# --------------------------------------------------------------------------- data


class TensorLoader:
    """Shuffled mini-batches of in-memory tensors: ``DataLoader``'s tensor twin.

    Each pass draws one permutation from ``generator`` (which the caller may share with other
    draws, e.g. SCANN's growth batches) and yields ``(X[idx], y[idx])`` slices of ``batch_size``;
    no batch is dropped.  ``generator`` is exposed like a DataLoader's, so :func:`reseed_loader`
    applies to both.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, *, batch_size: int, generator: torch.Generator):
        self.X, self.y, self.batch_size, self.generator = X, y, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(self.y), generator=self.generator)
        for i in range(0, len(self.y), self.batch_size):
            idx = perm[i:i + self.batch_size].to(self.X.device)
            yield self.X[idx], self.y[idx]


def _eval_batches(data: Any, batch_size: int) -> Iterable:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        X, y = data
        return ((X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))
    return data


# --------------------------------------------------------------------------- steps


@dataclass
class EpochStats:
    loss: float
    acc: float
    n: int


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Raise :class:`TrialFailed` naming ``where`` when the loss is NaN/inf."""
    if not torch.isfinite(loss.detach()).all():
        raise TrialFailed(f"non-finite loss ({float(loss.detach())}) at {where}")


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, device: torch.device | str | None = None, *,
             batch_size: int = 4096) -> EpochStats:
    """Mean cross-entropy and accuracy of ``model`` in eval mode on ``data``: a loader of ``(x, y)``
    batches, or a ``(X, y)`` pair of tensors (evaluated in slices of ``batch_size``)."""
    was = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for x, y in _eval_batches(data, batch_size):
        if device is not None:
            x, y = x.to(device), y.to(device)
        out = model(x)
        total_loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += y.numel()
    model.train(was)
    return EpochStats(total_loss / max(n, 1), correct / max(n, 1), n)


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                scheduler=None, device: torch.device | str | None = None, where: str = "train",
                grad_clip: float | None = None, on_step: Callable[[int], None] | None = None,
                bar=None) -> EpochStats:
    """One pass of cross-entropy SGD over ``loader``; the scheduler (if any) steps per batch."""
    model.train()
    total_loss, correct, n = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
        if device is not None:
            x, y = x.to(device), y.to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        check_finite(loss, f"{where} step {i}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += float(loss.detach()) * y.numel()
        correct += int((out.argmax(1) == y).sum())
        n += y.numel()
        if on_step is not None:
            on_step(i)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / n:.3f}", acc=f"{correct / n:.3f}", refresh=False)
    return EpochStats(total_loss / max(n, 1), correct / max(n, 1), n)


def sgd_nesterov(params, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = True) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine decay to 0 (ProxylessNAS's schedule)."""
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def progress(total: int, desc: str, *, enabled: bool = True):
    """A tqdm bar on stderr (shown in the NNI trial log and the terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True, mininterval=1.0)


# --------------------------------------------------------------------------- the phase


class PhaseHost(Protocol):
    """Where phases keep their checkpoint state and send their rows."""

    state: dict[str, Any]
    progress: bool

    def checkpoint(self) -> None: ...

    def report(self, row: dict[str, Any]) -> None: ...


class MemoryHost:
    """A host that keeps everything in memory (rows in ``rows``; ``checkpoint`` does nothing)."""

    def __init__(self, *, progress: bool = False):
        self.state: dict[str, Any] = {}
        self.progress = progress
        self.rows: list[dict[str, Any]] = []

    def checkpoint(self) -> None:
        pass

    def report(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


class TrainingPhase:
    """One named, resumable phase of ``epochs`` epochs on ``host`` (see the module docstring).

    ``run(epoch_fn, state={...})`` calls ``epoch_fn(epoch, bar) -> row | None`` for the epochs not
    done yet; ``state`` names the objects whose ``state_dict`` is the phase's resumable state.
    ``until()``, checked before each epoch, ends the phase early (a search-exit criterion).
    :meth:`finish` marks the phase done with a result (e.g. the exported architecture) and drops
    its per-epoch state; a finished phase is skipped by a resumed run, which reads ``result``.
    A phase whose name was already used in the run continues that phase's record.
    """

    def __init__(self, host: PhaseHost | None, name: str, epochs: int, *, seed: int = 0, reseed: int = 0,
                 loader: Any = None, steps_per_epoch: int | None = None, desc: str | None = None):
        self.host = host if host is not None else MemoryHost()
        self.name, self.epochs, self.seed, self.reseed, self.loader = name, int(epochs), seed, reseed, loader
        if steps_per_epoch is None:
            steps_per_epoch = len(loader) if loader is not None and hasattr(loader, "__len__") else 1
        self.steps_per_epoch = steps_per_epoch
        self.desc = desc or name
        phases = self.host.state.setdefault("phases", {})
        self.record: dict[str, Any] = phases.setdefault(
            name, {"epochs_done": 0, "time_s": 0.0, "done": False, "state": None, "result": None})
        self.record.setdefault("cpu_time_s", 0.0)
        self.record.setdefault("train_flops", 0)
        self._start: int | None = None

    # ---- what a resumed run reads --------------------------------------------------------
    @property
    def done(self) -> bool:
        return bool(self.record["done"])

    @property
    def epochs_done(self) -> int:
        return int(self.record["epochs_done"])

    @property
    def time_s(self) -> float:
        return float(self.record["time_s"])

    @property
    def result(self) -> Any:
        return self.record["result"]

    def add_train_flops(self, flops: float) -> None:
        """Count ``flops`` training FLOPs to the phase (for epoch functions that report no row)."""
        self.record["train_flops"] += flops

    # ---- running ---------------------------------------------------------------------------
    def _restore_rng_if_here(self) -> None:
        """Restore the checkpoint's RNG states if it was taken in this phase (once per process)."""
        host = self.host
        if host.state.get("at") == self.name and not getattr(host, "_rng_restored", False):
            set_rng_state(host.state["rng"])
            host._rng_restored = True

    def _save(self) -> None:
        self.host.state["at"] = self.name
        self.host.state["rng"] = rng_state()
        self.host._rng_restored = True   # what this process holds now is the run's state
        self.host.checkpoint()

    def restore(self, state: Mapping[str, Stateful] | None = None) -> int:
        """Load the saved per-epoch state into ``state``'s objects and the RNG (if the checkpoint is
        this phase's); returns the first epoch to run.  :meth:`run` calls it; call it yourself when
        something must happen between restoring and the first epoch."""
        if self.record["state"] is not None:
            for key, obj in (state or {}).items():
                obj.load_state_dict(self.record["state"][key])
        self._restore_rng_if_here()
        self._start = self.epochs_done
        return self._start

    def run(self, epoch_fn: Callable[[int, Any], dict[str, Any] | None], *,
            state: Mapping[str, Stateful] | None = None, until: Callable[[], bool] | None = None) -> "TrainingPhase":
        if self.done:
            self._restore_rng_if_here()
            return self
        start = self._start if self._start is not None else self.restore(state)
        self._start = None
        with progress(self.epochs * self.steps_per_epoch, self.desc, enabled=self.host.progress) as bar:
            bar.update(start * self.steps_per_epoch)
            for epoch in range(start, self.epochs):
                if until is not None and until():
                    break
                if self.loader is not None:
                    reseed_loader(self.loader, self.seed, epoch, phase=self.reseed)
                t0, c0 = time.perf_counter(), time.process_time()
                row = epoch_fn(epoch, bar)
                self.record["time_s"] += time.perf_counter() - t0
                self.record["cpu_time_s"] += time.process_time() - c0
                self.record["epochs_done"] = epoch + 1
                if row is not None:
                    if isinstance(row.get("train_flops"), (int, float)):
                        self.add_train_flops(row["train_flops"])
                    self.host.report({"phase": self.name, "epoch": epoch, **row, "time_s": self.record["time_s"],
                                      "cpu_time_s": self.record["cpu_time_s"]})
                self.record["state"] = {k: obj.state_dict() for k, obj in (state or {}).items()}
                self._save()
        return self

    def finish(self, result: Any = None) -> Any:
        """Mark the phase done with ``result`` (kept in the checkpoint) and checkpoint; returns ``result``."""
        self.record.update(done=True, state=None, result=result)
        self._save()
        return result


def fit_epoch(model: nn.Module, train_loader: Iterable, val_loader: Any, optimizer: torch.optim.Optimizer, *,
              scheduler=None, device=None, where: str = "train", bar=None) -> tuple[EpochStats, EpochStats, dict]:
    """One epoch of supervised training then validation; ``(train, val, row)`` with the standard
    row (train/val loss and accuracy, the learning rate after the epoch)."""
    tr = train_epoch(model, train_loader, optimizer, scheduler=scheduler, device=device, where=where, bar=bar)
    val = evaluate(model, val_loader, device)
    row = {"train_loss": tr.loss, "train_acc": tr.acc, "val_loss": val.loss, "val_acc": val.acc,
           "lr": optimizer.param_groups[0]["lr"]}
    return tr, val, row
