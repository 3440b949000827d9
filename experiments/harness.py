"""What every method's trial shares: common settings, seeding, the run folder's life cycle,
resume, NNI reporting and failure handling.

A method is a frozen config dataclass (deriving from :class:`CommonConfig`) plus a ``run``
function ``run(cfg, ctx) -> summary dict``.  :func:`execute` builds the context, calls it, and
writes ``summary.json`` / reports the final metric.  Methods checkpoint through
``ctx.run.save_checkpoint`` at epoch ends and read ``ctx.resumed`` on start.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Sequence

import torch

from search_spaces.errors import TrialFailed, UserError
from strategies.training import TrainingPhase, progress, seed_everything

from . import nni_bridge
from .config import config_to_dict
from .runfolder import RunFolder, atomic_write_text, environment_info

__all__ = ["CommonConfig", "RunContext", "execute", "load_images", "per_sample_train_flops", "resolve_device", "pick",
           "search_cost"]


@dataclass(frozen=True, kw_only=True)
class CommonConfig:
    """Settings every method has (data, seed, device, threads, progress bars)."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    val_fraction: float = 0.1
    limit: int | None = None
    image_size: int | None = None
    augment: bool = True
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"      # auto: cuda when available, else cpu
    threads: int = 0          # torch intra-op threads (0: torch's default)
    progress: bool = True
    allow_degenerate: bool = False   # export a network at chance / without an input-output path anyway (smoke runs)

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be >= 1, got {self.limit}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise UserError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.threads < 0:
            raise UserError(f"threads must be >= 0, got {self.threads}")
        # dataclass inheritance: let subclasses chain their own checks after ours
        post = getattr(super(), "__post_init__", None)
        if post is not None:
            post()


