"""Benchmark: saved-activation memory and step time of our binary-gate ProxylessNAS vs NNI 3.0.

Run ``python -m bench.proxyless_memory`` from the repository root (``--help`` for the flags).
On ONE scoped ResNet-50 space (:func:`search_spaces.resnet_scoped.scoped_resnet`), with the
same seed, the same fixed train batch and the same fixed validation batch for every arm, it
measures side by side:

(a) ``reference`` - the derived single-path network ``build_resnet(arch, scope)`` doing a plain
    training step (forward + backward + SGD step).  ``arch`` is ``baseline_arch(scope)``.
(b) ``ours`` - :class:`strategies.proxyless.ProxylessSearch`: ``_arch_step`` on the validation
    batch + ``_weight_step`` on the training batch (the weight step is also reported alone).
(c) ``nni_proxyless`` - NNI 3.0's ``nni.nas.strategy.Proxyless().mutate_model(space)``, driven the
    way ``DartsLightningModule.training_step`` drives it, without Lightning: ``resample()``,
    architecture loss backward, architecture optimizer step; ``resample()``, weight loss backward,
    weight optimizer step.  ``resample`` is NNI's ``BaseOneShotLightningModule.resample`` loop
    (every supernet module's ``resample(memo)``, the memo dict accumulating the sample).
(d) ``nni_darts`` - NNI 3.0's ``nni.nas.strategy.DARTS().mutate_model(space)``, first order:
    architecture step on the validation batch + weight step on the training batch, every
    candidate of every block weighted by ``softmax(alpha)``.

Same work in every arm
    Weights: SGD, Nesterov momentum 0.9, lr 0.05, weight decay 4e-5 (our config's defaults,
    :func:`strategies.training.sgd_nesterov`) for all four arms.  Architecture optimizer: ours
    uses its own config (Adam, lr 1e-3); the NNI arms use NNI's hard-coded one
    (``DartsLightningModule.configure_architecture_optimizers``: Adam, lr 3e-4, betas
    (0.5, 0.999), weight decay 1e-3).  Optimizer cost is negligible next to the passes.

Which path runs (``--sampling``)
    ``pinned`` (default): the active path of every sampled block IS ``arch`` (the reference's
    architecture), so (a), (b) and (c) run the same single path.  For (b) the search's own
    ``_set_mode`` runs unchanged (it consumes its RNG as in a real search) and then the active
    index is overwritten; in the two-path architecture step the second path of the pair is the
    one the search sampled (random, seeded), as in a real search.  This patches the private
    fields ``_active``/``_pair``/``_pair_old`` of :class:`BinaryGateLayer` on the instance; the
    step functions themselves are not touched.  For (c) ``resample`` gets ``memo = arch``, which
    is how NNI pins a ``ProxylessMixedLayer``.  ``native``: every strategy samples as it would
    in a search (paths differ from the reference: a 5x5 candidate costs more than the 3x3).

Metric 1: peak saved-activation memory of a step
    Every tensor autograd saves for backward goes through the pack hook of
    ``torch.autograd.graph.saved_tensors_hooks`` (built-in ops and custom
    ``autograd.Function.save_for_backward`` alike).  During one step the hook records each saved
    tensor's *storage* (``untyped_storage().data_ptr()`` -> ``untyped_storage().nbytes()``), so a
    tensor saved by several ops (a ReLU output that is also the next conv's input, NNI's
    ``_ProxylessFunction`` saving a block's input/output) and views of one storage are counted
    once.  Storages of the model's parameters and buffers are excluded (they are not
    activations and live anyway); the input batch counts.  Saved tensors stay alive until the
    backward, so the deduplicated sum over one forward is the saved-activation footprint at the
    start of that backward: that is the number reported per pass (architecture pass, weight
    pass) and ``peak`` is the max of the two.  Not included: transient buffers (a backward's
    temporaries, NNI's re-runs of the N-1 other candidates *inside* its backward, which run
    under ``no_grad`` and save nothing), gradients and optimizer state.

Metric 2: median step time
    Wall-clock (``time.perf_counter``) of one architecture step + one weight step (reference: one
    training step), median over ``--steps`` steps after ``--warmup`` steps, with
    ``torch.set_num_threads(--threads)``.  The arms are interleaved round-robin (rotating order)
    step by step, so load from other processes on a shared machine hits all arms alike; the
    saved-tensor hooks are NOT active while timing.  The 1-minute load average is recorded at
    the start and the end.

Outputs: a table on stdout (absolute numbers and ratios to (a)), the target checks (printed as
MET / NOT MET, never adjusted), JSON (``--out``) and a PNG bar chart of the ratios next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # noqa: E402
from nni.nas.oneshot.pytorch.strategy import DARTS, Proxyless  # noqa: E402  (the real classes; nni.nas.strategy may hold ImportFailedStrategy stubs)

from search_spaces.resnet_scoped import baseline_arch, build_resnet, scoped_resnet  # noqa: E402
from strategies.proxyless import ProxylessConfig, ProxylessSearch  # noqa: E402
from strategies.training import sgd_nesterov  # noqa: E402

__all__ = [
    "BenchConfig",
    "SavedTensorMeter",
    "saved_bytes",
    "Arm",
    "build_arms",
    "measure_memory",
    "measure_time",
    "run",
    "format_report",
    "main",
]

DEFAULT_OUT = Path("bench/out/proxyless_memory.json")
MIB = 1024 ** 2

# Targets (ratios to the reference (a)).
TARGET_MEMORY = 1.15      # ours, saved activations of the weight pass and of the architecture pass
TARGET_ARCH = 1.1         # ours, architecture step time alone
TARGET_TIME = 2.1         # ours, weight + arch step time (an architecture step every batch)
TARGET_SPEEDUP_NNI = 3.0  # NNI Proxyless step time / ours


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    scope: str = "f"
    width: float = 0.25
    input_shape: tuple[int, int, int] = (3, 32, 32)
    batch: int = 16
    classes: int = 10
    steps: int = 7
    warmup: int = 2
    threads: int = 1
    seed: int = 0
    sampling: str = "pinned"  # or "native"
    device: str = "cpu"

    def __post_init__(self):
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.sampling not in ("pinned", "native"):
            raise ValueError(f"sampling must be pinned or native, got {self.sampling!r}")
        if self.steps < 1 or self.warmup < 0 or self.batch < 1 or self.threads < 1:
            raise ValueError("steps, batch and threads must be >= 1 and warmup >= 0")

    def space_kwargs(self) -> dict:
        return dict(num_classes=self.classes, width=self.width, stem="cifar", in_channels=self.input_shape[0])


# ---- saved-activation meter -------------------------------------------------------------------
class SavedTensorMeter:
    """Bytes of distinct storages saved for backward while active (see the module docstring).

    ``exclude``: tensors (parameters, buffers) whose storages are not counted.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: dict[int, int] = {}
        self.n_saved = 0
        self._ctx = None

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.n_saved += 1
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in self._exclude and ptr not in self._seen:
            self._seen[ptr] = storage.nbytes()
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        self._ctx = None


