"""Training helpers shared by every strategy: one epoch of SGD, evaluation, NaN guard.

Kept deliberately small; strategies own their loops' structure (alternating steps, growth
events), and call these for the parts that are the same everywhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.errors import TrialFailed

__all__ = ["EpochStats", "check_finite", "evaluate", "train_epoch", "sgd_nesterov", "cosine_schedule", "progress"]


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
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu") -> EpochStats:
    was = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total_loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += y.numel()
    model.train(was)
    return EpochStats(total_loss / max(n, 1), correct / max(n, 1), n)


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                scheduler=None, device: torch.device | str = "cpu", where: str = "train",
                grad_clip: float | None = None, on_step: Callable[[int], None] | None = None,
                bar=None) -> EpochStats:
    """One pass over ``loader``; the scheduler (if any) steps per batch."""
    model.train()
    total_loss, correct, n = 0.0, 0, 0
    for i, (x, y) in enumerate(loader):
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
