"""The exported compact network, written once for every method: checks, ``model.pt``, ``model.onnx``.

Every method ends in one compact ``nn.Module`` (ProxylessNAS' retrained ResNet, growth's
``CompactNet``, the survey's dense networks, an EPNAS network, SCANN's pruned feed-forward net or
LeNet-5 features + pruned FC part).  :func:`save_model` is the one place that writes it
(``RunContext.save_model`` calls it), so no method has its own copy of the steps:

1. **Degenerate networks fail the trial** (:func:`degeneracy`): outputs that are NaN/inf on the
   run's test batch, outputs that do not depend on the input (no path from the input to the
   output: the gradient of the outputs with respect to the test batch is exactly zero), or a
   validation accuracy at chance -- at most :data:`CHANCE_MARGIN` above the better of ``1 /
   classes`` and the share of the validation split's most common class (what a constant
   prediction scores).  Such a network is no result: :class:`search_spaces.errors.TrialFailed`
   with the reason in one line (exit 1, ``error.txt``), unless the config sets
   ``allow_degenerate`` (pipeline smoke runs), when the summary says ``degenerate: 1``.
2. ``model.pt``: the ``state_dict`` on the CPU (load with ``weights_only=True``).
3. ``model.onnx``: the same network as ONNX (opset :data:`ONNX_OPSET`, a dynamic batch axis,
   input ``input``, output ``logits``), exported by PyTorch's TorchScript-based exporter
   (``dynamo=False``: the dynamo exporter needs ``onnxscript``, which the models here do not),
   checked in onnxruntime against PyTorch on the test batch (``onnx_max_abs_diff``; a warning
   where ``|ort - torch| > ONNX_ATOL + ONNX_RTOL * |torch|``: float32 rounding grows with the
   logits' size), and timed there (``ort_latency_ms``: CPU, batch 1, median,
   ``ort_threads`` threads; :func:`search_spaces.cost.measure_ort_latency`).  A network the
   exporter cannot handle keeps its ``model.pt``; the trial warns and reports ``onnx_ok: 0``.

The figures (numeric, the same keys in every trial: NNI's web UI makes columns from them) are
returned and merged into ``summary.json`` by :func:`experiments.harness.execute`.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from typing import Any

import torch
import torch.nn as nn

from search_spaces import cost as costmodel
from search_spaces.errors import TrialFailed
from strategies.training import evaluate

from .runfolder import RunFolder, atomic_torch_save, atomic_write_bytes

__all__ = ["CHANCE_MARGIN", "ONNX_ATOL", "ONNX_OPSET", "ONNX_RTOL", "ORT_THREADS", "chance_accuracy", "degeneracy",
           "export_onnx", "onnx_close", "onnx_outputs", "save_model", "test_batch", "unexported_figures"]

#: ONNX opset of every ``model.onnx`` (pinned: onnxruntime 1.32 runs opsets up to 23).
ONNX_OPSET = 17
#: onnxruntime's outputs equal PyTorch's when ``|ort - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|``
#: element-wise on the test batch (the ``allclose`` rule).
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-5
#: Intra-op threads of the onnxruntime latency measurement (one: comparable across machines).
ORT_THREADS = 1
#: A validation accuracy at most this far above chance counts as chance.
CHANCE_MARGIN = 0.01


def test_batch(data: Any, size: int = 64) -> torch.Tensor:
    """The run's test batch: the first ``size`` inputs of a test loader's data set (read directly,
    so no loader iterator draws from the global RNG) or of an ``(X, y)`` pair."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0][:size]
    ds = data.dataset
    n = min(len(ds), size)
    return torch.stack([torch.as_tensor(ds[i][0]) for i in range(n)])


def _labels(val: Any) -> torch.Tensor:
    if isinstance(val, tuple) and len(val) == 2 and isinstance(val[1], torch.Tensor):
        return val[1].reshape(-1).cpu()
    return torch.cat([torch.as_tensor(y).reshape(-1) for _, y in val]).cpu()


def chance_accuracy(val: Any, num_classes: int) -> float:
    """The accuracy of the best constant prediction on ``val`` (at least ``1 / num_classes``)."""
    y = _labels(val)
    majority = float(torch.bincount(y.long()).max()) / max(1, len(y)) if len(y) else 0.0
    return max(1.0 / max(1, num_classes), majority)


