"""EPNAS's evaluator: proxy training (performance prediction), parameter sharing, the reward, and the
final training of the best networks found.

Paper: "EPNAS: Efficient Progressive Neural Architecture Search" (``../shared/seeds/004_*.txt``).

Proxy training (Sec. 3.4, 4.1) - what every search trial does: SGD-Nesterov with a large batch and a
proportionally larger learning rate (``lr * batch_size / batch_ref``; the paper's 0.5 at batch
1024), a cosine schedule over ``epochs`` (20) and an early stop after ``stop_epoch`` (10), weights
loaded from / written back to the parameter-sharing dictionary
(:class:`strategies.epnas_sharing.SharedWeights`), reward = :func:`strategies.epnas.constrained_reward`
of the validation accuracy.  The nnictl trial (:mod:`experiments.methods.epnas`) and
:class:`EpnasEvaluator` (NNI's ``NasExperiment``) run these same settings.

Final training (Sec. 4.1: "the best model, which is retrained following PNAS") - after the search the
top-``final_top_k`` *feasible* networks (no resource constraint violated; :func:`select_final`) are
trained from scratch (no parameter sharing) with :class:`FinalTrainingConfig`:

* ``final_epochs = 600``: EPNAS gives no count and defers to PNAS (Liu et al., ECCV 2018), which
  trains its final CIFAR-10 networks as NASNet does (Zoph et al., CVPR 2018): 600 epochs with a
  cosine learning-rate schedule (DARTS, Liu et al., ICLR 2019, Sec. 3.3, trains its CIFAR-10
  networks "for 600 epochs ... following existing works" and cites NASNet, PNAS and AmoebaNet for
  it).  The number is therefore PNAS's/NASNet's, not read in the EPNAS text (our copy has none);
* SGD with Nesterov momentum 0.9 and a per-step cosine decay to 0 (the schedule EPNAS uses for all
  its training, Sec. 4.1); batch 128 (the paper's batch without prediction); ``final_lr = 0.1`` and
  ``final_weight_decay = 5e-4`` are ours (the text lost EPNAS's learning rate);
* augmentation (Sec. 4.1, "following PNAS"): random crop and flip (the data module's training
  transform) plus random brightness (``final_brightness``, max delta in pixel units, 63/255) and
  contrast (factor in ``[1 - final_contrast, 1 + final_contrast]``, 0.8: [0.2, 1.8]): the values of
  TensorFlow's CIFAR-10 tutorial, our reading of the paper's "brightness and contrast adjustments"
  (it gives none); optional Cutout (``final_cutout`` pixels; Table 4 reports EPNAS with and without
  it; off by default).

The final trials report the same numeric keys as the search trials (``final`` = 1 there, 0 in a
search trial; ``test_acc``: the test accuracy of the trained network); :mod:`analysis.epnas` puts them into the paper-style results table.
When fewer than ``final_top_k`` feasible networks exist, those that exist are trained and the
shortfall is said (tuner log, tuner state, the analysis table's ``note``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from search_spaces.errors import UserError

__all__ = ["FinalTrainingConfig", "FinalPhase", "PhotometricAugment", "select_final", "final_train", "final_loader",
           "normalization_std", "is_final_key", "ProxyTrainingConfig", "EpnasEvaluator"]


@dataclass(frozen=True, kw_only=True)
class FinalTrainingConfig:
    """Final training of a found network (see the module docstring for the sources)."""

    final_epochs: int = 600
    final_batch_size: int = 128
    final_lr: float = 0.1
    final_momentum: float = 0.9
    final_weight_decay: float = 5e-4
    final_brightness: float = 63 / 255
    final_contrast: float = 0.8
    final_cutout: int = 0

    def __post_init__(self):
        if self.final_epochs < 1:
            raise UserError(f"final_epochs must be >= 1, got {self.final_epochs}")
        if self.final_batch_size < 1:
            raise UserError(f"final_batch_size must be >= 1, got {self.final_batch_size}")
        if not self.final_lr > 0:
            raise UserError(f"final_lr must be > 0, got {self.final_lr}")
        if self.final_brightness < 0 or not 0 <= self.final_contrast < 1:
            raise UserError("final_brightness must be >= 0 and final_contrast in [0, 1)")
        if self.final_cutout < 0:
            raise UserError(f"final_cutout must be >= 0, got {self.final_cutout}")
        post = getattr(super(), "__post_init__", None)   # dataclass inheritance: chain the others' checks
        if post is not None:
            post()


# ------------------------------------------------------------------------------------- augmentation


def normalization_std(dataset: Any) -> tuple[float, ...] | None:
    """The per-channel std of the ``Normalize`` in a data-module view's transform (None if none)."""
    tf = getattr(dataset, "transform", None)
    for t in getattr(tf, "transforms", [tf]):
        if type(t).__name__ == "Normalize":
            return tuple(float(s) for s in t.std)
    return None


