"""The cost model: the single place CompactNAS computes what a network costs.

Conventions (stated once, used everywhere):

* **params** - number of trainable and non-trainable parameters (``numel`` of ``parameters()``;
  BatchNorm running statistics are buffers and are not counted, as in torchvision and the papers).
* **FLOPs** - floating-point operations of one forward pass for ONE sample, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-accumulate as
  **2 FLOPs** (``FLOPs = 2 * MACs``).  Many papers quote MACs as "FLOPs"; divide by two to
  compare with them.  Only matmul/conv-like ops are counted (element-wise ops, BN and
  activations are not), as in the usual "FLOPs" tables.
* **train FLOPs** - FLOPs of forward + backward for a whole batch, counted on what really ran
  (:func:`count_train_flops`).  Masking weights does not reduce this number; only changed
  shapes do (DESIGN.md).
* **bytes** - bytes moved by one forward pass of one sample: weights (``params * 4``, fp32)
  plus every leaf module's output activation (written once, fp32).
* **compute intensity** - ``FLOPs / bytes`` (FLOPs per byte moved), the roofline-style measure
  the EPNAS paper constrains.
* **latency** - median wall-clock milliseconds of a batch-1 forward on the CPU after warm-up.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Cost",
    "count_params",
    "count_flops",
    "count_train_flops",
    "count_bytes",
    "measure_latency",
    "profile",
    "BYTES_PER_ELEMENT",
]

BYTES_PER_ELEMENT = 4  # fp32


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int
    bytes: int
    intensity: float
    latency_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _example(input_shape: Sequence[int], batch: int = 1, device=None) -> torch.Tensor:
    return torch.zeros((batch, *input_shape), device=device)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _flops_of(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def _forward_eval(model: nn.Module, x: torch.Tensor):
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_shape: Sequence[int] | None = None, *, example: torch.Tensor | None = None) -> int:
    """Forward FLOPs (2 x MACs) for one sample of shape ``input_shape`` (C, H, W) or ``(features,)``.

    ``example`` may be given instead; then its batch size divides the count.
    """
    x = example if example is not None else _example(input_shape, device=_device_of(model))
    total = _flops_of(lambda: _forward_eval(model, x))
    return total // max(1, x.shape[0])


def count_train_flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      loss_fn: Callable | None = None) -> int:
    """FLOPs of one real training step's forward + backward on this batch (whole batch).

    The model runs in its current mode; gradients are computed and then cleared again, and the
    buffers (BatchNorm running statistics, which a train-mode forward updates) are restored, so
    counting leaves the model exactly as it was (a resumed run then matches an uninterrupted one).
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def step():
        loss = loss_fn(model(inputs), targets)
        loss.backward()

    total = _flops_of(step)
    for p, g in zip(params, saved):
        p.grad = g
    with torch.no_grad():
        for b, old in buffers:
            b.copy_(old)
    return total


def count_bytes(model: nn.Module, input_shape: Sequence[int] | None = None, *, example: torch.Tensor | None = None) -> int:
    """Weights (fp32) + output activations of every leaf module for one sample."""
    x = example if example is not None else _example(input_shape, device=_device_of(model))
    act = 0

    def hook(_m, _inp, out):
        nonlocal act
        if isinstance(out, torch.Tensor):
            act += out.numel()
        elif isinstance(out, (tuple, list)):
            act += sum(o.numel() for o in out if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        _forward_eval(model, x)
    finally:
        for h in handles:
            h.remove()
    act //= max(1, x.shape[0])
    return (count_params(model) + act) * BYTES_PER_ELEMENT


def measure_latency(model: nn.Module, input_shape: Sequence[int], *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of a batch-1 forward (eval mode, no grad) on the model's device.

    CUDA kernels run asynchronously: each timed forward is bracketed by ``torch.cuda.synchronize``,
    so the time is the kernels' and not only their launch."""
    x = _example(input_shape, device=_device_of(model))
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        _forward_eval(model, x)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        _forward_eval(model, x)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def profile(model: nn.Module, input_shape: Sequence[int], *, latency: bool = False, repeats: int = 20) -> Cost:
    flops = count_flops(model, input_shape)
    nbytes = count_bytes(model, input_shape)
    return Cost(
        params=count_params(model),
        flops=flops,
        bytes=nbytes,
        intensity=flops / nbytes if nbytes else 0.0,
        latency_ms=measure_latency(model, input_shape, repeats=repeats) if latency else None,
    )


def _device_of(model: nn.Module):
    for p in model.parameters():
        return p.device
    return None
