"""SCANN's architecture-changing operations (Sec. 3.6) and the optimizer-state surgery they need.

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt``.  The space is
:class:`search_spaces.feedforward.FeedForwardNet` (masked general feed-forward graph).

* :func:`grow_connections` -- gradient-based growth (Dai et al.'s NeST rule): score every dormant
  allowed connection by ``|dL/dw|`` on a large batch and activate the top ones, either up to a
  share of all allowed connections (``to``, "activates 35 percent of all connections") or those
  above a threshold; new weights start at 0.  :func:`full_growth` restores every allowed
  connection (Scheme C).
* :func:`grow_neurons` -- duplicate the neurons with the highest mean activation on a large batch,
  with noise on the copies' weights to break the symmetry (Algorithm 4).  The noise is ``noise`` x
  the RMS of the parent's active weights (the paper gives no scale).
* :func:`prune_connections` -- magnitude-based pruning (Algorithm 5), by share of the existing
  connections or down to a number of connections; neurons left without connections are removed
  (:meth:`FeedForwardNet.remove_dead_neurons`, function-preserving).  Ours: pruning never cuts
  the last path from the inputs to the outputs -- the strongest path (:func:`widest_path`: the
  one whose weakest connection is largest) is always kept, so a keep target below one path's
  length keeps that path instead of exporting a network whose outputs ignore its inputs.

Masks hold after every optimizer step: the forward pass uses ``weight * mask`` (so dormant
weights get no gradient), and a step post-hook (:func:`install_mask_hook`) zeroes dormant
weights *and* their optimizer state (momentum buffers, Adam moments), so neither momentum nor
weight decay can revive a pruned weight, whatever changed the mask.  Regrown weights get fresh
(zero) optimizer state (:func:`reset_optimizer_entries`); rows/columns of grown or removed neurons
are remapped (:func:`remap_optimizer`).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from search_spaces.feedforward import FeedForwardNet, Reindex

from ..training import check_finite

__all__ = ["connection_scores", "enforce_masks", "full_growth", "grow_connections", "grow_neurons",
           "install_mask_hook", "make_optimizer", "prune_connections", "remap_optimizer", "reset_optimizer_entries",
           "widest_path"]


# --------------------------------------------------------------------------- optimizer plumbing


def make_optimizer(net: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """Adam or SGD over ``net`` with ``cfg``'s ``optimizer``, ``lr``, ``momentum`` and ``weight_decay``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _state_tensors(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> Iterable[tuple[str, torch.Tensor]]:
    if optimizer is None:
        return []
    state = optimizer.state.get(param, {})
    return [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0]


@torch.no_grad()
def enforce_masks(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet) -> None:
    """Zero dormant weights and their optimizer state (momentum, Adam moments)."""
    net.apply_mask_()
    for _, t in _state_tensors(optimizer, net.weight):
        if t.shape == net.mask.shape:
            t.mul_(net.mask)


def install_mask_hook(optimizer: torch.optim.Optimizer, net: FeedForwardNet):
    """Re-apply the masks after every ``optimizer.step()``; returns the hook handle."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: enforce_masks(opt, net))


@torch.no_grad()
def reset_optimizer_entries(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet,
                            positions: torch.Tensor) -> None:
    """Fresh optimizer state for the weights at ``positions`` (bool, weight-shaped): regrown ones."""
    for _, t in _state_tensors(optimizer, net.weight):
        if t.shape == positions.shape:
            t[positions] = 0


@torch.no_grad()
def remap_optimizer(optimizer: torch.optim.Optimizer | None, net: FeedForwardNet, reindex: Reindex) -> None:
    """Move per-weight optimizer state along with rows/columns after neurons were added/removed.

    New rows/columns (index -1) start with zero state.
    """
    if optimizer is None:
        return
    rows, cols = reindex.rows, reindex.cols
    rv, cv = rows >= 0, cols >= 0
    for param in (net.weight, net.bias):
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, t in list(state.items()):
            if not torch.is_tensor(t) or t.dim() == 0:
                continue
            new = torch.zeros(param.shape, dtype=t.dtype, device=t.device)
            if t.dim() == 2:
                sub = t[rows[rv]][:, cols[cv]]
                new[torch.nonzero(rv).flatten()[:, None], torch.nonzero(cv).flatten()[None, :]] = sub
            else:
                new[rv] = t[rows[rv]]
            state[key] = new


# --------------------------------------------------------------------------- growth


def connection_scores(net: FeedForwardNet, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|dL/dw|`` for every entry of the weight matrix (dormant ones included) on batch ``(X, y)``."""
    w = net.effective_weight().detach().requires_grad_(True)
    out, _ = net.forward_hidden(X, w)
    loss = F.cross_entropy(out, y)
    check_finite(loss, "connection growth")
    (grad,) = torch.autograd.grad(loss, w)
    return grad.abs()


@torch.no_grad()
def _activate(net: FeedForwardNet, optimizer, pick: torch.Tensor) -> int:
    net.mask |= pick
    net.weight[pick] = 0.0
    reset_optimizer_entries(optimizer, net, pick)
    return int(pick.sum())