class PhotometricAugment(Dataset):
    """Brightness, contrast and Cutout on the normalised tensors of ``base`` (after its crop/flip).

    Normalisation is per-channel affine, so on normalised images brightness ``+d`` (pixel units)
    is ``+d / std`` and contrast about the image's channel means is unchanged; Cutout's zeros are
    the data set's mean colour (as in DeVries & Taylor's implementation).  Draws come from the
    global torch RNG, like torchvision's transforms (the training phase saves it)."""

    def __init__(self, base: Dataset, *, brightness: float, contrast: float, cutout: int = 0,
                 std: Sequence[float] | None = None):
        self.base, self.brightness, self.contrast, self.cutout = base, brightness, contrast, cutout
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        x = x.clone()
        if self.brightness > 0:
            d = (torch.rand(()) * 2 - 1) * self.brightness
            x = x + (d / self.std if self.std is not None else d)
        if self.contrast > 0:
            c = 1 + (torch.rand(()) * 2 - 1) * self.contrast
            mean = x.mean(dim=(-2, -1), keepdim=True)
            x = (x - mean) * c + mean
        if self.cutout > 0:
            h, w = x.shape[-2:]
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            half = self.cutout // 2
            x[..., max(0, cy - half):min(h, cy + half + self.cutout % 2),
              max(0, cx - half):min(w, cx + half + self.cutout % 2)] = 0
        return x, y


# ------------------------------------------------------------------------------------- selection


def _violations(usage: Mapping[str, float], constraints: Mapping[str, tuple[float | None, float | None]]) -> bool:
    for name, (lo, hi) in constraints.items():
        u = float(usage[name])
        if (lo is not None and u < lo) or (hi is not None and u > hi):
            return True
    return False


def select_final(records: Mapping[str, Mapping[str, Any]], constraints: Mapping[str, tuple[float | None, float | None]],
                 k: int, *, space, input_shape: Sequence[int], num_classes: int) -> list[tuple[str, dict, dict]]:
    """The top-``k`` feasible networks of a search: ``[(trial_key, arch, info), ...]``, best first.

    ``records`` are the controller's (``status`` done, ``reward``, ``arch``, ``meta``).  Feasible:
    no constraint violated by the architecture's params / FLOPs / intensity (recomputed from the
    architecture with :func:`search_spaces.epnas.arch_cost`, so a reward that arrived without its
    metrics counts the same); ranked by reward (= accuracy for a feasible network), then trial
    number; one entry per distinct architecture.  Fewer than ``k`` when fewer are feasible."""
    from search_spaces.epnas import arch_cost, arch_to_json

    done = [(key, r) for key, r in records.items() if r.get("status") == "done" and r.get("reward") is not None]
    done.sort(key=lambda kr: (-float(kr[1]["reward"]), int(kr[1]["meta"].get("trial", 0))))
    out, seen = [], set()
    for key, r in done:
        j = arch_to_json(r["arch"])
        if j in seen:
            continue
        cost = arch_cost(r["arch"], space, tuple(input_shape), num_classes)
        usage = {"params": cost.params, "flops": cost.flops, "intensity": cost.intensity}
        if _violations(usage, constraints):
            continue
        seen.add(j)
        out.append((key, r["arch"], {"reward": float(r["reward"]), "source_trial": int(r["meta"].get("trial", -1)),
                                     **usage}))
        if len(out) == k:
            break
    return out


FINAL_PREFIX = "f"


def is_final_key(key: str | None) -> bool:
    """Final-training trial keys are ``f00``, ``f01`` ... (search trials: ``t00000`` ...)."""
    return bool(key) and key.startswith(FINAL_PREFIX)


