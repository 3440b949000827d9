"""The method registry: name -> (trial config class, run function).  Explicit, no import magic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from search_spaces.errors import UserError

__all__ = ["Method", "METHODS", "register", "get_method"]


@dataclass(frozen=True)
class Method:
    """A registered method.  ``search_phases``: the names of its training phases that are search
    (not the final training of the found network): their counted training FLOPs and CPU seconds
    are the trial's search cost (:func:`experiments.harness.search_cost`)."""

    name: str
    config_cls: type
    run: Callable[[Any, Any], dict]
    doc: str = ""
    search_phases: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(method: Method) -> None:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} registered twice")
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _register_builtin() -> None:
    from . import epnas, growth, proxyless, scann, survey

    register(Method("proxyless", proxyless.ProxylessTrialConfig, proxyless.run,
                    "customized ProxylessNAS over a ResNet-50 search scope (+ retrain)", ("search",)))
    register(Method("growth", growth.GrowthTrialConfig, growth.run,
                    "continuation growth by structured continuous sparsification (+ fine-tune)", ("grow",)))
    register(Method("epnas", epnas.EpnasTrialConfig, epnas.run,
                    "EPNAS: one proxy-trained morphed network per trial (the tuner is the controller)", ("proxy",)))
    register(Method("scann", scann.ScannTrialConfig, scann.run,
                    "SCANN / DR+SCANN grow-and-prune synthesis of feed-forward networks", scann.PHASES))
    register(Method("survey", survey.SurveyTrialConfig, survey.run,
                    "the compact-search survey: one method (or the baseline) at a FLOPs target",
                    # the compressors' and ProxylessNAS/EPNAS' "search", growth's "grow", SCANN's phases
                    ("search", "grow", "prep", "scann", "cv")))


_register_builtin()