def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Saved-activation bytes of running ``fn()`` once (forward, and its backward if it has one)."""
    with SavedTensorMeter(exclude) as meter:
        fn()
    return meter.bytes


# ---- the arms ---------------------------------------------------------------------------------
class Arm:
    """One method: a model, a weight step and (search methods) an architecture step."""

    name: str
    label: str
    model: nn.Module

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    has_arch_step = True

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self.model.parameters()) + list(self.model.buffers())


def _weight_opt(params) -> torch.optim.Optimizer:
    c = ProxylessConfig()
    return sgd_nesterov(params, lr=c.weight_lr, momentum=c.weight_momentum, weight_decay=c.weight_decay,
                        nesterov=c.nesterov)


class ReferenceArm(Arm):
    name, label = "reference", "(a) derived single path, training step"
    has_arch_step = False

    def __init__(self, cfg: BenchConfig, arch: dict[str, str]):
        torch.manual_seed(cfg.seed)
        self.model = build_resnet(arch, cfg.scope, **cfg.space_kwargs()).to(cfg.device).train()
        self.opt = _weight_opt(self.model.parameters())

    def weight_step(self, x, y):
        loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class OursArm(Arm):
    name, label = "ours", "(b) ours: binary gates (ProxylessSearch)"

    def __init__(self, cfg: BenchConfig, arch: dict[str, str]):
        torch.manual_seed(cfg.seed)
        space = scoped_resnet(cfg.scope, **cfg.space_kwargs())
        self.search = ProxylessSearch(space, ProxylessConfig(), input_shape=cfg.input_shape, seed=cfg.seed,
                                      device=torch.device(cfg.device))
        self.model = self.search.supernet.train()
        if cfg.sampling == "pinned":
            _pin_ours(self.search, arch)

    def arch_step(self, x, y):
        self.search._arch_step(x, y, "bench")

    def weight_step(self, x, y):
        self.search._weight_step(x, y, "bench")


class FloorArm(OursArm):
    """(e) ours with the inactive path's forward left out of the architecture step's backward.

    Not an estimator (the gate gradient needs ``<dL/dy, y_k>`` for both sampled paths): it measures
    the floor of a two-path architecture step -- the active path's forward and the backward of the
    inputs' gradients down to the lowest gate -- so the report shows how much of ours is the paper's
    estimator itself.
    """

    name, label = "floor", "(e) floor: ours minus the inactive forward"

    def arch_step(self, x, y):
        from strategies import proxyless as prox

        real = prox._BinaryGate.backward

        def active_only(ctx, grad_out):
            _, active = ctx.saved_tensors
            layer = ctx.layer
            grad_p = torch.zeros(len(layer._pair), dtype=grad_out.dtype, device=grad_out.device)
            grad_p[layer._pair.index(layer._active)] = (grad_out * active).sum()
            return grad_p, None, grad_out, None

        prox._BinaryGate.backward = staticmethod(active_only)
        try:
            super().arch_step(x, y)
        finally:
            prox._BinaryGate.backward = real


def _pin_ours(search: ProxylessSearch, arch: dict[str, str]) -> None:
    """Make the active path of every block ``arch`` after the search's own sampling."""
    sample = search._set_mode

    def pinned(mode: str) -> None:
        sample(mode)
        if mode not in ("weight", "arch"):
            return
        for m in search.layers:
            want = m.names.index(arch[m.label])
            m._active = want
            if mode == "arch" and len(m._pair) < len(m.names):
                other = next(i for i in m._pair if i != want) if want in m._pair else m._pair[0]
                m._pair = [want, other]
                m._pair_old = m._arch_alpha.detach()[m._pair].clone()

    search._set_mode = pinned