def degeneracy(model: nn.Module, example: torch.Tensor, val: Any, num_classes: int, *,
               device: torch.device | str | None = None) -> tuple[str | None, float]:
    """``(reason, validation accuracy)``; ``reason`` is None for a healthy network, else one line
    saying why it is no result (see the module docstring).  ``val``: anything
    :func:`strategies.training.evaluate` takes (a loader or an ``(X, y)`` pair)."""
    was = model.training
    model.eval()
    try:
        x = example.detach().clone().to(device if device is not None else example.device).requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            if not torch.isfinite(out).all():
                return f"the exported network's outputs are not finite (NaN/inf) on the test batch", float("nan")
            # a fixed random projection: a plain sum of the logits could cancel
            weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
            (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
        if grad is None or not bool(grad.abs().sum() > 0):
            return ("the exported network has no path from its input to its output (its outputs do not "
                    "depend on the input)"), float("nan")
        acc = evaluate(model, val, device).acc
    finally:
        model.train(was)
    chance = chance_accuracy(val, num_classes)
    if acc <= chance + CHANCE_MARGIN:
        return (f"the exported network is at chance: validation accuracy {acc:.4f}, not more than {CHANCE_MARGIN} above "
                f"{chance:.4f}, what predicting one class scores ({num_classes} classes)"), acc
    return None, acc


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (on the CPU, eval mode) as a serialised ONNX graph with a dynamic batch axis."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (example,), buf, opset_version=ONNX_OPSET, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def onnx_outputs(onnx_model: bytes | str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """onnxruntime's (CPU) outputs of a serialised ONNX model (bytes or a file) on ``x``."""
    import onnxruntime as ort

    src = onnx_model if isinstance(onnx_model, bytes) else os.fspath(onnx_model)
    session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])


def onnx_close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether onnxruntime's outputs ``got`` equal PyTorch's ``want`` (see :data:`ONNX_ATOL`)."""
    return bool(torch.allclose(got.float(), want.float(), rtol=ONNX_RTOL, atol=ONNX_ATOL))


def unexported_figures() -> dict[str, float]:
    """The export figures of a trial that exports no network (published numbers only): zeros, so
    every trial reports the same numeric keys."""
    return {"ort_latency_ms": 0.0, "ort_threads": ORT_THREADS, "onnx_opset": ONNX_OPSET, "onnx_ok": 0,
            "onnx_max_abs_diff": 0.0, "degenerate": 0, "degenerate_fallback": 0}


def save_model(run: RunFolder, model: nn.Module, example: torch.Tensor, *, val: Any, num_classes: int | None = None,
               allow_degenerate: bool = False, fallback: str = "") -> dict[str, Any]:
    """Check, then write ``model.pt`` and ``model.onnx`` of ``model`` into ``run``; returns the
    figures for the summary.  ``example``: the run's test batch (inputs only); ``num_classes``:
    by default the width of the model's output.  ``fallback``: why the method exports an earlier
    checkpoint instead of its choice (``degenerate_fallback: 1``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model.eval()(example[:1].to(device)).shape[1])
    reason, _ = degeneracy(model, example.to(device), val, num_classes, device=device)
    if reason is not None and not allow_degenerate:
        raise TrialFailed(reason)
    cpu = copy.deepcopy(model).cpu().eval()
    x = example.detach().cpu().float()
    atomic_torch_save({k: v.detach().cpu() for k, v in cpu.state_dict().items()}, run.file("model.pt"))
    figures: dict[str, Any] = {**unexported_figures(), "degenerate": int(reason is not None),
                               "degenerate_fallback": int(bool(fallback))}
    if reason is not None:
        figures["degenerate_reason"] = reason
    if fallback:
        figures["fallback_reason"] = fallback
    try:
        blob = export_onnx(cpu, x)
        got = onnx_outputs(blob, x)
    except Exception as exc:  # an op the exporter or onnxruntime lacks: model.pt stays the result
        warnings.warn(f"ONNX export failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); "
                      "model.pt only", RuntimeWarning, stacklevel=2)
        run.file("model.onnx").unlink(missing_ok=True)
        return figures
    with torch.no_grad():
        want = cpu(x)
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    if not onnx_close(got, want):
        warnings.warn(f"model.onnx differs from the PyTorch network by up to {diff:.3g} on the test batch "
                      f"(tolerance {ONNX_ATOL} + {ONNX_RTOL} x |output|)", RuntimeWarning, stacklevel=2)
    atomic_write_bytes(run.file("model.onnx"), blob)
    figures.update(onnx_ok=1, onnx_max_abs_diff=diff,
                   ort_latency_ms=costmodel.measure_ort_latency(blob, tuple(x.shape[1:]), threads=ORT_THREADS))
    return figures
