"""The networks around a SCANN synthesis: its data, the MLP baseline, the seed, costs and export.

Paper: ``../shared/seeds/002_d08e71b4be716ba4.txt``.  The baseline is "the best MLP baseline found
with the help of the validation set" (Sec. 4.2) -- :func:`train_mlp` keeps its best-validation
epoch -- and Scheme C starts from its trained weights (:func:`seed_network`).  Costs count the real
sparse structure after removing neurons without inputs or outputs (function-preserving; the
paper removes a neuron once all its connections are gone), via :mod:`search_spaces.cost`.
Image mode (Sec. 4.1): :func:`extract_features` runs the frozen convolutional part of the trained
LeNet-5 (:mod:`search_spaces.lenet`) over a data set, and SCANN synthesises the fully connected
part on those features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn

from search_spaces import cost as costmodel
from search_spaces.feedforward import FeedForwardNet, FeedForwardSpec, PrunedFeedForward, split_groups

from ..training import TensorLoader, evaluate, train_epoch
from .config import ScannConfig
from .operations import make_optimizer

__all__ = ["ExportedNetwork", "TensorData", "export_network", "extract_features", "mlp_net", "network_cost",
           "seed_network", "train_mlp"]


@dataclass
class TensorData:
    """Train/val(/test) tensors: ``X`` float32 ``(n, d)``, ``y`` int64."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, X_train, y_train, X_val, y_val, X_test=None, y_test=None, device="cpu") -> TensorData:
        def t(a, dtype):
            return None if a is None else torch.as_tensor(a, dtype=dtype, device=device)

        return cls(t(X_train, torch.float32), t(y_train, torch.long), t(X_val, torch.float32), t(y_val, torch.long),
                   t(X_test, torch.float32), t(y_test, torch.long))

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def num_classes(self) -> int:
        ys = [self.y_train, self.y_val] + ([self.y_test] if self.y_test is not None else [])
        return int(max(int(y.max()) for y in ys)) + 1

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_val, self.y_val

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.X_test is None else (self.X_test, self.y_test)


# --------------------------------------------------------------------------- the baseline and the seed


def mlp_net(num_inputs: int, hidden: Sequence[int], num_outputs: int, *, generator=None) -> FeedForwardNet:
    """A dense MLP (MLP mode, adjacent layers fully connected)."""
    return FeedForwardNet(FeedForwardSpec(num_inputs=num_inputs, num_outputs=num_outputs, groups=tuple(hidden),
                                          mlp=True, wiring="mlp"), generator=generator)


def train_mlp(hidden: Sequence[int], data: TensorData, *, epochs: int, optimizer: str = "adam", lr: float = 3e-3,
              momentum: float = 0.0, weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0,
              keep: Literal["best", "last"] = "best") -> tuple[FeedForwardNet, dict[str, float]]:
    """Train a dense MLP; keep its best-validation epoch (accuracy, ties: loss), or with
    ``keep="last"`` its last epoch (the validation data then choose nothing: ``epochs`` is fixed by
    the caller, e.g. to the epoch another run chose).  Returns ``(net, figures)``."""
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    gen = torch.Generator().manual_seed(seed)
    net = mlp_net(data.num_features, hidden, data.num_classes, generator=gen).to(data.X_train.device)
    opt = make_optimizer(net, ScannConfig(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay))
    loader = TensorLoader(data.X_train, data.y_train, batch_size=batch_size, generator=gen)
    best, best_key, best_epoch = net.snapshot(), None, 0
    for epoch in range(epochs):
        train_epoch(net, loader, opt, where=f"MLP {tuple(hidden)} epoch {epoch}")
        if keep == "last":
            best, best_epoch = net.snapshot(), epoch + 1
            continue
        val = evaluate(net, data.val)
        if best_key is None or (val.acc, -val.loss) > best_key:  # ties in accuracy: lower validation loss
            best, best_key, best_epoch = net.snapshot(), (val.acc, -val.loss), epoch + 1
    net.restore(best)
    val = evaluate(net, data.val)
    out = {"val_acc": val.acc, "val_loss": val.loss, "epochs": best_epoch}
    if data.test is not None:
        test = evaluate(net, data.test)
        out["test_loss"], out["test_acc"] = test.loss, test.acc
    params, flops = network_cost(net)
    out.update(params=params, flops=flops, connections=net.connections, neurons=net.num_hidden)
    return net, out


def seed_network(cfg: ScannConfig, num_inputs: int, num_outputs: int, *, baseline: FeedForwardNet | None = None,
                 generator: torch.Generator | None = None) -> FeedForwardNet:
    """The scheme's starting architecture (``cfg`` resolved, :meth:`ScannConfig.resolve`).

    A and B: ``initial_neurons`` hidden neurons spread over ``groups`` order groups, wired as one
    hidden layer (Fig. 6: growth then adds the connections that create depth).  C: a copy of the
    (trained) ``baseline`` MLP -- "the FC part of the baseline architecture" (Sec. 4.1) -- or a
    fresh MLP of ``initial_neurons`` over ``groups`` layers.
    """
    if cfg.scheme == "C" and baseline is not None:
        net = FeedForwardNet.from_snapshot(baseline.snapshot(), device=baseline.weight.device)
        if not net.mlp:
            raise ValueError("Scheme C needs an MLP baseline")
        return net
    mlp = cfg.scheme == "C"
    spec = FeedForwardSpec(num_inputs=num_inputs, num_outputs=num_outputs, groups=split_groups(cfg.initial_neurons,
                           cfg.groups), mlp=mlp, wiring="mlp" if mlp else "wide")
    return FeedForwardNet(spec, generator=generator)


# --------------------------------------------------------------------------- costs and export


def network_cost(net: FeedForwardNet) -> tuple[int, int]:
    """``(params, FLOPs)`` of the real sparse structure (after removing dead neurons):
    connections + biases, and 2 x connections per sample."""
    sparse = net.cleaned().to_sparse()
    return costmodel.count_params(sparse), costmodel.count_flops(sparse, (net.num_inputs,))


@dataclass
class ExportedNetwork:
    arch: dict[str, Any]
    pruned: PrunedFeedForward
    masked: dict[str, Any]
    params: int
    flops: int


def export_network(net: FeedForwardNet, feature_names: Sequence[str] | None = None) -> ExportedNetwork:
    """The compact network (dead neurons removed) as ``arch`` (JSON), a pruned dense-per-layer
    model and the masked snapshot."""
    net = net.cleaned()
    params, flops = network_cost(net)
    pruned = net.to_pruned()
    arch = net.arch(feature_names)
    arch.update(params=params, flops=flops, pruned_shapes=[list(s) for s in pruned.shapes])
    return ExportedNetwork(arch=arch, pruned=pruned, masked=net.snapshot(), params=params, flops=flops)


@torch.no_grad()
def extract_features(features: nn.Module, loader, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Run a fixed extractor over a loader: ``(X (n, d) float32, y (n,) int64)`` on the CPU."""
    was = features.training
    features.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(features(x.to(device)).flatten(1).cpu())
        ys.append(torch.as_tensor(y))
    features.train(was)
    return torch.cat(xs), torch.cat(ys).long()
