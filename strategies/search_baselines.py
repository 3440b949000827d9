"""Baselines for EPNAS on the same encoding, evaluator and ask/tell interface.

* :class:`RandomSearch` - uniform random architectures (``search_spaces.epnas.random_arch``),
  the paper's "random search" curve (Fig. 4).
* :class:`RegularizedEvolution` - Real et al. 2018: a population of ``population`` networks,
  tournament of ``sample`` members, the winner is mutated by one random morph
  (:func:`strategies.epnas.random_morph`: the same scale / insert / remove actions EPNAS uses),
  the child joins and the *oldest* member leaves.
* :class:`RandomMorphing` - EAS-style progressive search without a learned policy: exactly the
  EPNAS episodes/steps/branches and top-B restarts, with uniformly random valid morphs.

All take the same budget as EPNAS: ``episodes * steps * branches`` trials, ``branches`` in
flight at a time, and expose ``propose() / tell() / state_dict() / load_state_dict()``.
"""
from __future__ import annotations

import copy
import random
from collections import deque
from typing import Any, Mapping

from search_spaces.epnas import SpaceConfig, random_arch
from search_spaces.errors import UserError

from .epnas import EpnasConfig, EpnasController, _as_tuple, better_best, random_morph, record_result

__all__ = ["RandomSearch", "RegularizedEvolution", "RandomMorphing", "BASELINES"]


class _Independent:
    """Shared bookkeeping of the non-progressive baselines."""

    def __init__(self, cfg: EpnasConfig, space: SpaceConfig):
        self.cfg = cfg
        self.space = space
        self.steps = cfg.steps_for(space.kind)
        self.budget = cfg.episodes * self.steps * cfg.branches
        self.rng = random.Random(cfg.seed)
        self.next_index = 0
        self.records: dict[str, dict[str, Any]] = {}
        self.requeue: list[str] = []
        self.best: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.next_index >= self.budget and not self.pending()

    def pending(self) -> list[str]:
        return [k for k, r in self.records.items() if r["status"] == "pending"]

    def _candidate(self) -> tuple[dict, int]:
        raise NotImplementedError

    def propose(self, limit: int | None = None) -> list[tuple[str, dict, dict]]:
        out = []
        while self.requeue and (limit is None or len(out) < limit):
            key = self.requeue.pop(0)
            if self.records[key]["status"] == "pending":
                out.append((key, copy.deepcopy(self.records[key]["arch"]), dict(self.records[key]["meta"])))
        while (len(self.pending()) < self.cfg.branches and self.next_index < self.budget
               and (limit is None or len(out) < limit)):
            arch, parent = self._candidate()
            i = self.next_index
            self.next_index += 1
            per_episode = self.steps * self.cfg.branches
            meta = {"trial": i, "episode": i // per_episode, "step": (i % per_episode) // self.cfg.branches,
                    "branch": i % self.cfg.branches, "parent": parent,
                    "action": "random" if parent < 0 else "mutation"}
            key = f"t{i:05d}"
            self.records[key] = {"arch": arch, "meta": meta, "status": "pending", "reward": None}
            out.append((key, copy.deepcopy(arch), dict(meta)))
        return out

    def tell(self, key: str, reward: float | None, metrics: Mapping[str, Any] | None = None) -> bool:
        rec = record_result(self.records, key, reward, metrics, self.cfg.failure_reward)
        if rec is None:
            return False
        self.best = better_best(self.best, key, rec)
        self._told(key, rec, rec["status"] == "failed")
        return True

    def _told(self, key: str, rec: dict, failed: bool) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"records": copy.deepcopy(self.records), "next_index": self.next_index, "best": copy.deepcopy(self.best),
                "rng": self.rng.getstate(), **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.records = copy.deepcopy(state["records"])
        self.next_index = state["next_index"]
        self.best = copy.deepcopy(state["best"])
        self.rng.setstate(_as_tuple(state["rng"]))
        self.requeue = self.pending()


class RandomSearch(_Independent):
    """Uniform random architectures (each one independent)."""

    def _candidate(self) -> tuple[dict, int]:
        return random_arch(self.space, self.rng, units=self.cfg.init_units or None), -1


class RegularizedEvolution(_Independent):
    """Aging evolution (Real et al. 2018) with the EPNAS morphs as mutations."""

    def __init__(self, cfg: EpnasConfig, space: SpaceConfig, *, population: int = 16, sample: int = 4):
        super().__init__(cfg, space)
        if population < 1 or not 1 <= sample <= population:
            raise UserError(f"need population >= 1 and 1 <= sample <= population, got {population}, {sample}")
        self.population_size, self.sample = population, sample
        self.population: deque[str] = deque()

    def _candidate(self) -> tuple[dict, int]:
        if len(self.population) < self.population_size:
            return random_arch(self.space, self.rng, units=self.cfg.init_units or None), -1
        contenders = self.rng.sample(list(self.population), self.sample)
        parent = max(contenders, key=lambda k: self.records[k]["reward"])
        rec = self.records[parent]
        return random_morph(rec["arch"], self.space, self.rng), rec["meta"]["trial"]

    def _told(self, key: str, rec: dict, failed: bool) -> None:
        if failed:
            return
        self.population.append(key)
        while len(self.population) > self.population_size:
            self.population.popleft()

    def _extra_state(self) -> dict[str, Any]:
        return {"population": list(self.population)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = deque(state["population"])


class RandomMorphing(EpnasController):
    """EPNAS's progressive episodes with uniformly random valid morphs instead of the policy."""

    def _morph(self, arch: Mapping[str, Any]) -> tuple[dict, list[int], dict[str, Any]]:
        return random_morph(arch, self.space, self.rng), [], {"entropy": None, "action": "random morph"}

    def update_policy(self, recs) -> float:
        return 0.0


BASELINES = {"random": RandomSearch, "evolution": RegularizedEvolution, "morph": RandomMorphing}