class _NniArm(Arm):
    """An NNI 3.0 one-shot supernet driven like ``DartsLightningModule.training_step``."""

    strategy_cls: type

    def __init__(self, cfg: BenchConfig, arch: dict[str, str]):
        torch.manual_seed(cfg.seed)
        self.model = self.strategy_cls().mutate_model(scoped_resnet(cfg.scope, **cfg.space_kwargs())).to(cfg.device)
        self.model.train()
        self.modules = [m for m in self.model.modules() if isinstance(m, BaseSuperNetModule)]
        arch_params, ids = [], set()
        for m in self.modules:
            for p in getattr(m, "arch_parameters", lambda: [])():
                if id(p) not in ids:
                    ids.add(id(p))
                    arch_params.append(p)
        self.arch_params = arch_params
        self.weight_params = [p for p in self.model.parameters() if id(p) not in ids]
        self.weight_opt = _weight_opt(self.weight_params)
        # DartsLightningModule.configure_architecture_optimizers (hard-coded in NNI 3.0)
        self.arch_opt = torch.optim.Adam(arch_params, 3.0e-4, betas=(0.5, 0.999), weight_decay=1.0e-3)
        self.memo0 = dict(arch) if cfg.sampling == "pinned" else {}

    def resample(self) -> dict:
        # BaseOneShotLightningModule.resample, starting from the pinned memo
        memo = dict(self.memo0)
        for m in self.modules:
            memo.update(m.resample(memo=memo))
        return memo

    def arch_step(self, x, y):
        self.resample()
        self.arch_opt.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.arch_opt.step()

    def weight_step(self, x, y):
        self.resample()
        loss = F.cross_entropy(self.model(x), y)
        self.weight_opt.zero_grad()  # advance_optimization: zero_grad, backward, (clip), step
        loss.backward()
        self.weight_opt.step()