class FinalPhase:
    """The final phase as ask/tell, after a search (the tuner's and :class:`EpnasStrategy`'s last trials).

    :meth:`plan` (once, when the search is done and every search trial is told) picks the top-``k``
    feasible networks (:func:`select_final`); :meth:`propose` hands each out once as
    ``(key, arch, meta)`` with ``meta`` = ``trial`` (numbers continue after the search's),
    ``episode`` (one past the last), ``step 0``, ``branch`` = ``parent`` = the search trial it
    came from, ``final 1``, ``final_rank``, ``final_asked`` (k), ``final_found``; :meth:`tell`
    records a result (``None``: failed).  Fewer feasible networks than ``k``: those are trained and
    :attr:`note` says so.  Its state (plan, statuses, results) is saved with the tuner's; trials
    pending at a stop are proposed again after a resume unless NNI re-runs them (:meth:`adopt`)."""

    def __init__(self, k: int, constraints: Mapping[str, tuple[float | None, float | None]], *, space,
                 input_shape: Sequence[int], num_classes: int):
        if k < 0:
            raise UserError(f"final_top_k must be >= 0, got {k}")
        self.k, self.constraints, self.space = int(k), dict(constraints), space
        self.input_shape, self.num_classes = tuple(input_shape), int(num_classes)
        self.planned = False
        self.records: dict[str, dict[str, Any]] = {}
        self.note = ""

    def plan(self, records: Mapping[str, Mapping[str, Any]], *, next_trial: int, episode: int) -> bool:
        """Plan once; True when it planned now."""
        if self.planned:
            return False
        picks = select_final(records, self.constraints, self.k, space=self.space, input_shape=self.input_shape,
                             num_classes=self.num_classes) if self.k else []
        for rank, (src_key, arch, info) in enumerate(picks):
            meta = {"trial": next_trial + rank, "episode": episode, "step": 0, "branch": rank,
                    "parent": info["source_trial"], "final": 1, "final_rank": rank, "final_asked": self.k,
                    "final_found": len(picks), "action": f"final training of trial {info['source_trial']}",
                    "entropy": 0.0}   # no policy decision: keeps the web UI's entropy column numeric
            self.records[f"{FINAL_PREFIX}{rank:02d}"] = {"arch": arch, "meta": meta, "source": src_key,
                                                         "status": "new", "reward": None, "metrics": {}}
        if len(picks) < self.k:
            self.note = (f"final training: final_top_k={self.k} asked, the search found {len(picks)} feasible "
                         f"network(s); training {len(picks)}")
        self.planned = True
        return True

    def propose(self) -> list[tuple[str, dict, dict]]:
        out = []
        for key, r in self.records.items():
            if r["status"] == "new":
                r["status"] = "pending"
                out.append((key, dict(r["arch"]), dict(r["meta"])))
        return out

    def adopt(self, keys) -> None:
        """Trials NNI re-runs itself after ``nnictl resume``: pending, not proposed again."""
        for key in keys:
            if key in self.records and self.records[key]["status"] == "new":
                self.records[key]["status"] = "pending"

    def tell(self, key: str, reward: float | None, metrics: Mapping[str, Any] | None = None) -> bool:
        r = self.records.get(key)
        if r is None or r["status"] not in ("pending", "new"):
            return False
        failed = reward is None or not math.isfinite(float(reward))
        r["status"] = "failed" if failed else "done"
        r["reward"] = None if failed else float(reward)
        r["metrics"] = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        return True

    @property
    def finished(self) -> bool:
        return self.planned and all(r["status"] in ("done", "failed") for r in self.records.values())

    def results(self) -> list[dict[str, Any]]:
        """One row per planned network: rank, source trial, status, reward and the trial's metrics."""
        return [{"key": k, "final_rank": r["meta"]["final_rank"], "source_trial": r["meta"]["parent"],
                 "status": r["status"], "reward": r["reward"], **r["metrics"]} for k, r in self.records.items()]

    def state_dict(self) -> dict[str, Any]:
        import copy

        return {"k": self.k, "planned": self.planned, "records": copy.deepcopy(self.records), "note": self.note}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        import copy

        self.planned, self.note = bool(state["planned"]), str(state.get("note", ""))
        self.records = copy.deepcopy(dict(state["records"]))
        for r in self.records.values():   # their processes died with the old tuner: propose again
            if r["status"] == "pending":
                r["status"] = "new"


# ------------------------------------------------------------------------------------- training