def load_images(cfg: CommonConfig):
    """The image splits a trial config asks for (``data_dir`` is the user's name for ``root``)."""
    from .data import load_image_dataset

    try:
        return load_image_dataset(cfg.dataset, root=cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                  download=cfg.download, augment=cfg.augment, limit=cfg.limit,
                                  image_size=cfg.image_size)
    except UserError as exc:
        raise UserError(str(exc).replace("give root=<directory>", "set data_dir=<directory>")) from None


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU.  On CUDA the run asks for deterministic kernels
    (cuDNN's deterministic algorithms, cuBLAS' fixed workspace, torch's deterministic mode with a
    warning where an op has no deterministic version, e.g. AdaptiveAvgPool2d's backward): a resumed
    run must reproduce the run it continues (checkpoints also hold the CUDA RNG states,
    :func:`strategies.training.rng_state`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but no CUDA device is available")
    if name.startswith("cuda"):
        _deterministic_cuda()
    return torch.device(name)


def _deterministic_cuda() -> None:
    # cuBLAS reads this when its first handle is made (PyTorch's reproducibility notes)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def per_sample_train_flops(model: torch.nn.Module, loader, device) -> int:
    """Training FLOPs (forward + backward) per sample of ``model``, counted by the cost model on two
    samples of ``loader``'s first batch.  Running the loader draws a seed from the global RNG: call
    it at the same point in every process of a resumable run."""
    from search_spaces import cost as costmodel

    x, y = next(iter(loader))
    n = min(2, x.shape[0])
    return int(costmodel.count_train_flops(model, x[:n].to(device), y[:n].to(device)) // n)


def pick(cls: type, cfg: Any):
    """Build dataclass ``cls`` from the same-named fields of ``cfg`` (flat trial config -> part)."""
    names = {f.name for f in fields(cls) if f.init}
    return cls(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})


@dataclass
class RunContext:
    """A trial's run folder as the host of its training phases (:class:`strategies.training.PhaseHost`):
    ``state`` is the checkpoint (``resumed`` holds what was found on start), ``checkpoint()`` saves
    it with the tables, ``report(row)`` appends a metrics row and reports it to NNI,
    ``save_model(...)`` writes the exported network (:func:`experiments.export.save_model`)."""

    method: str
    run: RunFolder
    resumed: dict[str, Any] | None
    started: float
    progress: bool = True
    allow_degenerate: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    exported: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.state = dict(self.resumed or {})

    def checkpoint(self) -> None:
        self.run.save_checkpoint(self.state)

    def report(self, row: dict[str, Any]) -> None:
        self.report_epoch(row)

    def save_model(self, model: torch.nn.Module, example: torch.Tensor, *, val: Any, num_classes: int | None = None,
                   fallback: str = "", candidate: bool = False) -> dict[str, Any]:
        """Check and write the run's exported network (``model.pt`` + ``model.onnx``) from the
        test batch ``example`` and the validation data ``val``; its figures (``ort_latency_ms``
        ...) join the summary.  A degenerate network ends the trial as failed
        (:func:`experiments.export.save_model`), unless it is a search ``candidate`` -- a network
        the search scores rather than ships (an EPNAS proxy trial: at chance, its low accuracy *is*
        the reward the controller learns from) -- which is marked ``degenerate: 1`` instead."""
        from .export import save_model

        self.exported = save_model(self.run, model, example, val=val, num_classes=num_classes,
                                   allow_degenerate=self.allow_degenerate or candidate, fallback=fallback)
        return self.exported

    def phase(self, name: str, epochs: int, **kw: Any) -> TrainingPhase:
        """A resumable training phase of this run (see :class:`strategies.training.TrainingPhase`)."""
        return TrainingPhase(self, name, epochs, **kw)

    def report_epoch(self, row: dict[str, Any], *, key: str = "val_acc") -> None:
        """Append a metrics row and report its ``key`` as the NNI intermediate result."""
        self.run.append("metrics", row)
        value = row.get(key)
        if value is not None:
            extra = {k: row[k] for k in ("params", "flops") if row.get(k) is not None}
            nni_bridge.report_intermediate({"default": float(value), **extra})

    def bar(self, total: int, desc: str, enabled: bool = True):
        return progress(total, desc, enabled=enabled and self.progress)


def search_cost(phases: dict[str, dict[str, Any]], search_phases: Sequence[str]) -> dict[str, float]:
    """A run's cost from its phase records: ``search_train_flops`` (counted training FLOPs of the
    search phases), ``search_cpu_time_s`` (their process CPU seconds), ``search_time_s`` (their
    wall time; a method's own ``search_time_s`` is kept where it has one), ``cpu_time_s`` / ``wall_time_s`` (all phases).  FLOPs and CPU seconds do not depend
    on what else ran on the machine; wall time does (two trials sharing two cores take longer)."""
    mine = [r for name, r in phases.items() if name in search_phases]
    every = list(phases.values())
    return {
        "search_train_flops": sum(float(r.get("train_flops", 0) or 0) for r in mine),
        "search_cpu_time_s": sum(float(r.get("cpu_time_s", 0.0)) for r in mine),
        "search_time_s": sum(float(r.get("time_s", 0.0)) for r in mine),
        "cpu_time_s": sum(float(r.get("cpu_time_s", 0.0)) for r in every),
        "wall_time_s": sum(float(r.get("time_s", 0.0)) for r in every),
    }


def _config_blob(method: str, cfg: Any) -> dict[str, Any]:
    return {"method": method, "config": config_to_dict(cfg), "seed": cfg.seed}


def execute(method: str, cfg: CommonConfig, run_fn: Callable[[Any, RunContext], dict[str, Any]],
            run_dir: str | os.PathLike, *, search_phases: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``run_fn`` in ``run_dir`` (resuming if it holds a checkpoint of the same config).

    The summary gains the exported network's figures (``RunContext.save_model``) and the search
    cost (:func:`search_cost` over ``search_phases``, by default the registered method's)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = RunFolder(run_dir)
    blob = _config_blob(method, cfg)
    if run.exists("config.json"):
        old = run.read_json("config.json")
        if {k: old.get(k) for k in ("method", "config")} != {k: blob[k] for k in ("method", "config")}:
            raise UserError(f"run folder {run.path} holds a run with a different config; "
                            "use a new --run-dir (or delete the folder)")
        if run.exists("summary.json"):
            summary = run.read_json("summary.json")
            nni_bridge.report_final(summary)
            return summary
    run.write_json("config.json", {**blob, "env": environment_info(), "nni": nni_bridge.trial_parameter_record()})
    seed_everything(cfg.seed)
    nni_bridge.start_run()
    resumed = run.load_checkpoint()
    ctx = RunContext(method=method, run=run, resumed=resumed, started=time.time(), progress=cfg.progress,
                     allow_degenerate=getattr(cfg, "allow_degenerate", False))
    try:
        (run.path / "error.txt").unlink(missing_ok=True)
        summary = run_fn(cfg, ctx)
    except TrialFailed as exc:
        run.flush()
        atomic_write_text(run.path / "error.txt", f"{exc}\n")
        raise
    if search_phases is None:
        from .methods import METHODS

        search_phases = METHODS[method].search_phases if method in METHODS else ()
    from .export import unexported_figures

    extra = {**search_cost(ctx.state.get("phases", {}), search_phases), **(ctx.exported or unexported_figures())}
    summary = {"method": method, **summary, **{k: v for k, v in extra.items() if k not in summary}}
    if "default" not in summary:
        raise RuntimeError(f"method {method} returned a summary without 'default'")
    run.write_json("summary.json", summary)
    run.clear_checkpoint()
    nni_bridge.report_final(summary)
    return summary

