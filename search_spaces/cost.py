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
* **latency** - median wall-clock milliseconds of a batch-1 forward on the CPU after warm-up
  (:func:`measure_latency`: PyTorch; :func:`measure_ort_latency`: the exported ONNX graph in
  onnxruntime's CPU provider with a stated number of threads, the figure a deployment sees).
* **counted training FLOPs of a loop** - :class:`CountedLoader`: the FLOPs counted while the first
  step of every pass over a loader runs, per sample, times the samples of the pass (a search's
  cost that does not depend on what else ran on the machine, unlike its wall time).
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
    "measure_ort_latency",
    "CountedLoader",
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


def measure_ort_latency(onnx_model: bytes, input_shape: Sequence[int], *, threads: int = 1, repeats: int = 50,
                        warmup: int = 5) -> float:
    """Median wall-clock milliseconds of a batch-1 run of a serialised ONNX model in onnxruntime's
    CPU execution provider, ``threads`` intra-op threads (and one inter-op thread, sequential
    execution) so the figure does not depend on the machine's core count."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    session = ort.InferenceSession(onnx_model, sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.zeros((1, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


class CountedLoader:
    """A loader that counts the training FLOPs of the loops run over it.

    Iterating yields the wrapped loader's ``(x, y)`` batches unchanged.  While the consumer works
    on the first batch of a pass (from yielding it until the next batch is asked for: the whole
    first step, forward + backward + anything else the step runs, e.g. ProxylessNAS's
    architecture step on a validation batch) a :class:`FlopCounterMode` counts what runs; that
    count per sample, times the samples of every batch of the pass, is added to :attr:`flops`.
    Counting one step per pass keeps the counter's overhead (several x on small CPU networks)
    off the other steps; within a pass the network's shapes are fixed, so the estimate is exact
    up to what varies from step to step (a sampled path).  ``generator`` and ``len`` are the
    wrapped loader's (so :func:`strategies.training.reseed_loader` applies to it); counting
    draws no random numbers and changes no result.
    """

    def __init__(self, loader):
        self.loader = loader
        self.flops = 0

    @property
    def generator(self):
        return getattr(self.loader, "generator", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        try:
            first = next(it)
        except StopIteration:
            return
        counter = FlopCounterMode(display=False)
        with counter:
            yield first
        per_sample = counter.get_total_flops() / max(1, len(first[1]))
        self.flops += int(round(per_sample * len(first[1])))
        for batch in it:
            self.flops += int(round(per_sample * len(batch[1])))
            yield batch


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