def final_train(model: torch.nn.Module, train_loader, val_loader, cfg: FinalTrainingConfig, *, host=None,
                device: torch.device | str = "cpu", seed: int = 0, desc: str = "final training", counted=None,
                extra: Mapping[str, Any] | None = None):
    """Train ``model`` from scratch with ``cfg`` (SGD-Nesterov, per-step cosine) in the resumable
    phase ``final`` on ``host``; returns the phase (``time_s`` ...).  ``train_loader`` should already
    apply :class:`PhotometricAugment`.  The one training loop of the project does the work
    (:class:`strategies.training.TrainingPhase` + :func:`strategies.training.fit_epoch`)."""
    from .training import TrainingPhase, cosine_schedule, fit_epoch, sgd_nesterov

    model.to(device)
    opt = sgd_nesterov(model.parameters(), lr=cfg.final_lr, momentum=cfg.final_momentum,
                       weight_decay=cfg.final_weight_decay, nesterov=True)
    sched = cosine_schedule(opt, cfg.final_epochs * len(train_loader))
    loader = counted if counted is not None else train_loader

    def epoch_fn(epoch: int, bar) -> dict[str, Any]:
        before = getattr(loader, "flops", 0)
        _, _, row = fit_epoch(model, loader, val_loader, opt, scheduler=sched, device=device,
                              where=f"final epoch {epoch}", bar=bar)
        if counted is not None:
            row["train_flops"] = counted.flops - before
        return {**row, **(extra or {})}

    phase = TrainingPhase(host, "final", cfg.final_epochs, seed=seed, reseed=2, loader=train_loader, desc=desc)
    phase.run(epoch_fn, state={"model": model, "opt": opt, "sched": sched})
    return phase