def grow_connections(net: FeedForwardNet, X: torch.Tensor, y: torch.Tensor, *, to: float | None = None,
                     count: int | None = None, threshold: float | None = None,
                     optimizer: torch.optim.Optimizer | None = None) -> int:
    """Gradient-based connection growth (Sec. 3.6.1); returns the number of connections activated.

    Exactly one of: ``to`` (grow until that share of all allowed connections is active),
    ``count`` (activate that many), ``threshold`` (activate those with ``|dL/dw| > threshold``).
    The highest ``|dL/dw|`` on the batch win; new weights are 0 and their optimizer state fresh.
    """
    if sum(v is not None for v in (to, count, threshold)) != 1:
        raise ValueError("give exactly one of to=, count=, threshold=")
    allowed = net.allowed()
    dormant = allowed & ~net.mask
    n_dormant = int(dormant.sum())
    if n_dormant == 0:
        return 0
    scores = connection_scores(net, X, y)
    if threshold is not None:
        return _activate(net, optimizer, dormant & (scores > threshold))
    if count is None:
        count = max(0, round(to * int(allowed.sum())) - net.connections)
    count = min(int(count), n_dormant)
    if count == 0:
        return 0
    flat = torch.where(dormant, scores, torch.full_like(scores, -1.0)).flatten()
    top = torch.topk(flat, count).indices
    pick = torch.zeros_like(flat, dtype=torch.bool)
    pick[top] = True
    return _activate(net, optimizer, pick.view_as(dormant))


def full_growth(net: FeedForwardNet, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore every allowed connection (Sec. 3.6.1, "full growth"); new weights start at 0."""
    return _activate(net, optimizer, net.allowed() & ~net.mask)


@torch.no_grad()
def grow_neurons(net: FeedForwardNet, X: torch.Tensor, count: int, *, max_neurons: int | None = None,
                 noise: float = 0.1, generator: torch.Generator | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Duplicate the ``count`` hidden neurons with the highest mean activation on ``X`` (Algorithm 4).

    Never exceeds ``max_neurons``; returns the parents that were duplicated.
    """
    room = count if max_neurons is None else min(count, max_neurons - net.num_hidden)
    if room <= 0 or net.num_hidden == 0:
        return []
    was = net.training
    net.eval()
    _, act = net.forward_hidden(X)
    net.train(was)
    parents = torch.topk(act.mean(0), min(room, net.num_hidden)).indices.tolist()
    reindex = net.add_neurons(parents, noise=noise, generator=generator)
    remap_optimizer(optimizer, net, reindex)
    return parents


# --------------------------------------------------------------------------- pruning


@torch.no_grad()
def widest_path(net: FeedForwardNet, mask: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """The input-to-output path through ``mask``'s connections (default: the network's) whose
    weakest ``|w|`` is largest, as ``(row, column)`` entries of the weight matrix, inputs first;
    ``[]`` when no output is reachable from any input.  One pass over the hidden groups in their
    order (connections only run from earlier groups to later ones)."""
    mask = net.mask if mask is None else mask
    D, H = net.num_inputs, net.num_hidden
    score = torch.where(mask, net.weight.abs(), torch.full_like(net.weight, -torch.inf))
    best = torch.full((D + H,), -torch.inf, device=score.device, dtype=score.dtype)
    best[:D] = torch.inf
    parent = torch.full((score.shape[0],), -1, dtype=torch.long, device=score.device)
    for s, e in net.group_bounds():
        if e > s:
            val, arg = torch.minimum(score[s:e, :D + s], best[None, :D + s]).max(1)
            best[D + s:D + e], parent[s:e] = val, arg
    val, arg = torch.minimum(score[H:], best[None, :]).max(1)
    parent[H:] = arg
    k = int(val.argmax())
    if not bool(torch.isfinite(val[k])):
        return []
    path, row = [], H + k
    while True:
        col = int(parent[row])
        path.append((row, col))
        if col < D:
            return path[::-1]
        row = col - D


@torch.no_grad()
def prune_connections(net: FeedForwardNet, *, fraction: float | None = None, keep: int | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> tuple[int, int]:
    """Magnitude-based pruning (Algorithm 5): drop ``fraction`` of the existing connections, or all
    but the ``keep`` largest (one global ranking by ``|w|``), always keeping the strongest
    input-to-output path (:func:`widest_path`; at least its length is kept); then remove neurons
    left without any connection (Sec. 3.6.3).  Returns ``(connections pruned, neurons removed)``.
    """
    if (fraction is None) == (keep is None):
        raise ValueError("give exactly one of fraction=, keep=")
    active = net.connections
    path = widest_path(net)
    n_keep = round((1 - fraction) * active) if keep is None else int(keep)
    n_keep = max(1, len(path), min(n_keep, active))
    pruned = active - n_keep
    if pruned > 0:
        mag = torch.where(net.mask, net.weight.abs(), torch.full_like(net.weight, -1.0))
        for r, c in path:
            mag[r, c] = torch.inf
        mag = mag.flatten()
        top = torch.topk(mag, n_keep).indices
        mask = torch.zeros_like(mag, dtype=torch.bool)
        mask[top] = True
        net.mask &= mask.view_as(net.mask)
        enforce_masks(optimizer, net)
    removed, reindex = net.remove_dead_neurons(isolated_only=True)
    if removed:
        remap_optimizer(optimizer, net, reindex)
    return pruned, removed
