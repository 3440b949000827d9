"""General feed-forward graph space for SCANN (grow-and-prune synthesis of feed-forward networks).

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (Hassantabar, Wang, Jha;
``../shared/seeds/002_d08e71b4be716ba4.txt``), Sec. 3.4 "Depth Change" and Fig. 4: instead of an
MLP, hidden neurons are ordered and any neuron may connect to any *later* one (skip connections),
so the depth of the network is not fixed up front but emerges from the wiring.  Sec. 3.7.3:
Scheme C keeps an MLP (connections between adjacent layers only).

Representation (vectorised)
---------------------------
Nodes are the ``D`` inputs, ``H`` hidden neurons and ``K`` outputs.  Hidden neurons are split
into ordered *groups* (contiguous index ranges).  With layers ``0`` = inputs, ``1..G`` = hidden
groups and ``G+1`` = outputs, a connection ``l -> l'`` is *allowed* when ``l < l'`` (general
feed-forward; ``l' = l + 1`` only in MLP mode).  All weights live in one matrix
``weight[H + K, D + H]`` (rows: hidden then output neurons; columns: inputs then hidden neurons)
with a boolean ``mask`` of the same shape; :meth:`FeedForwardNet.pair_mask` is the mask of one
pair of layers.  A forward pass is one matmul per group over the concatenation of everything
before it.  Deviation: the paper's order is per neuron; a group of ``n`` neurons shares one
position in the order (neurons of one group cannot feed each other), which keeps the forward
pass at ``G + 1`` matmuls.  ``groups`` of size 1 give the paper's per-neuron order exactly.

Depth emerges from the wiring: a hidden neuron's depth is 1 + the largest depth among the hidden
neurons that feed it (inputs have depth 0), and the network's depth (number of hidden layers) is
the largest neuron depth (Fig. 4: three neurons form one, two or three hidden layers).

Initial wiring (``wiring``): ``"wide"`` -- one hidden layer: every hidden neuron reads every
input and feeds every output, spread over the order groups so growth can later wire groups
into deeper chains (Fig. 6); ``"mlp"`` -- adjacent layers fully connected (an MLP whose layers
are the groups; Scheme C and the baselines); ``"dense"`` -- every allowed connection;
``"empty"`` -- none.

Exports: :meth:`FeedForwardNet.to_pruned` gives a dense-per-layer model over the live neurons
(layers = emerged depths, each reading only the nodes it uses; its outputs equal the masked
model's), and :meth:`FeedForwardNet.to_sparse` a neuron-wise model that holds exactly one
weight per connection plus one bias per neuron, so :func:`search_spaces.cost.count_params` counts
connections + biases and :func:`search_spaces.cost.count_flops` counts ``2 x connections`` (the
real sparse structure) -- costs are still computed in ``cost.py`` only.

NNI: the settings a sweep varies are mutables (:func:`synthesis_mutables`), labelled with the
trial config key they set; :func:`synthesis_search_space` gives the search-space dict of an
nnictl config (with the nested DR-method/ratio choice of :func:`dr_choice`), and
``experiments/configs/scann_schemes.yml`` is tested against it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

__all__ = [
    "WIRINGS",
    "SCHEMES",
    "FeedForwardSpec",
    "FeedForwardNet",
    "Reindex",
    "PrunedFeedForward",
    "SparseFeedForward",
    "split_groups",
    "SWEEP_KEYS",
    "DR_SWEEP_RATIOS",
    "synthesis_mutables",
    "dr_choice",
    "synthesis_search_space",
]

WIRINGS = ("wide", "mlp", "dense", "empty")
SCHEMES = ("A", "B", "C")


def split_groups(neurons: int, groups: int) -> tuple[int, ...]:
    """``neurons`` hidden neurons spread as evenly as possible over ``groups`` order groups."""
    if neurons < 0 or groups < 1:
        raise UserError(f"need neurons >= 0 and groups >= 1, got neurons={neurons}, groups={groups}")
    base, extra = divmod(neurons, groups)
    return tuple(base + (1 if g < extra else 0) for g in range(groups))


@dataclass(frozen=True, kw_only=True)
class FeedForwardSpec:
    """A feed-forward graph: inputs, ordered hidden groups, outputs, MLP mode and initial wiring."""

    num_inputs: int
    num_outputs: int
    groups: tuple[int, ...]
    mlp: bool = False
    wiring: str = "wide"

    def __post_init__(self):
        if self.num_inputs < 1:
            raise UserError(f"num_inputs must be >= 1, got {self.num_inputs}")
        if self.num_outputs < 1:
            raise UserError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if any(n < 0 for n in self.groups):
            raise UserError(f"group sizes must be >= 0, got {self.groups}")
        if self.wiring not in WIRINGS:
            raise UserError(f"unknown wiring {self.wiring!r}; valid: {', '.join(WIRINGS)}")


@dataclass(frozen=True)
class Reindex:
    """How a structural change moved rows/columns: for every new row (column) the old index, -1 if new."""

    rows: torch.Tensor
    cols: torch.Tensor


class FeedForwardNet(nn.Module):
    """Masked general feed-forward network over ordered hidden groups (see module docstring)."""

    def __init__(self, spec: FeedForwardSpec, *, generator: torch.Generator | None = None):
        super().__init__()
        self.num_inputs = spec.num_inputs
        self.num_outputs = spec.num_outputs
        self.mlp = bool(spec.mlp)
        self.group_sizes: list[int] = [int(n) for n in spec.groups]
        H, D, K = sum(self.group_sizes), self.num_inputs, self.num_outputs
        self.weight = nn.Parameter(torch.zeros(H + K, D + H))
        self.bias = nn.Parameter(torch.zeros(H + K))
        self.register_buffer("mask", torch.zeros(H + K, D + H, dtype=torch.bool))
        self.mask.copy_(self._initial_mask(spec.wiring))
        self.reset_parameters(generator)

    # ---- structure --------------------------------------------------------------------------
    @property
    def num_hidden(self) -> int:
        return sum(self.group_sizes)

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    def group_bounds(self) -> list[tuple[int, int]]:
        """``[(start, end)]`` hidden-index range of every group."""
        out, s = [], 0
        for n in self.group_sizes:
            out.append((s, s + n))
            s += n
        return out

    def group_of(self) -> torch.Tensor:
        """Group index of every hidden neuron, shape ``(H,)``."""
        return torch.repeat_interleave(torch.arange(self.num_groups), torch.tensor(self.group_sizes, dtype=torch.long))

    def _layers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer of every row (hidden: group+1, outputs: G+1) and column (inputs: 0, hidden: group+1)."""
        hidden = self.group_of() + 1
        rows = torch.cat([hidden, torch.full((self.num_outputs,), self.num_groups + 1)])
        cols = torch.cat([torch.zeros(self.num_inputs, dtype=torch.long), hidden])
        return rows.to(self.mask.device), cols.to(self.mask.device)

    def allowed(self) -> torch.Tensor:
        """Boolean ``(H + K, D + H)``: connections the space allows (DAG order; adjacent in MLP mode)."""
        rows, cols = self._layers()
        if self.mlp:
            return rows[:, None] == cols[None, :] + 1
        return rows[:, None] > cols[None, :]

    def _initial_mask(self, wiring: str) -> torch.Tensor:
        rows, cols = self._layers()
        G = self.num_groups
        if wiring == "empty":
            return torch.zeros_like(self.mask)
        if wiring == "dense":
            return self.allowed()
        if wiring == "mlp":
            if G == 0:
                return rows[:, None] == cols[None, :] + 1
            return (rows[:, None] == cols[None, :] + 1) & self.allowed()
        # wide: inputs -> every hidden neuron, every hidden neuron -> outputs
        if self.num_hidden == 0:
            return self.allowed()
        w = (cols[None, :] == 0) & (rows[:, None] <= G) | (cols[None, :] > 0) & (rows[:, None] == G + 1)
        if self.mlp and G > 1:
            raise UserError("wiring 'wide' needs a single hidden group in MLP mode (use wiring 'mlp')")
        return w

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) on active connections (torch's Linear rule)."""
        with torch.no_grad():
            fan_in = self.mask.sum(1).clamp(min=1).to(self.weight.dtype)
            bound = (1.0 / fan_in.sqrt())
            u = torch.rand(self.weight.shape, generator=generator) * 2 - 1
            self.weight.copy_(u.to(self.weight.device) * bound[:, None] * self.mask)
            ub = torch.rand(self.bias.shape, generator=generator) * 2 - 1
            self.bias.copy_(ub.to(self.bias.device) * bound)

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero every dormant weight (the mask is the truth; weights outside it are exactly 0)."""
        self.weight.mul_(self.mask)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def pair_mask(self, src_layer: int, dst_layer: int) -> torch.Tensor:
        """Mask block of connections from layer ``src_layer`` to ``dst_layer`` (0 = inputs, G+1 = outputs)."""
        rows, cols = self._layers()
        return self.mask[rows == dst_layer][:, cols == src_layer]

    # ---- forward ----------------------------------------------------------------------------
    def _src_start(self, g: int) -> int:
        """First column read by group ``g`` (``g == G``: the outputs)."""
        if not self.mlp or g == 0:
            return 0
        return self.num_inputs + sum(self.group_sizes[: g - 1])

    def forward_hidden(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, hidden activations (B, H))`` using ``weight`` (default: the masked weight)."""
        w = self.effective_weight() if weight is None else weight
        D, H = self.num_inputs, self.num_hidden
        parts = [x]
        for g, (s, e) in enumerate(self.group_bounds()):
            if e == s:
                continue
            lo = self._src_start(g)
            src = torch.cat(parts, 1) if len(parts) > 1 else x
            parts.append(F.relu(F.linear(src[:, lo:D + s], w[s:e, lo:D + s], self.bias[s:e])))
        nodes = torch.cat(parts, 1) if len(parts) > 1 else x
        lo = self._src_start(self.num_groups)
        out = F.linear(nodes[:, lo:], w[H:, lo:], self.bias[H:])
        return out, nodes[:, D:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_hidden(x)[0]

    # ---- statistics -------------------------------------------------------------------------
    @property
    def connections(self) -> int:
        return int(self.mask.sum())

    def allowed_connections(self) -> int:
        return int(self.allowed().sum())

    def used_inputs(self) -> list[int]:
        """Inputs with at least one active outgoing connection."""
        return torch.nonzero(self.mask[:, : self.num_inputs].any(0)).flatten().tolist()

    def neuron_depths(self) -> torch.Tensor:
        """Depth of every hidden neuron: 1 + the deepest hidden neuron feeding it (inputs: 0)."""
        D = self.num_inputs
        depth = torch.zeros(self.num_hidden, dtype=torch.long)
        m = self.mask.cpu()
        for s, e in self.group_bounds():
            if e == s:
                continue
            if s == 0:
                depth[s:e] = 1
                continue
            feeds = m[s:e, D:D + s]
            depth[s:e] = 1 + torch.where(feeds, depth[:s][None, :], torch.zeros_like(depth[:s])[None, :]).max(1).values
        return depth

    @property
    def depth(self) -> int:
        """Number of hidden layers that emerged from the wiring."""
        d = self.neuron_depths()
        return int(d.max()) if d.numel() else 0

    def skip_connections(self) -> int:
        """Active connections that skip at least one emerged layer (inputs count as depth 0, outputs as depth+1)."""
        D, H = self.num_inputs, self.num_hidden
        d = self.neuron_depths()
        node_depth = torch.cat([torch.zeros(D, dtype=torch.long), d])
        row_depth = torch.cat([d, torch.full((self.num_outputs,), self.depth + 1, dtype=torch.long)])
        gap = row_depth[:, None] - node_depth[None, :]
        return int((self.mask.cpu() & (gap > 1)).sum())

    def stats(self) -> dict[str, Any]:
        return {
            "neurons": self.num_hidden,
            "connections": self.connections,
            "allowed_connections": self.allowed_connections(),
            "depth": self.depth,
            "skip_connections": self.skip_connections(),
            "active_inputs": len(self.used_inputs()),
            "group_sizes": "/".join(map(str, self.group_sizes)),
        }

    # ---- structural operations ----------------------------------------------------------------
    def _reindex_(self, rows: torch.Tensor, cols: torch.Tensor, group_sizes: list[int]) -> None:
        """Rebuild weight/bias/mask as ``old[rows][:, cols]`` (parameter objects are kept)."""
        with torch.no_grad():
            self.weight.data = self.weight.data[rows][:, cols].clone()
            self.bias.data = self.bias.data[rows].clone()
            self.mask = self.mask[rows][:, cols].clone()
        self.group_sizes = list(group_sizes)

    def add_neurons(self, parents: Sequence[int], *, noise: float = 0.1,
                    generator: torch.Generator | None = None) -> Reindex:
        """Duplicate hidden neurons ``parents`` (Sec. 3.6.2, Algorithm 4).

        Each copy joins its parent's group, gets the parent's incoming and outgoing connections,
        weights and bias, plus Gaussian noise (``noise`` x the RMS of the parent's active weights
        on that side) on its active connections to break the symmetry.
        """
        parents = [int(p) for p in parents]
        if not parents:
            n = self.num_hidden + self.num_outputs
            return Reindex(torch.arange(n), torch.arange(self.num_inputs + self.num_hidden))
        H, D, K = self.num_hidden, self.num_inputs, self.num_outputs
        if min(parents) < 0 or max(parents) >= H:
            raise ValueError(f"parent neurons must be in 0..{H - 1}")
        group_of = self.group_of().tolist()
        order: list[int] = []      # old hidden index (or parent) for each new hidden index
        is_new: list[bool] = []
        sizes = []
        for g, (s, e) in enumerate(self.group_bounds()):
            kids = [p for p in parents if group_of[p] == g]
            order += list(range(s, e)) + kids
            is_new += [False] * (e - s) + [True] * len(kids)
            sizes.append(e - s + len(kids))
        src = torch.tensor(order, dtype=torch.long)
        new = torch.tensor(is_new)
        rows = torch.cat([src, torch.arange(H, H + K)])
        cols = torch.cat([torch.arange(D), D + src])
        self._reindex_(rows.to(self.mask.device), cols.to(self.mask.device), sizes)
        with torch.no_grad():
            w, m = self.weight.data, self.mask
            for h in torch.nonzero(new).flatten().tolist():
                for line, lm in ((w[h], m[h]), (w[:, D + h], m[:, D + h])):
                    active = line[lm]
                    if active.numel():
                        rms = float(active.pow(2).mean().sqrt())
                        eps = torch.randn(active.shape, generator=generator).to(line.device) * noise * rms
                        line[lm] = active + eps
        marker = torch.where(new, torch.full_like(src, -1), src)
        return Reindex(torch.cat([marker, torch.arange(H, H + K)]), torch.cat([torch.arange(D), torch.where(new, -1, D + src)]))

    def remove_dead_neurons(self, *, isolated_only: bool = False) -> tuple[int, Reindex]:
        """Remove hidden neurons that no longer matter; returns ``(count, Reindex)``.

        ``isolated_only=True`` is the paper's rule (Sec. 3.6.3): a neuron is removed once *all*
        its connections are pruned; a neuron that still has connections on one side stays, and
        growth may reconnect it.  The default also removes neurons without outgoing connections
        (they cannot affect the output) and neurons without incoming connections (they output the
        constant ``relu(bias)``, which is folded into the biases of the neurons they feed), so the
        network's function never changes; repeated until no such neuron is left.  This is the
        clean-up applied to evaluated and exported networks.
        """
        D, K = self.num_inputs, self.num_outputs
        H0 = self.num_hidden
        keep_old = torch.arange(H0)
        removed = 0
        while self.num_hidden:
            H = self.num_hidden
            m = self.mask
            has_in = m[:H].any(1)
            has_out = m[:, D:].any(0)
            dead = ~(has_in | has_out) if isolated_only else ~(has_in & has_out)
            if not bool(dead.any()):
                break
            with torch.no_grad():
                const = F.relu(self.bias.data[:H]) * (~has_in & has_out)
                self.bias.data += (self.weight.data[:, D:] * m[:, D:]) @ const
            alive = torch.nonzero(~dead).flatten()
            sizes = []
            for s, e in self.group_bounds():
                sizes.append(int((~dead[s:e]).sum()))
            rows = torch.cat([alive, torch.arange(H, H + K, device=alive.device)])
            cols = torch.cat([torch.arange(D, device=alive.device), D + alive])
            self._reindex_(rows, cols, sizes)
            keep_old = keep_old[alive.cpu()]
            removed += int(dead.sum())
        return removed, Reindex(torch.cat([keep_old, torch.arange(H0, H0 + K)]), torch.cat([torch.arange(D), D + keep_old]))

    def cleaned(self) -> "FeedForwardNet":
        """A copy without dead neurons (same function; see :meth:`remove_dead_neurons`)."""
        net = FeedForwardNet.from_snapshot(self.snapshot(), device=self.weight.device)
        net.remove_dead_neurons()
        return net

    # ---- (de)serialisation -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (weights, mask, groups)."""
        return {"num_inputs": self.num_inputs, "num_outputs": self.num_outputs, "mlp": self.mlp,
                "group_sizes": list(self.group_sizes), "weight": self.weight.detach().cpu().clone(),
                "bias": self.bias.detach().cpu().clone(), "mask": self.mask.cpu().clone()}

    def restore(self, snap: Mapping[str, Any]) -> None:
        if (snap["num_inputs"], snap["num_outputs"], bool(snap["mlp"])) != (self.num_inputs, self.num_outputs, self.mlp):
            raise ValueError("snapshot is for a network with other inputs/outputs/mode")
        dev = self.weight.device
        with torch.no_grad():
            self.weight.data = snap["weight"].clone().to(dev)
            self.bias.data = snap["bias"].clone().to(dev)
        self.mask = snap["mask"].clone().to(dev)
        self.group_sizes = [int(n) for n in snap["group_sizes"]]

    @classmethod
    def from_snapshot(cls, snap: Mapping[str, Any], device: torch.device | str | None = None) -> "FeedForwardNet":
        """Rebuild a network from :meth:`snapshot` (whose tensors are on the CPU) on ``device``
        (default: the CPU)."""
        net = cls(FeedForwardSpec(num_inputs=int(snap["num_inputs"]), num_outputs=int(snap["num_outputs"]),
                                  groups=tuple(snap["group_sizes"]), mlp=bool(snap["mlp"]), wiring="empty"))
        if device is not None:
            net.to(device)
        net.restore(snap)
        return net

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> "FeedForwardNet":
        """An MLP-mode network holding the weights of a dense ``Linear``/ReLU stack (Scheme C's seed)."""
        sizes = [lin.out_features for lin in linears[:-1]]
        net = cls(FeedForwardSpec(num_inputs=linears[0].in_features, num_outputs=linears[-1].out_features,
                                  groups=tuple(sizes), mlp=True, wiring="mlp"))
        D, H = net.num_inputs, net.num_hidden
        with torch.no_grad():
            r, c = 0, 0
            col_ranges = [(0, D)] + [(D + s, D + e) for s, e in net.group_bounds()]
            row_ranges = [(s, e) for s, e in net.group_bounds()] + [(H, H + net.num_outputs)]
            for lin, (r0, r1), (c0, c1) in zip(linears, row_ranges, col_ranges):
                net.weight[r0:r1, c0:c1] = lin.weight
                net.bias[r0:r1] = lin.bias
        return net

    # ---- exports --------------------------------------------------------------------------------
    def _layer_plan(self) -> tuple[list[list[int]], torch.Tensor]:
        """Hidden neurons per emerged depth (1..L) and the position of every column in the
        layered node order (inputs, then depth-1 neurons, depth-2 neurons, ...)."""
        d = self.neuron_depths()
        L = int(d.max()) if d.numel() else 0
        layers = [torch.nonzero(d == k).flatten().tolist() for k in range(1, L + 1)]
        D = self.num_inputs
        pos = torch.empty(D + self.num_hidden, dtype=torch.long)
        pos[:D] = torch.arange(D)
        p = D
        for members in layers:
            for h in members:
                pos[D + h] = p
                p += 1
        return layers, pos

    @torch.no_grad()
    def to_pruned(self) -> "PrunedFeedForward":
        """Dense-per-layer model over the live structure; its outputs equal this network's."""
        layers, pos = self._layer_plan()
        w = self.effective_weight().detach().cpu()
        m = self.mask.cpu()
        b = self.bias.detach().cpu()
        H = self.num_hidden
        specs = []
        for rows in layers + [list(range(H, H + self.num_outputs))]:
            r = torch.tensor(rows, dtype=torch.long)
            used = torch.nonzero(m[r].any(0)).flatten()
            order = torch.argsort(pos[used])
            used = used[order]
            specs.append((pos[used], w[r][:, used], b[r]))
        model = PrunedFeedForward(self.num_inputs, [(len(s[0]), s[1].shape[0]) for s in specs])
        for layer, (src, weight, bias) in zip(model.layers, specs):
            layer.src_index.copy_(src)
            layer.linear.weight.copy_(weight)
            layer.linear.bias.copy_(bias)
        return model

    @torch.no_grad()
    def to_sparse(self) -> "SparseFeedForward":
        """Neuron-wise model: one parameter per connection, one per bias (for the cost model)."""
        w = self.effective_weight().detach().cpu()
        m = self.mask.cpu()
        b = self.bias.detach().cpu()
        fan = [torch.nonzero(m[r]).flatten() for r in range(m.shape[0])]
        model = SparseFeedForward(self.num_inputs, self.num_hidden, self.num_outputs, [len(f) for f in fan])
        for r, f in enumerate(fan):
            model.src[r].copy_(f)
            model.weights[r].copy_(w[r, f])
            model.biases[r].copy_(b[r:r + 1])
        return model

    def arch(self, feature_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-able description: structure, emerged layers and every active connection.

        Node ids: inputs ``0..D-1``, hidden ``D..D+H-1``, outputs ``D+H..D+H+K-1``; ``edges`` are
        ``[src, dst]`` node ids.
        """
        D, H = self.num_inputs, self.num_hidden
        m = self.mask.cpu()
        r, c = torch.nonzero(m, as_tuple=True)
        # row r is node D + r (hidden rows 0..H-1 -> D.., output rows H.. -> D+H..)
        dst = (D + r).tolist()
        depths = self.neuron_depths()
        layers, _ = self._layer_plan()
        return {
            "space": "feedforward",
            "num_inputs": D,
            "num_outputs": self.num_outputs,
            "num_hidden": H,
            "mlp": self.mlp,
            "group_sizes": list(self.group_sizes),
            "connections": self.connections,
            "depth": self.depth,
            "skip_connections": self.skip_connections(),
            "neuron_depths": depths.tolist(),
            "layers": [len(x) for x in layers],
            "used_inputs": self.used_inputs(),
            "feature_names": list(feature_names) if feature_names is not None else None,
            "edges": [[int(a), int(b)] for a, b in zip(c.tolist(), dst)],
        }


class _PrunedLayer(nn.Module):
    def __init__(self, n_src: int, n_out: int):
        super().__init__()
        self.register_buffer("src_index", torch.zeros(n_src, dtype=torch.long))
        with warnings.catch_warnings():  # a layer may read nothing (everything pruned): fine
            warnings.simplefilter("ignore")
            self.linear = nn.Linear(n_src, n_out)


class PrunedFeedForward(nn.Module):
    """Dense layers over the live neurons of a synthesised network, one per emerged depth.

    Layer ``k`` reads the nodes it uses out of ``[inputs, layer 1, ..., layer k-1]``
    (``src_index``) -- skip connections are reads of earlier nodes; the last layer is the output.
    ``shapes`` is ``[(n_src, n_out)]`` per layer, enough to rebuild it for ``load_state_dict``.
    """

    def __init__(self, num_inputs: int, shapes: Sequence[tuple[int, int]]):
        super().__init__()
        self.num_inputs = num_inputs
        self.shapes = [tuple(map(int, s)) for s in shapes]
        self.layers = nn.ModuleList(_PrunedLayer(a, b) for a, b in self.shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = x
        for i, layer in enumerate(self.layers):
            out = layer.linear(nodes.index_select(1, layer.src_index))
            if i == len(self.layers) - 1:
                return out
            nodes = torch.cat([nodes, F.relu(out)], 1)
        return nodes  # pragma: no cover (there is always an output layer)


class SparseFeedForward(nn.Module):
    """Exactly sparse, neuron-wise evaluation: neuron ``r`` reads its ``fan_in[r]`` source nodes.

    Holds one weight per active connection and one bias per live neuron; each neuron is one
    ``(B, fan_in) x (fan_in, 1)`` matmul, so the FLOP counter sees ``2 x connections`` per sample.
    Slow by design (a Python loop over neurons); meant for costs and checks, not for training.
    """

    def __init__(self, num_inputs: int, num_hidden: int, num_outputs: int, fan_in: Sequence[int]):
        super().__init__()
        self.num_inputs, self.num_hidden, self.num_outputs = num_inputs, num_hidden, num_outputs
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(int(n))) for n in fan_in)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(1)) for _ in fan_in)
        self.src = [torch.zeros(int(n), dtype=torch.long) for n in fan_in]  # plain lists: not state

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        D, H, K = self.num_inputs, self.num_hidden, self.num_outputs
        nodes = x.new_zeros(x.shape[0], D + H)
        nodes[:, :D] = x
        out = x.new_zeros(x.shape[0], K)
        for r in range(H + K):
            src = self.src[r].to(x.device)
            if src.numel():
                z = F.linear(nodes.index_select(1, src), self.weights[r][None, :], self.biases[r])[:, 0]
            else:
                z = self.biases[r].expand(x.shape[0])
            if r < H:
                nodes[:, D + r] = F.relu(z)
            else:
                out[:, r - H] = z
        return out


# --------------------------------------------------------------------------- NNI mutables

#: Settings a sweep may vary: trial-config keys (``experiments.methods.scann.ScannTrialConfig``).
SWEEP_KEYS = ("scheme", "initial_neurons", "max_neurons", "grow_to", "prune_fraction", "prune_keep", "iterations")
#: Feature-compression ratios of the DR sweep (paper 002, Sec. 4.2; ``scann_schemes.yml``).
DR_SWEEP_RATIOS = (0.25, 0.5, 0.75)


def synthesis_mutables(**values: Sequence[Any]) -> dict[str, Any]:
    """NNI mutables (``nni.choice``) of a SCANN sweep, labelled with the trial config key they set.

    ``scheme`` sweeps all of A, B, C unless given; any other key of :data:`SWEEP_KEYS` is swept
    over the values given (``synthesis_mutables(scheme=["A", "C"], prune_keep=[0.05])``) and is
    not declared otherwise (there is no default sweep for it); unknown keys are a
    :class:`UserError`.  A sampled dict can be passed to the trial as is.
    """
    import nni

    unknown = [k for k in values if k not in SWEEP_KEYS]
    if unknown:
        raise UserError(f"unknown synthesis setting {unknown[0]!r}; valid: {', '.join(SWEEP_KEYS)}")
    out = {}
    for key in SWEEP_KEYS:
        if key != "scheme" and key not in values:
            continue
        choices = list(values.get(key, SCHEMES))
        if not choices:
            raise UserError(f"synthesis setting {key!r} needs at least one value")
        if key == "scheme" and any(c not in SCHEMES for c in choices):
            raise UserError(f"scheme values must be among {', '.join(SCHEMES)}, got {choices}")
        out[key] = nni.choice(key, choices)
    return out


def dr_choice(methods: Sequence[str], ratios: Sequence[float] = DR_SWEEP_RATIOS) -> dict[str, Any]:
    """nnictl nested choice over feature reduction: ``{"_name": "none"}`` (SCANN alone, once) and
    each of ``methods`` with a ``dr_ratio`` sub-choice over ``ratios``.  The trial flattens a
    sampled ``{"_name": "pca", "dr_ratio": 0.5}`` into ``dr_method=pca, dr_ratio=0.5``.

    Written in nnictl's format rather than as NNI mutables: NNI 3.0's ``nni.choice`` has no
    nested choices, and a flat ``dr_method`` x ``dr_ratio`` product would run "none" once per ratio.
    """
    if not methods or not ratios:
        raise UserError("a DR sweep needs at least one method and one ratio")
    if "none" in methods:
        raise UserError("'none' (SCANN without DR) is always swept; leave it out of the methods")
    ratio = {"_type": "choice", "_value": list(ratios)}
    return {"_type": "choice", "_value": [{"_name": "none"}] + [{"_name": m, "dr_ratio": dict(ratio)} for m in methods]}


def synthesis_search_space(keys: Sequence[str] | None = None, *, dr_methods: Sequence[str] = (),
                           dr_ratios: Sequence[float] = DR_SWEEP_RATIOS, **values: Sequence[Any]) -> dict[str, dict]:
    """nnictl ``searchSpace`` dict of :func:`synthesis_mutables` (``{"scheme": {"_type": "choice",
    "_value": [...]}, ...}``; ``keys`` picks some of them), plus ``dr_method`` (:func:`dr_choice`)
    when ``dr_methods`` are given.  ``experiments/configs/scann_schemes.yml`` is
    ``synthesis_search_space(["scheme"], dr_methods=strategies.dimred.INDUCTIVE_METHODS)``
    (``tests/test_scann_sweep.py`` checks it)."""
    mutables = synthesis_mutables(**values)
    keys = list(keys) if keys is not None else list(mutables)
    missing = [k for k in keys if k not in mutables]
    if missing:
        raise UserError(f"unknown synthesis setting {missing[0]!r}; valid: {', '.join(mutables)}")
    space = {k: mutables[k].as_legacy_dict() for k in keys}
    if dr_methods:
        space["dr_method"] = dr_choice(dr_methods, dr_ratios)
    return space