class NniProxylessArm(_NniArm):
    name, label = "nni_proxyless", "(c) NNI 3.0 Proxyless"
    strategy_cls = Proxyless


class NniDartsArm(_NniArm):
    name, label = "nni_darts", "(d) NNI 3.0 DARTS (1st order)"
    strategy_cls = DARTS


ARM_CLASSES = (ReferenceArm, OursArm, NniProxylessArm, NniDartsArm, FloorArm)


def build_arms(cfg: BenchConfig, names: Sequence[str] | None = None) -> list[Arm]:
    arch = baseline_arch(cfg.scope)
    return [cls(cfg, arch) for cls in ARM_CLASSES if names is None or cls.name in names]


def make_batches(cfg: BenchConfig) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    shape = (cfg.batch, *cfg.input_shape)
    train = (torch.randn(shape, generator=g), torch.randint(0, cfg.classes, (cfg.batch,), generator=g))
    val = (torch.randn(shape, generator=g), torch.randint(0, cfg.classes, (cfg.batch,), generator=g))
    return tuple(t.to(cfg.device) for t in train), tuple(t.to(cfg.device) for t in val)


def _sync(x: torch.Tensor) -> None:
    """CUDA runs asynchronously: time kernels, not their launches."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


# ---- measuring --------------------------------------------------------------------------------
def measure_memory(arm: Arm, train, val) -> dict[str, int | None]:
    """Saved-activation bytes of one architecture pass and one weight pass, and their max."""
    exclude = arm.state_tensors()
    arch = saved_bytes(lambda: arm.arch_step(*val), exclude) if arm.has_arch_step else None
    weight = saved_bytes(lambda: arm.weight_step(*train), exclude)
    out = {"arch": arch, "weight": weight, "peak": max(weight, arch or 0)}
    if train[0].is_cuda:   # everything allocated during one arch + weight step (CUDA's own count)
        _sync(train[0])
        torch.cuda.reset_peak_memory_stats(train[0].device)
        base = torch.cuda.memory_allocated(train[0].device)
        if arm.has_arch_step:
            arm.arch_step(*val)
        arm.weight_step(*train)
        _sync(train[0])
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated(train[0].device) - base
    return out


def _rounds(arms: list[Arm], n: int) -> Iterator[list[Arm]]:
    for r in range(n):
        k = r % len(arms)
        yield arms[k:] + arms[:k]


def measure_time(arms: list[Arm], train, val, *, steps: int, warmup: int) -> dict[str, dict[str, float | None]]:
    """Median milliseconds per step (arch, weight, total) of every arm, interleaved round-robin."""
    times = {a.name: {"arch": [], "weight": [], "total": []} for a in arms}
    for r, order in enumerate(_rounds(arms, warmup + steps)):
        for arm in order:
            _sync(val[0])
            t0 = time.perf_counter()
            if arm.has_arch_step:
                arm.arch_step(*val)
            _sync(val[0])
            t1 = time.perf_counter()
            arm.weight_step(*train)
            _sync(train[0])
            t2 = time.perf_counter()
            if r >= warmup:
                rec = times[arm.name]
                rec["arch"].append((t1 - t0) * 1e3)
                rec["weight"].append((t2 - t1) * 1e3)
                rec["total"].append((t2 - t0) * 1e3)
    out = {}
    for arm in arms:
        rec = times[arm.name]
        out[arm.name] = {
            "arch_ms": statistics.median(rec["arch"]) if arm.has_arch_step else None,
            "weight_ms": statistics.median(rec["weight"]),
            "total_ms": statistics.median(rec["total"]),
            "weight_ms_min": min(rec["weight"]),
            "total_ms_min": min(rec["total"]),
            "total_ms_max": max(rec["total"]),
            "samples_ms": rec,
        }
    return out


def time_ratio_estimates(timing: dict, num: str, den: str, key: str = "total") -> dict[str, float]:
    """``num``/``den`` step-time ratio three ways: ratio of medians (the reported one), ratio of
    minima (least disturbed by other load), and median of per-round ratios (the arms of a round
    ran back to back, so slow drifts of the machine's load cancel)."""
    a, b = timing[num]["samples_ms"][key], timing[den]["samples_ms"]["total" if den == "reference" else key]
    return {
        "median": statistics.median(a) / statistics.median(b),
        "min": min(a) / min(b),
        "paired_median": statistics.median(x / y for x, y in zip(a, b)),
    }


def profile_ours(cfg: BenchConfig, arm: OursArm, train, val, rows: int = 12) -> str:
    """torch.profiler tables (self CPU time) of our architecture and weight steps."""
    from torch.profiler import ProfilerActivity, profile

    text = []
    for what, fn in (("architecture step", lambda: arm.arch_step(*val)), ("weight step", lambda: arm.weight_step(*train))):
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        text.append(f"--- profile of (b) ours, {what} ---")
        text.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(text)


# ---- the run ----------------------------------------------------------------------------------
def _ratio(x: float | None, ref: float) -> float | None:
    return None if x is None or not ref else x / ref


def run(cfg: BenchConfig, *, log=print, report_scope: str | None = "s") -> dict:
    torch.set_num_threads(cfg.threads)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    train, val = make_batches(cfg)
    log(f"building arms (scope {cfg.scope}, width {cfg.width}, input {'x'.join(map(str, cfg.input_shape))}, "
        f"batch {cfg.batch}, {cfg.threads} thread(s), sampling {cfg.sampling}) ...")
    arms = build_arms(cfg)
    memory = {}
    for arm in arms:
        log(f"  saved-activation memory: {arm.name}")
        memory[arm.name] = measure_memory(arm, train, val)
    log(f"  timing: {cfg.warmup} warm-up + {cfg.steps} steps per arm, interleaved ...")
    timing = measure_time(arms, train, val, steps=cfg.steps, warmup=cfg.warmup)
    load_end = os.getloadavg()

    ref_mem = memory["reference"]["weight"]
    ref_time = timing["reference"]["total_ms"]
    arms_out = {}
    for arm in arms:
        m, t = memory[arm.name], timing[arm.name]
        arms_out[arm.name] = {
            "label": arm.label,
            "params": sum(p.numel() for p in arm.model.parameters()),
            "saved_bytes": m,
            "saved_ratio": {k: _ratio(v, ref_mem) for k, v in m.items()},
            "time_ms": t,
            "time_ratio": {k: _ratio(t[k], ref_time) for k in ("arch_ms", "weight_ms", "total_ms")},
        }
    ours, nni = arms_out["ours"], arms_out["nni_proxyless"]
    speedup = nni["time_ms"]["total_ms"] / ours["time_ms"]["total_ms"]
    robustness = {
        "ours_weight_over_reference": time_ratio_estimates(timing, "ours", "reference", "weight"),
        "ours_total_over_reference": time_ratio_estimates(timing, "ours", "reference", "total"),
        "nni_proxyless_total_over_ours": time_ratio_estimates(timing, "nni_proxyless", "ours", "total"),
    }
    floor = arms_out["floor"]
    checks = [
        _check("ours weight-step saved activations <= 1.15x (a)", ours["saved_ratio"]["weight"], "<=", TARGET_MEMORY),
        _check("ours arch-step saved activations <= 1.15x (a)", ours["saved_ratio"]["arch"], "<=", TARGET_MEMORY),
        _check(f"ours arch step time <= {TARGET_ARCH}x (a)", ours["time_ratio"]["arch_ms"], "<=", TARGET_ARCH),
        _check(f"ours weight + arch step time (arch_every=1) <= {TARGET_TIME}x (a)", ours["time_ratio"]["total_ms"],
               "<=", TARGET_TIME),
        _check(f"NNI Proxyless step time / ours >= {TARGET_SPEEDUP_NNI}", speedup, ">=", TARGET_SPEEDUP_NNI),
        _check(f"floor of a two-path arch step (no inactive forward) <= {TARGET_ARCH}x (a)",
               floor["time_ratio"]["arch_ms"], "<=", TARGET_ARCH, binding=False),
    ]
    # Per training batch with an architecture step every K batches (ProxylessConfig.arch_every;
    # the paper alternates every batch = 1, ProxylessNAS's released code updates every 5).
    w, a = ours["time_ratio"]["weight_ms"], ours["time_ratio"]["arch_ms"]
    checks.append(_check(f"ours per batch with arch_every=5: weight + arch/5 <= {TARGET_TIME}x (a)",
                         None if w is None or a is None else w + a / 5, "<=", TARGET_TIME, binding=False))
    other = None
    if report_scope and report_scope != cfg.scope:
        other_cfg = replace(cfg, scope=report_scope)
        log(f"  timing at scope {report_scope}: reference and ours ...")
        ref_o, ours_o = build_arms(other_cfg, ["reference", "ours"])
        tr_o, va_o = make_batches(other_cfg)
        t_o = measure_time([ref_o, ours_o], tr_o, va_o, steps=cfg.steps, warmup=cfg.warmup)
        base = t_o["reference"]["total_ms"]
        other = {"scope": report_scope, "reference_ms": base, "ours": t_o["ours"],
                 "arch_ratio": t_o["ours"]["arch_ms"] / base, "total_ratio": t_o["ours"]["total_ms"] / base}
        checks.append(_check(f"scope {report_scope}: ours arch step time <= {TARGET_ARCH}x (a)", other["arch_ratio"],
                             "<=", TARGET_ARCH, binding=False))
        checks.append(_check(f"scope {report_scope}: ours weight + arch step time <= {TARGET_TIME}x (a)",
                             other["total_ratio"], "<=", TARGET_TIME, binding=False))
    return {
        "config": {**asdict(cfg), "input_shape": list(cfg.input_shape), "arch": "baseline_arch(scope)"},
        "method": {
            "saved_activations": "torch.autograd.graph.saved_tensors_hooks pack hook; distinct storages "
                                 "(untyped_storage().data_ptr()) summed over one forward; parameters and buffers "
                                 "excluded; per pass (arch, weight), peak = max",
            "time": "perf_counter, median over steps after warm-up; arms interleaved round-robin; "
                    "total = arch step + weight step (reference: one training step)",
        },
        "environment": {
            "torch": torch.__version__, "nni": _nni_version(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": cfg.device,
            "device_name": torch.cuda.get_device_name(cfg.device) if cfg.device.startswith("cuda") else "cpu",
            "loadavg_start": list(load_start), "loadavg_end": list(load_end),
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
        "reference": {"saved_bytes": ref_mem, "total_ms": ref_time},
        "arms": arms_out,
        "nni_proxyless_over_ours_time": speedup,
        "other_scope": other,
        "time_ratio_estimates": robustness,
        "checks": checks,
    }


def _check(name: str, value: float | None, op: str, threshold: float, *, binding: bool = True) -> dict:
    met = value is not None and (value <= threshold if op == "<=" else value >= threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": bool(met), "binding": binding}


def _nni_version() -> str:
    try:
        from importlib.metadata import version

        return version("nni")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


# ---- reporting --------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_report(res: dict) -> str:
    cfg, env = res["config"], res["environment"]
    lines = [
        f"CompactNAS proxyless memory/time benchmark - scope {cfg['scope']}, width {cfg['width']}, "
        f"input {'x'.join(map(str, cfg['input_shape']))}, batch {cfg['batch']}, sampling {cfg['sampling']}",
        f"torch {env['torch']}, nni {env['nni']}, {env['threads']} thread(s) of {env['cpu_count']} CPUs, "
        f"load average (1/5/15 min) start {'/'.join(f'{v:.2f}' for v in env['loadavg_start'])}, "
        f"end {'/'.join(f'{v:.2f}' for v in env['loadavg_end'])}; median of {cfg['steps']} steps after "
        f"{cfg['warmup']} warm-up; wall {env['wall_s']} s",
        "",
        f"{'arm':<42} {'saved MiB':>27}  {'x(a)':>17}  {'step ms (median)':>27}  {'x(a)':>17}",
        f"{'':<42} {'arch':>8} {'weight':>8} {'peak':>9}  {'weight':>8} {'peak':>8}  "
        f"{'arch':>8} {'weight':>8} {'total':>9}  {'weight':>8} {'total':>8}",
    ]
    for a in res["arms"].values():
        sb, sr, tm, tr = a["saved_bytes"], a["saved_ratio"], a["time_ms"], a["time_ratio"]
        mib = {k: None if v is None else v / MIB for k, v in sb.items()}
        lines.append(
            f"{a['label']:<42} {_fmt(mib['arch'], '8.2f')} {_fmt(mib['weight'], '8.2f')} {_fmt(mib['peak'], '9.2f')}  "
            f"{_fmt(sr['weight'], '8.2f')} {_fmt(sr['peak'], '8.2f')}  "
            f"{_fmt(tm['arch_ms'], '8.1f')} {_fmt(tm['weight_ms'], '8.1f')} {_fmt(tm['total_ms'], '9.1f')}  "
            f"{_fmt(tr['weight_ms'], '8.2f')} {_fmt(tr['total_ms'], '8.2f')}")
    ours = res["arms"]["ours"]
    lines += [
        "",
        f"(b) ours arch step alone: {ours['saved_ratio']['arch']:.2f}x (a) saved activations, "
        f"{ours['time_ratio']['arch_ms']:.2f}x (a) time; NNI Proxyless / ours step time: "
        f"{res['nni_proxyless_over_ours_time']:.2f}x",
        "",
        "target checks:",
    ]
    for c in res["checks"]:
        status = "MET" if c["met"] else "NOT MET"
        tag = "" if c["binding"] else "  [reported]"
        lines.append(f"  [{status:>7}] {c['name']}: {_fmt(c['value'], '.3f')} (target {c['op']} {c['threshold']}){tag}")
    fl = res["arms"]["floor"]["time_ratio"]["arch_ms"]
    lines.append(f"  ours / floor / limit (arch step, x(a)): {ours['time_ratio']['arch_ms']:.2f} / {fl:.2f} / "
                 f"{TARGET_ARCH}: the floor is the active path's forward + the input-gradient backward; the rest "
                 "of ours is the inactive sampled path's forward, which the gate gradient <dL/dy, y_k> needs")
    if res.get("other_scope"):
        o = res["other_scope"]
        lines.append(f"  scope {o['scope']}: ours arch step {o['arch_ratio']:.2f}x, weight + arch {o['total_ratio']:.2f}x "
                     f"its (a) ({o['reference_ms']:.1f} ms)")
    mem = {n: a["saved_bytes"].get("cuda_max_allocated") for n, a in res["arms"].items()}
    if any(v is not None for v in mem.values()):
        lines.append("  torch.cuda.max_memory_allocated during one arch + weight step (MiB): "
                     + ", ".join(f"{n} {v / MIB:.1f}" for n, v in mem.items() if v is not None))
    lines += ["", "time-ratio estimates (median of steps / min of steps / median of per-round ratios):"]
    for name, est in res["time_ratio_estimates"].items():
        lines.append(f"  {name:<32} {est['median']:6.2f} / {est['min']:6.2f} / {est['paired_median']:6.2f}")
    return "\n".join(lines)


def write_outputs(res: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out)
    png = out.with_suffix(".png")
    plot_ratios(res, png)
    return out, png


def plot_ratios(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for n, a in res["arms"].items() if n != "reference"]
    names = [a["label"].split(" ", 1)[1] if a["label"].startswith("(") else a["label"] for a in arms]
    names = [n.replace(": ", ":\n").replace(" (", "\n(") for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    panels = [
        (axes[0], "saved activations / (a)", [("arch pass", "saved_ratio", "arch"), ("weight pass", "saved_ratio", "weight")],
         TARGET_MEMORY),
        (axes[1], "median step time / (a)", [("arch step", "time_ratio", "arch_ms"), ("arch + weight", "time_ratio", "total_ms")],
         TARGET_TIME),
    ]
    width = 0.38
    for ax, title, series, target in panels:
        for j, (lab, group, key) in enumerate(series):
            vals = [a[group][key] or 0.0 for a in arms]
            xs = [i + (j - 0.5) * width for i in range(len(arms))]
            bars = ax.bar(xs, vals, width, label=lab)
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8, label="(a) = 1")
        ax.axhline(target, color="tab:red", lw=0.8, ls="--", label=f"target for ours ({target}x)")
        ax.set_xticks(range(len(arms)), names, fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    cfg = res["config"]
    fig.suptitle(f"vs (a) derived network training step - scope {cfg['scope']}, width {cfg['width']}, "
                 f"input {'x'.join(map(str, cfg['input_shape']))}, batch {cfg['batch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- CLI --------------------------------------------------------------------------------------
def _parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input must be CxHxW, got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.proxyless_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--scope", default=d.scope, choices=["s", "m", "l", "f"])
    p.add_argument("--width", type=float, default=d.width, help="channel width multiplier of ResNet-50")
    p.add_argument("--input", type=_parse_shape, default=d.input_shape, help="CxHxW, e.g. 3x32x32")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--classes", type=int, default=d.classes)
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per arm (median)")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sampling", choices=["pinned", "native"], default=d.sampling)
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables of (b)'s two steps")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N] (CUDA: synchronized timing, max_memory_allocated)")
    p.add_argument("--report-scope", default="s", help="also time reference and ours at this scope ('' = off)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path; the PNG goes next to it")
    a = p.parse_args(argv)
    cfg = BenchConfig(scope=a.scope, width=a.width, input_shape=a.input, batch=a.batch, classes=a.classes,
                      steps=a.steps, warmup=a.warmup, threads=a.threads, seed=a.seed, sampling=a.sampling,
                      device=a.device)
    res = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True), report_scope=a.report_scope or None)
    print(format_report(res))
    out, png = write_outputs(res, a.out)
    print(f"\nwrote {out} and {png}")
    if a.profile:
        torch.set_num_threads(cfg.threads)
        train, val = make_batches(cfg)
        (arm,) = build_arms(cfg, ["ours"])
        print(profile_ours(cfg, arm, train, val))
    return 0


if __name__ == "__main__":
    sys.exit(main())
