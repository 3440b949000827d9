"""EPNAS controller core: morph actions, the policy network, REINFORCE, reward, progressive episodes.

Paper: "EPNAS: Efficient Progressive Neural Architecture Search" (``../shared/seeds/004_*.txt``).
Pure PyTorch; no NNI.  Both adapters (the nnictl customized tuner and the ``NasExperiment``
strategy in :mod:`strategies.epnas_nni`) drive :class:`EpnasController` through one ask/tell
interface::

    ctl = EpnasController(EpnasConfig(...), SpaceConfig(kind="layer"))
    for key, arch, meta in ctl.propose():     # one morphed network per idle branch
        ...train arch...
        ctl.tell(key, reward)                  # or ctl.tell(key, None) for a failed trial

Policy (Sec. 3.2, training details Sec. 4.1)
---------------------------------------------
* every layer (branch) is embedded by summing trainable lookup-table embeddings of its features
  (type, filter, pool, channels, act / propagate, src1, src2), dim 32;
* an encoder LSTM with 32 units reads the layer embeddings; its last hidden state is the network
  embedding;
* the *scale LSTM* (128 units) emits, for each group of ``scale_group`` consecutive layers, one
  action from :data:`SCALE_TABLE` (keep, channels one step down/up the channel table, filter
  width one step down/up), applied to the whole group;
* the *insert LSTM* (128 units) then emits, autoregressively, insert / remove / keep, the
  position, and for an insert the new layer's type, filter width, pooling width, channels,
  activation (layer search) or propagate (module search), Src1 and Src2.  The insert position
  follows the paper's check table (below); a remove position is one of the ``n`` layers whose
  removal leaves a valid network.
* Adam lr 6e-4, weights U[-0.1, 0.1].
* Masking: every decision's logits are masked so that the chosen action yields a valid network
  (no insert at ``max_layers``, no remove of the last layer or of a layer whose removal breaks a
  later ``add`` layer / leaves no propagated branch, sources only to earlier layers, an ``add``
  layer must have Src1, no ``add`` at position 0, scale groups beyond the network are ``keep``).

Check table: the insert position's prior (Sec. 3.2)
----------------------------------------------------
The paper: "To encourage exploration of insert LSTM, i.e., encourage inserting inside the network
to explore inner structure, rather than always appending at the end of the network, we constraint
the output distribution of inserting place to be determinant on layer number of input network
using a check table.  Formally, we let [formula lost in extraction], where [symbol] stands for a
discrete distribution with [symbol] values."  Our reconstruction, with ``n`` the layer (branch)
count of the input network, ``M`` = ``max_layers`` (``max_branches``) and ``z`` the insert LSTM's
``M + 1`` position logits::

    C[n, p] = 1 / (n + 1)  if p <= n  else 0          row n of the (M+1) x (M+1) check table
    pi(p | n) = C[n, p] exp(z_p) / sum_q C[n, q] exp(z_q)     i.e.  p ~ D_n, n + 1 values

Row ``n`` is the uniform distribution over the ``n + 1`` places ``0..n`` of an ``n``-layer
network (``0``: before the first layer, ``n``: append), so the place is "a discrete distribution
with n + 1 values" whose support and prior mass depend on the layer count, and the learned
logits reweight it.  Why this reading: the sentence constrains the LSTM's *output distribution*
(so the place stays learned, not drawn from the table alone) and ties it to the layer number; the
effect it names -- fewer appends -- is exactly what the table does against the unconstrained
head.  ``prior="none"`` is that ablation: the head's distribution over all ``M + 1`` places is
used as is and a place beyond the end appends (``p -> min(p, n)``), so with near-uniform logits
an ``n``-layer network appends with probability ``(M + 1 - n) / (M + 1)`` (12/13 for one layer
of ``M = 12``) against ``1 / (n + 1)`` under the check table (:func:`check_table`).  The paper
gives no number for the table; the uniform rows are ours (the least informative rows with that
support).  With uniform rows, weighting by ``C[n, .]`` equals restricting the head's softmax to
``0..n``; what the row changes, against the unconstrained head, is that the mass of the places
past the end is no longer folded onto "append".  Under ``prior="none"`` the recorded action (and
``describe_morph``) keeps the head's raw place; the network gets ``min(p, n)``.

REINFORCE (Sec. 3.1): ``loss = -sum_i (R_i - b) log pi(a_i) - beta * H_i`` over all steps and all
branches of an episode (gradients accumulate; one Adam step per episode, as the paper does),
``b`` an exponential moving average of rewards (decay ``baseline_decay``), ``beta`` the entropy
bonus weight.

Progressive search (Sec. 3.1, 4.1): ``branches`` networks (8) are morphed in parallel; an
episode has ``steps`` steps (10 layer-by-layer, 5 module); each step morphs each branch's current
network (a branch's next step starts when its previous trial is told); the first episode starts
from random networks, every later one from the top-``branches`` networks of the previous episode
(and the best ever seen, by reward).  A failed trial gets ``failure_reward`` (the action is
penalised) and its branch continues from the parent network.

Reward (Sec. 3.1, Eq. 1-3; Eq. 2-3 were lost in extraction, this is what we implement)::

    v_k = max(0, (L_k - U_k) / L_k) + max(0, (U_k - H_k) / H_k)      relative violation of bounds
    V_k = 1 if v_k == 0 else p ** (1 + v_k)                           soft hinge, base penalty p=0.9
    R   = accuracy * prod_k V_k

``U_k`` is the resource usage (params, FLOPs, compute intensity), ``L_k``/``H_k`` the lower/upper
bounds (absent = unbounded).  Any violation costs at least the base penalty (so feasible models
rank above slightly infeasible ones of the same accuracy, as the indicator of Eq. 1 wants) and
the penalty grows smoothly with the degree of violation ("models violating the constraint less
are rewarded higher").
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn as nn

from search_spaces.epnas import (ACTIVATIONS, BRANCH_TYPES, CELL_CHANNELS, FILTER_WIDTHS, LAYER_CHANNELS, LAYER_TYPES,
                                 NONE_SRC, POOL_WIDTHS, PROPAGATE, SpaceConfig, arch_to_json, check_arch, num_units,
                                 random_arch)
from search_spaces.errors import UserError

__all__ = [
    "SCALE_TABLE", "KINDS", "PRIORS", "CONSTRAINT_NAMES", "RewardConfig", "EpnasConfig", "constraints_of",
    "constrained_reward", "insert_unit", "remove_unit", "scale_group", "random_morph", "describe_morph", "PolicyNet",
    "EpnasController", "check_table", "run_policy",
]

SCALE_TABLE = ("keep", "channels-", "channels+", "filter-", "filter+")
KINDS = ("insert", "remove", "keep")
PRIORS = ("check_table", "none")   # the insert position's prior (module docstring); "none" is the ablation
CONSTRAINT_NAMES = ("params", "flops", "intensity")


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """The reward's settings, shared by the controller and the trial config: the soft hinge's base
    penalty ``p`` and the resource bounds (None = unbounded)."""

    base_penalty: float = 0.9         # p of the soft hinge penalty
    params_min: float | None = None
    params_max: float | None = None
    flops_min: float | None = None
    flops_max: float | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None

    def __post_init__(self):
        if not 0 < self.base_penalty < 1:
            raise UserError(f"base_penalty must be in (0, 1), got {self.base_penalty}")
        for name in CONSTRAINT_NAMES:
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            for v in (lo, hi):
                if v is not None and not v > 0:
                    raise UserError(f"{name} bounds must be > 0, got {v}")
            if lo is not None and hi is not None and lo > hi:
                raise UserError(f"{name}_min={lo:g} is above {name}_max={hi:g}")


@dataclass(frozen=True, kw_only=True)
class EpnasConfig(RewardConfig):
    """Controller settings; defaults are the paper's (Sec. 4.1) unless noted."""

    branches: int = 8                 # "8 branches", top-8 models start the next episode
    episodes: int = 15                # "We run 15 episodes"
    steps: int = 0                    # 0: the paper's 10 (layer-by-layer) / 5 (module)
    lr: float = 6e-4                  # Adam
    init_range: float = 0.1           # weights U[-0.1, 0.1]
    embed_dim: int = 32
    encoder_units: int = 32
    lstm_units: int = 128
    scale_group: int = 4              # layers per scale group (the paper's "parts"; size not given)
    baseline_decay: float = 0.9       # moving-average baseline (not given in the paper)
    entropy_weight: float = 1e-3      # entropy bonus (not given in the paper)
    init_units: int = 0               # layers/branches of the random start networks (0: random count)
    failure_reward: float = 0.0       # reward of a failed or killed trial
    prior: Literal["check_table", "none"] = "check_table"   # insert position prior; "none": ablation
    seed: int = 0

    def __post_init__(self):
        if self.prior not in PRIORS:
            raise UserError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        for name in ("branches", "episodes", "embed_dim", "encoder_units", "lstm_units", "scale_group"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or self.init_units < 0:
            raise UserError("steps and init_units must be >= 0")
        if not self.lr > 0 or not 0 <= self.baseline_decay < 1:
            raise UserError("lr must be > 0 and baseline_decay in [0, 1)")
        super().__post_init__()

    def steps_for(self, kind: str) -> int:
        return self.steps or (10 if kind == "layer" else 5)


def constraints_of(cfg: Any) -> dict[str, tuple[float | None, float | None]]:
    """``{name: (lower, upper)}`` for every bounded resource of a config with ``<name>_min/_max`` fields."""
    out = {}
    for name in CONSTRAINT_NAMES:
        lo, hi = getattr(cfg, f"{name}_min", None), getattr(cfg, f"{name}_max", None)
        if lo is not None or hi is not None:
            out[name] = (lo, hi)
    return out


def constrained_reward(accuracy: float, usage: Mapping[str, float],
                       constraints: Mapping[str, tuple[float | None, float | None]], base_penalty: float = 0.9) -> float:
    """``R = accuracy * prod_k V_k`` with the soft hinge ``V_k`` of the module docstring."""
    reward = float(accuracy)
    for name, (lo, hi) in constraints.items():
        u = float(usage[name])
        v = 0.0
        if lo is not None and u < lo:
            v += (lo - u) / lo
        if hi is not None and u > hi:
            v += (u - hi) / hi
        if v > 0:
            reward *= base_penalty ** (1.0 + v)
    return reward


# ------------------------------------------------------------------------------------- morphs


def _units_key(arch: Mapping[str, Any]) -> str:
    return "layers" if arch["space"] == "layer" else "branches"


def insert_unit(arch: Mapping[str, Any], pos: int, unit: Mapping[str, Any]) -> dict:
    """Insert ``unit`` (sources already in the new numbering) at ``pos``; later sources shift."""
    out = copy.deepcopy(dict(arch))
    key = _units_key(out)
    layer = out["space"] == "layer"
    for u in out[key][pos:]:
        for s in ("src1", "src2"):
            if layer and u[s] != NONE_SRC and u[s] >= pos:
                u[s] += 1
            elif not layer and u[s] >= pos + 1:
                u[s] += 1
    out[key].insert(pos, dict(unit))
    return out


def remove_unit(arch: Mapping[str, Any], pos: int) -> dict:
    """Remove unit ``pos``; sources that pointed at it are dropped (layer: -1) or redirected to its
    first input (module); later sources shift down.  The result may be invalid (check it)."""
    out = copy.deepcopy(dict(arch))
    key = _units_key(out)
    layer = out["space"] == "layer"
    removed = out[key].pop(pos)
    for u in out[key][pos:]:
        for s in ("src1", "src2"):
            if layer:
                if u[s] == pos:
                    u[s] = NONE_SRC
                elif u[s] > pos:
                    u[s] -= 1
            else:
                if u[s] == pos + 1:
                    u[s] = removed["src1"]
                elif u[s] > pos + 1:
                    u[s] -= 1
    return out


def _step(table: Sequence[int], value: int, delta: int) -> int:
    i = table.index(value) if value in table else 0
    return table[min(len(table) - 1, max(0, i + delta))]


def scale_group(arch: Mapping[str, Any], start: int, stop: int, action: str) -> dict:
    """Apply one :data:`SCALE_TABLE` action to units ``start..stop-1`` (clamped at the table ends)."""
    out = copy.deepcopy(dict(arch))
    if action == "keep":
        return out
    channels = LAYER_CHANNELS if out["space"] == "layer" else CELL_CHANNELS
    what, sign = action[:-1], (1 if action.endswith("+") else -1)
    for u in out[_units_key(out)][start:stop]:
        if what == "channels":
            u["channels"] = _step(channels, u["channels"], sign)
        else:
            u["filter"] = _step(FILTER_WIDTHS, u["filter"], sign)
    return out


# ------------------------------------------------------------------------------------- decisions


def _fields(kind: str) -> list[tuple[str, tuple]]:
    """Insert-LSTM operation fields (after kind and position) and their tables."""
    if kind == "layer":
        return [("type", LAYER_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS), ("channels", LAYER_CHANNELS),
                ("act", ACTIVATIONS)]
    return [("type", BRANCH_TYPES), ("filter", FILTER_WIDTHS), ("pool", POOL_WIDTHS), ("channels", CELL_CHANNELS),
            ("propagate", PROPAGATE)]


def _max_units(space: SpaceConfig) -> int:
    return space.max_layers if space.kind == "layer" else space.max_branches


def _src_choices(space: SpaceConfig) -> int:
    return _max_units(space) + 1  # layer: none + 0..max-1; module: 0..max


def _src_value(space: SpaceConfig, idx: int) -> int:
    return idx - 1 if space.kind == "layer" else idx


def _src_index(space: SpaceConfig, value: int) -> int:
    return value + 1 if space.kind == "layer" else value


class PolicyNet(nn.Module):
    """Layer embeddings -> encoder LSTM(32) -> scale LSTM(128) and insert LSTM(128) heads."""

    def __init__(self, space: SpaceConfig, cfg: EpnasConfig):
        super().__init__()
        self.space = space
        e = cfg.embed_dim
        tables = _fields(space.kind)
        self.unit_embed = nn.ModuleDict({f"f_{name}": nn.Embedding(len(t), e) for name, t in tables})
        self.src_embed = nn.Embedding(_src_choices(space), e)
        self.encoder = nn.LSTM(e, cfg.encoder_units, batch_first=True)
        self.groups = math.ceil(_max_units(space) / cfg.scale_group)
        self.group_embed = nn.Embedding(self.groups, e)
        self.scale_lstm = nn.LSTMCell(cfg.encoder_units + e, cfg.lstm_units)
        self.scale_head = nn.Linear(cfg.lstm_units, len(SCALE_TABLE))
        sizes = {"kind": len(KINDS), "position": _max_units(space) + 1, **{n: len(t) for n, t in tables},
                 "src1": _src_choices(space), "src2": _src_choices(space)}
        self.decisions = list(sizes)
        self.heads = nn.ModuleDict({f"h_{n}": nn.Linear(cfg.lstm_units, k) for n, k in sizes.items()})
        offsets, total = {}, 1  # index 0: start token
        for n, k in sizes.items():
            offsets[n] = total
            total += k
        self.offsets = offsets
        self.action_embed = nn.Embedding(total, e)
        self.insert_lstm = nn.LSTMCell(cfg.encoder_units + e, cfg.lstm_units)
        for p in self.parameters():
            nn.init.uniform_(p, -cfg.init_range, cfg.init_range)

    def encode(self, arch: Mapping[str, Any]) -> torch.Tensor:
        tables = dict(_fields(self.space.kind))
        rows = []
        for u in arch[_units_key(arch)]:
            idx = {n: torch.tensor(t.index(u[n])) for n, t in tables.items()}
            v = sum(self.unit_embed[f"f_{n}"](i) for n, i in idx.items())
            v = v + self.src_embed(torch.tensor(_src_index(self.space, u["src1"]))) \
                + self.src_embed(torch.tensor(_src_index(self.space, u["src2"])))
            rows.append(v)
        _, (h, _) = self.encoder(torch.stack(rows)[None])
        return h[-1, 0]


def check_table(max_units: int) -> torch.Tensor:
    """The ``(max_units + 1) x (max_units + 1)`` check table: row ``n`` is the prior over the insert
    places of an ``n``-unit network, ``1 / (n + 1)`` on ``0..n`` and 0 beyond (module docstring)."""
    n = torch.arange(max_units + 1, dtype=torch.float32)[:, None]
    p = torch.arange(max_units + 1)[None, :]
    return torch.where(p <= n, 1.0 / (n + 1), torch.zeros(()))


def _sample_masked(logits: torch.Tensor, mask: Sequence[bool], forced: int | None,
                   gen: torch.Generator | None) -> tuple[int, torch.Tensor, torch.Tensor]:
    m = torch.tensor(mask, dtype=torch.bool)
    if not m.any():
        raise RuntimeError("every action is masked")
    logits = logits.masked_fill(~m, float("-inf"))
    logp = torch.log_softmax(logits, -1)
    if forced is None:
        with torch.no_grad():
            choice = int(torch.multinomial(logp.exp(), 1, generator=gen))
    else:
        choice = int(forced)
        if not mask[choice]:
            raise RuntimeError(f"replayed action {choice} is masked")
    p = logp.exp()
    entropy = -(p[m] * logp[m]).sum()
    return choice, logp[choice], entropy


def run_policy(policy: PolicyNet, arch: Mapping[str, Any], cfg: EpnasConfig, *, forced: Sequence[int] | None = None,
               gen: torch.Generator | None = None) -> tuple[dict, list[int], torch.Tensor, torch.Tensor, list[str]]:
    """Sample (or replay ``forced``) one morph of ``arch``.

    Returns ``(child, actions, log_prob, entropy, names)``; masks are recomputed from ``arch``
    and the earlier actions, so a replay reproduces the sampling distribution exactly.
    """
    space = policy.space
    forced_iter = iter(forced) if forced is not None else None
    actions: list[int] = []
    names: list[str] = []
    logps: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    max_units = _max_units(space)

    def decide(name: str, logits: torch.Tensor, mask: Sequence[bool]) -> int:
        f = next(forced_iter) if forced_iter is not None else None
        c, lp, en = _sample_masked(logits, mask, f, gen)
        actions.append(c)
        names.append(name)
        logps.append(lp)
        ents.append(en)
        return c

    net = policy.encode(arch)
    child = copy.deepcopy(dict(arch))
    n = num_units(child)
    # ---- scale LSTM: one action per group of layers
    h = torch.zeros(1, policy.scale_lstm.hidden_size)
    c = torch.zeros_like(h)
    for g in range(policy.groups):
        h, c = policy.scale_lstm(torch.cat([net, policy.group_embed(torch.tensor(g))])[None], (h, c))
        start, stop = g * cfg.scale_group, min(n, (g + 1) * cfg.scale_group)
        mask = [True] * len(SCALE_TABLE) if start < n else [a == "keep" for a in SCALE_TABLE]
        a = decide("scale", policy.scale_head(h)[0], mask)
        child = scale_group(child, start, stop, SCALE_TABLE[a])
    # ---- insert LSTM: kind, position, operation, sources
    h = torch.zeros(1, policy.insert_lstm.hidden_size)
    c = torch.zeros_like(h)
    prev = torch.tensor(0)

    def step(name: str, mask: Sequence[bool], prior: torch.Tensor | None = None) -> int:
        nonlocal h, c, prev
        h, c = policy.insert_lstm(torch.cat([net, policy.action_embed(prev)])[None], (h, c))
        logits = policy.heads[f"h_{name}"](h)[0]
        if prior is not None:  # pi(a) ~ prior(a) exp(z_a); zero-prior actions are masked out
            logits = logits + torch.log(prior.clamp_min(torch.finfo(prior.dtype).tiny))
        a = decide(name, logits, mask)
        prev = torch.tensor(policy.offsets[name] + a)
        return a

    removable = [check_arch(remove_unit(child, p), space) is None for p in range(n)] if n > 1 else [False] * n
    kind = KINDS[step("kind", [n < max_units, any(removable), True])]
    if kind == "remove":
        pos = step("position", [p < n and removable[p] for p in range(max_units + 1)])
        child = remove_unit(child, pos)
    elif kind == "insert":
        if cfg.prior == "check_table":
            row = check_table(max_units)[n]
            pos = step("position", (row > 0).tolist(), row)
        else:  # ablation: the head's distribution over every place; a place past the end appends
            pos = min(step("position", [True] * (max_units + 1)), n)
        unit: dict[str, Any] = {}
        for name, table in _fields(space.kind):
            mask = [True] * len(table)
            if name == "type" and space.kind == "layer" and pos == 0:
                mask = [t != "add" for t in table]
            unit[name] = table[step(name, mask)]
        for s in ("src1", "src2"):
            if space.kind == "layer":  # none or an earlier layer 0..pos-1
                mask = [i == 0 or i - 1 < pos for i in range(_src_choices(space))]
                if s == "src1" and unit["type"] == "add":
                    mask[0] = False
            else:  # cell input 0 or an earlier branch 1..pos
                mask = [i <= pos for i in range(_src_choices(space))]
            unit[s] = _src_value(space, step(s, mask))
        child = insert_unit(child, pos, unit)
    if forced_iter is not None and next(forced_iter, None) is not None:
        raise RuntimeError("replayed more actions than the policy takes")
    return child, actions, torch.stack(logps).sum(), torch.stack(ents).sum(), names


def describe_morph(names: Sequence[str], actions: Sequence[int], space: SpaceConfig) -> str:
    """A morph in words from :func:`run_policy`'s ``names`` / ``actions``, e.g.
    ``"insert conv2d@2; channels+ g0"`` (``"keep"`` when nothing changes)."""
    tables = dict(_fields(space.kind))
    parts: list[str] = []
    scales: list[str] = []
    group = 0
    it = iter(zip(names, actions))
    for name, a in it:
        if name == "scale":
            if SCALE_TABLE[a] != "keep":
                scales.append(f"{SCALE_TABLE[a]} g{group}")
            group += 1
        elif name == "kind":
            kind = KINDS[a]
            if kind == "keep":
                continue
            pos = next(it, (None, -1))[1]
            op = ""
            for n2, a2 in it:
                if n2 == "type":
                    op = f" {tables['type'][a2]}"
                    break
            parts.append(f"{kind}{op}@{pos}")
    text = "; ".join(parts + scales)
    return text or "keep"


# ------------------------------------------------------------------------------------- random morph


def random_morph(arch: Mapping[str, Any], space: SpaceConfig, rng: random.Random) -> dict:
    """An EAS-style random morph on the same action space (uniform over the valid actions)."""
    n = num_units(arch)
    child = copy.deepcopy(dict(arch))
    groups = math.ceil(n / 4)
    g = rng.randrange(groups)
    child = scale_group(child, 4 * g, 4 * g + 4, rng.choice(SCALE_TABLE))
    options = []
    if n < _max_units(space):
        options.append("insert")
    removable = [p for p in range(n) if n > 1 and check_arch(remove_unit(child, p), space) is None]
    if removable:
        options.append("remove")
    kind = rng.choice(options) if options else "keep"
    if kind == "remove":
        return remove_unit(child, rng.choice(removable))
    if kind == "insert":
        pos = rng.randint(0, n)
        tmp = random_arch(space, rng, units=pos + 1)
        unit = tmp[_units_key(tmp)][pos]
        if space.kind == "module" and not any(u["propagate"] for u in child["branches"]):
            unit["propagate"] = 1
        return insert_unit(child, pos, unit)
    return child


# ------------------------------------------------------------------------------------- sharing


# ------------------------------------------------------------------------------------- controller


def record_result(records: dict[str, dict], key: str, reward: float | None,
                  metrics: Mapping[str, Any] | None, failure_reward: float) -> dict | None:
    """Mark a pending record done (or failed: ``reward`` None/non-finite -> ``failure_reward``).
    Unknown or already-told keys give None, so results may arrive in any order and twice.
    Shared by the controller and the baselines (:mod:`strategies.search_baselines`)."""
    rec = records.get(key)
    if rec is None or rec["status"] != "pending":
        return None
    failed = reward is None or not math.isfinite(float(reward))
    rec["status"] = "failed" if failed else "done"
    rec["reward"] = float(failure_reward if failed else reward)
    rec["metrics"] = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    return rec


def better_best(best: dict | None, key: str, rec: dict) -> dict | None:
    """The best-so-far record after ``rec`` (failed trials never become best)."""
    if rec["status"] == "failed" or (best is not None and rec["reward"] <= best["reward"]):
        return best
    return {"reward": rec["reward"], "key": key, "arch": copy.deepcopy(rec["arch"]),
            "meta": dict(rec["meta"]), "metrics": dict(rec["metrics"])}


class EpnasController:
    """The progressive REINFORCE search as an ask/tell object (see the module docstring)."""

    def __init__(self, cfg: EpnasConfig, space: SpaceConfig, *, start_archs: Sequence[Mapping[str, Any]] | None = None):
        self.cfg = cfg
        self.space = space
        self.steps = cfg.steps_for(space.kind)
        self.rng = random.Random(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # every sampled action draws from it
        with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the global RNG
            torch.manual_seed(cfg.seed)
            self.policy = PolicyNet(space, cfg)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.baseline: float | None = None
        self.episode = 0
        self.next_index = 0
        self.records: dict[str, dict[str, Any]] = {}
        self.requeue: list[str] = []
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []  # one row per policy update
        if start_archs is not None:
            for a in start_archs:
                reason = check_arch(a, space)
                if reason:
                    raise UserError(f"start architecture is invalid: {reason}")
            starts = [copy.deepcopy(dict(a)) for a in start_archs]
        else:
            starts = [random_arch(space, self.rng, units=cfg.init_units or None) for _ in range(cfg.branches)]
        self.branches = [{"arch": starts[b % len(starts)], "parent": -1, "step": 0, "busy": None}
                         for b in range(cfg.branches)]

    # ---- ask / tell ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.episode >= self.cfg.episodes

    def pending(self) -> list[str]:
        return [k for k, r in self.records.items() if r["status"] == "pending"]

    def propose(self, limit: int | None = None) -> list[tuple[str, dict, dict]]:
        """Morphed networks for the idle branches: ``[(trial_key, arch, meta), ...]``."""
        out: list[tuple[str, dict, dict]] = []
        while self.requeue and (limit is None or len(out) < limit):
            key = self.requeue.pop(0)
            rec = self.records[key]
            if rec["status"] == "pending":
                out.append((key, copy.deepcopy(rec["arch"]), dict(rec["meta"])))
        self._maybe_end_episode()
        for b, br in enumerate(self.branches):
            if self.finished or (limit is not None and len(out) >= limit):
                break
            if br["busy"] is not None or br["step"] >= self.steps:
                continue
            child, actions, info = self._morph(br["arch"])
            index = self.next_index
            self.next_index += 1
            key = f"t{index:05d}"
            meta = {"trial": index, "episode": self.episode, "step": br["step"], "branch": b, "parent": br["parent"],
                    **info}
            self.records[key] = {"arch": child, "parent_arch": copy.deepcopy(br["arch"]), "actions": actions,
                                 "meta": meta, "status": "pending", "reward": None, "metrics": {}}
            br["busy"] = key
            out.append((key, copy.deepcopy(child), dict(meta)))
        return out

    def _morph(self, arch: Mapping[str, Any]) -> tuple[dict, list[int], dict[str, Any]]:
        """The sampled child, its actions and meta for the trial: ``entropy`` (the policy's
        entropy over the morph's decisions, nats, mean per decision) and ``action`` (the morph in
        words, :func:`describe_morph`), so the analysis can plot entropy and lineage."""
        with torch.no_grad():
            child, actions, _, ent, names = run_policy(self.policy, arch, self.cfg, gen=self.gen)
        return child, actions, {"entropy": float(ent) / max(1, len(actions)),
                                "action": describe_morph(names, actions, self.space)}

    def tell(self, key: str, reward: float | None, metrics: Mapping[str, Any] | None = None) -> bool:
        """Record a trial's reward (``None``: failed/killed -> ``failure_reward``).  Unknown or
        already-told keys are ignored (returns False), so results may arrive in any order and twice."""
        rec = record_result(self.records, key, reward, metrics, self.cfg.failure_reward)
        if rec is None:
            return False
        failed = rec["status"] == "failed"
        br = self.branches[rec["meta"]["branch"]]
        if br["busy"] == key and rec["meta"]["episode"] == self.episode:
            br["busy"] = None
            br["step"] += 1
            if not failed:  # progressive: the next step morphs this network; a failure reverts
                br["arch"], br["parent"] = copy.deepcopy(rec["arch"]), rec["meta"]["trial"]
        self.best = better_best(self.best, key, rec)
        self._maybe_end_episode()
        return True

    # ---- episodes --------------------------------------------------------------------------

    def _episode_records(self, episode: int) -> list[tuple[str, dict]]:
        return [(k, r) for k, r in self.records.items() if r["meta"]["episode"] == episode]

    def _maybe_end_episode(self) -> None:
        if self.finished or any(br["step"] < self.steps or br["busy"] for br in self.branches):
            return
        recs = self._episode_records(self.episode)
        if any(r["status"] == "pending" for _, r in recs):
            return
        self.update_policy([r for _, r in recs])
        ranked = sorted((r for _, r in recs if r["status"] == "done"), key=lambda r: -r["reward"])
        if self.best is not None:
            ranked.insert(0, {"arch": self.best["arch"], "meta": self.best["meta"], "reward": self.best["reward"]})
        seen, tops = set(), []
        for r in ranked:
            j = arch_to_json(r["arch"])
            if j not in seen:
                seen.add(j)
                tops.append(r)
            if len(tops) == self.cfg.branches:
                break
        if not tops:  # every trial failed: start over from random networks
            tops = [{"arch": random_arch(self.space, self.rng), "meta": {"trial": -1}}]
        self.branches = [{"arch": copy.deepcopy(tops[b % len(tops)]["arch"]), "parent": tops[b % len(tops)]["meta"]["trial"],
                          "step": 0, "busy": None} for b in range(self.cfg.branches)]
        self.episode += 1

    def update_policy(self, recs: Sequence[Mapping[str, Any]]) -> float:
        """One REINFORCE step over ``recs`` (gradients accumulated over all steps and branches)."""
        recs = [r for r in recs if r["reward"] is not None]
        if not recs:
            return 0.0
        rewards = [r["reward"] for r in recs]
        mean = sum(rewards) / len(rewards)
        if self.baseline is None:
            self.baseline = mean
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for r in recs:
            _, _, logp, ent, _ = run_policy(self.policy, r["parent_arch"], self.cfg, forced=r["actions"])
            loss = -((r["reward"] - self.baseline) * logp + self.cfg.entropy_weight * ent) / len(recs)
            loss.backward()
            total += float(loss.detach())
        self.optimizer.step()
        self.history.append({"episode": self.episode, "baseline": self.baseline, "mean_reward": mean,
                             "max_reward": max(rewards), "loss": total, "n": len(recs)})
        d = self.cfg.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * mean
        return total

    # ---- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "config": asdict(self.cfg), "space": asdict(self.space),
            "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline, "episode": self.episode, "next_index": self.next_index,
            "records": copy.deepcopy(self.records), "branches": copy.deepcopy(self.branches),
            "best": copy.deepcopy(self.best), "history": list(self.history),
            "rng": self.rng.getstate(), "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore everything; trials that were pending are proposed again by the next
        :meth:`propose` (their processes died with the old controller)."""
        if state.get("space") != asdict(self.space):
            raise UserError("saved EPNAS state is for a different search space configuration")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.episode = state["episode"]
        self.next_index = state["next_index"]
        self.records = copy.deepcopy(state["records"])
        self.branches = copy.deepcopy(state["branches"])
        self.best = copy.deepcopy(state["best"])
        self.history = list(state["history"])
        self.rng.setstate(_as_tuple(state["rng"]))
        self.gen.set_state(state["gen"])
        self.requeue = self.pending()


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