def final_loader(train_set: Dataset, cfg: FinalTrainingConfig, *, seed: int):
    """The final training's shuffled loader over ``train_set`` with :class:`PhotometricAugment`."""
    from torch.utils.data import DataLoader

    aug = PhotometricAugment(train_set, brightness=cfg.final_brightness, contrast=cfg.final_contrast,
                             cutout=cfg.final_cutout, std=normalization_std(train_set))
    return DataLoader(aug, batch_size=cfg.final_batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- NasExperiment


@dataclass(frozen=True, kw_only=True)
class ProxyTrainingConfig:
    """Proxy training of a search trial (performance prediction, Sec. 3.4 / 4.1); the trial
    runner's fields of the same names have the same defaults."""

    epochs: int = 20                  # cosine schedule length (the paper's 20 epochs)
    stop_epoch: int = 10              # early stop (the paper's 10 epochs with prediction)
    lr: float = 0.5                   # at batch_ref (the paper's LR 0.5 with BZ 1024)
    batch_ref: int = 1024
    momentum: float = 0.9
    weight_decay: float = 5e-4        # not given in the paper
    nesterov: bool = True

    def __post_init__(self):
        if self.epochs < 1 or not 1 <= self.stop_epoch <= self.epochs:
            raise UserError(f"need epochs >= 1 and 1 <= stop_epoch <= epochs, got {self.epochs}, {self.stop_epoch}")
        if not self.lr > 0 or self.batch_ref < 1:
            raise UserError("lr must be > 0 and batch_ref >= 1")
        post = getattr(super(), "__post_init__", None)   # dataclass inheritance: chain the others' checks
        if post is not None:
            post()


def _nni_evaluator_base():
    from nni.nas.evaluator import Evaluator

    return Evaluator


class _EpnasEvaluatorImpl:
    """EPNAS's evaluator for NNI's ``NasExperiment`` with :class:`strategies.epnas_nni.EpnasStrategy`
    over :class:`search_spaces.epnas.EpnasSpace`: per model, the trial runner's proxy training
    (:class:`ProxyTrainingConfig`: ``lr * batch_size / batch_ref``, cosine over ``epochs``, early
    stop at ``stop_epoch``), parameter sharing (:class:`strategies.epnas_sharing.SharedWeights` in
    ``share_file``, default a temporary file of this evaluator; ``share=False``: none) and the
    constrained reward of the validation accuracy (reported as ``default``).  The strategy hands it
    its resource constraints (``reward``, when not given here) and, after the search, the final
    trainings (:class:`FinalTrainingConfig` ``final``): those models are trained from scratch without
    sharing.  Every model's full metrics (reward, accuracy, test_acc, params, flops, intensity,
    final ...) are kept in :attr:`results` under the strategy's trial key, since a multi-trial
    strategy sees only ``default``.

    Runs on NNI's sequential execution engine (``exp.config.execution_engine = SequentialEngineConfig()``):
    the loaders are Python objects of this process.  For parallel trials and the web UI use the
    nnictl path (``experiments/configs/epnas_*.yml``), which runs the same training."""

    def __init__(self, train_loader, val_loader, *, test_loader=None, proxy: ProxyTrainingConfig = ProxyTrainingConfig(),
                 final: FinalTrainingConfig = FinalTrainingConfig(), reward=None, share: bool = True,
                 share_file: str | None = None, device: str = "cpu", seed: int = 0, progress: bool = False):
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.proxy, self.final, self.reward = proxy, final, reward
        self.share, self.device, self.seed, self.progress = share, torch.device(device), seed, progress
        self._tmp = None
        if share and not share_file:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="epnas-share-")
            share_file = f"{self._tmp.name}/epnas_shared.pt"
        self.share_file = share_file
        self.results: dict[str, dict[str, Any]] = {}
        self.key: str | None = None
        self.meta: dict[str, Any] = {}

    def for_trial(self, key: str, meta: Mapping[str, Any]) -> "EpnasEvaluator":
        """A view of this evaluator for one trial (same loaders, sharing and :attr:`results`)."""
        import copy

        view = copy.copy(self)
        view.key, view.meta = key, dict(meta)
        return view

    def _usage(self, model) -> tuple[Any, dict[str, float]]:
        from search_spaces import cost as costmodel

        net = getattr(model, "net", model)
        shape = tuple(self.train_loader.dataset[0][0].shape)
        cost = costmodel.profile(net, shape)
        return cost, {"params": cost.params, "flops": cost.flops, "intensity": cost.intensity}

    def evaluate(self, model) -> float:
        import nni

        from .epnas import RewardConfig, constrained_reward, constraints_of
        from .epnas_sharing import SharedWeights
        from .training import MemoryHost, TrainingPhase, cosine_schedule, evaluate, fit_epoch, sgd_nesterov

        net = getattr(model, "net", model)
        cost, usage = self._usage(model)
        final = bool(self.meta.get("final"))
        host = MemoryHost(progress=self.progress)
        shared_loaded = shared_written = 0
        store = SharedWeights(self.share_file) if self.share and not final else None
        if final:
            loader = final_loader(self.train_loader.dataset, self.final, seed=self.seed)
            phase = final_train(net, loader, self.val_loader, self.final, host=host, device=self.device, seed=self.seed,
                                desc=f"epnas final {self.meta.get('final_rank')}")
            epochs = self.final.final_epochs
        else:
            p = self.proxy
            shared_loaded = store.load_into(net) if store is not None else 0
            net.to(self.device)
            lr = p.lr * self.train_loader.batch_size / p.batch_ref
            opt = sgd_nesterov(net.parameters(), lr=lr, momentum=p.momentum, weight_decay=p.weight_decay,
                               nesterov=p.nesterov)
            sched = cosine_schedule(opt, p.epochs * len(self.train_loader))

            def proxy_epoch(epoch: int, bar) -> dict[str, Any]:
                return fit_epoch(net, self.train_loader, self.val_loader, opt, scheduler=sched, device=self.device,
                                 where=f"epoch {epoch}", bar=bar)[2]

            phase = TrainingPhase(host, "proxy", p.stop_epoch, seed=self.seed, loader=self.train_loader,
                                  desc=f"epnas {self.key}")
            phase.run(proxy_epoch, state={"model": net, "opt": opt, "sched": sched})
            epochs = p.stop_epoch
        val_acc = evaluate(net, self.val_loader, self.device).acc
        test_acc = evaluate(net, self.test_loader, self.device).acc if self.test_loader is not None else float("nan")
        rc = self.reward if self.reward is not None else RewardConfig()
        reward = constrained_reward(val_acc, usage, constraints_of(rc), rc.base_penalty)
        net.cpu()
        if store is not None:
            shared_written = store.update(net, val_acc)
        metrics = {"default": reward, "reward": reward, "accuracy": val_acc, "test_acc": test_acc, **usage,
                   "bytes": cost.bytes, "final": int(final), "epochs_trained": epochs, "train_time_s": phase.time_s,
                   "shared_loaded": shared_loaded, "shared_written": shared_written,
                   **{k: v for k, v in self.meta.items() if isinstance(v, (int, float))}}
        if self.key is not None:
            self.results[self.key] = metrics
        nni.report_final_result(metrics)
        return reward


_lazy: dict[str, type] = {}


def __getattr__(name: str):
    # NNI's evaluator module imports pytorch-lightning (seconds): EpnasEvaluator is created on first
    # access, so the nnictl tuner and the trials, which import this module, stay quick to start
    if name == "EpnasEvaluator":
        if name not in _lazy:
            cls = type("EpnasEvaluator", (_EpnasEvaluatorImpl, _nni_evaluator_base()),
                       {"__doc__": _EpnasEvaluatorImpl.__doc__, "__module__": __name__})
            _lazy[name] = cls
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
