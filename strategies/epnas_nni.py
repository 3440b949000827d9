"""NNI adapter for the EPNAS controller: the customized tuner that nnictl runs.

    tuner:
      codeDirectory: ../..                       # the repository root
      className: strategies.epnas_nni.EpnasTuner
      classArgs: {space: layer, branches: 8, episodes: 15, params_max: 2.0e+6, ...}

The tuner is thin: every decision is :class:`strategies.epnas.EpnasController`'s (or a baseline's
from :mod:`strategies.search_baselines`, ``algorithm: random | evolution | morph``); the tuner
maps NNI parameter ids to the controller's trial keys and sends each trial its architecture
(JSON), the space settings, the constraints and ``trial / episode / step / branch / parent``, which
``experiments.methods.epnas`` reports back as web-UI columns, plus ``algorithm``, ``action`` (the
morph that made the network from its parent) and, for EPNAS, ``entropy`` (the policy's entropy over
the morph), which the trial writes into its run folder for :mod:`analysis.epnas`.

Final training (EPNAS Sec. 4.1, "retrained following PNAS")
-----------------------------------------------------------
When the search is done (every search trial told), the tuner submits the top-``final_top_k``
(classArgs, default 3; 0: none) *feasible* networks once more with ``final: 1``: those trials train
the network from scratch with the final-training settings
(:class:`strategies.epnas_evaluator.FinalTrainingConfig`, trial options ``--final_epochs`` ...) and
report the same numeric keys as the search trials (``final`` = 1, ``test_acc``), so the web UI lists
them as the experiment's last trials.  ``maxTrialNumber`` = episodes x steps x branches +
final_top_k.  Fewer feasible networks than asked: those are trained, the tuner says so in its log
(``dispatcher.log``) and state, and the experiment ends in ``TUNER_NO_MORE_TRIAL`` short of
``maxTrialNumber``.  The final phase's plan and results are part of the saved state, so ``nnictl
resume`` continues it like the search.

Robustness
----------
* failed or killed trials (``trial_end`` without a result) are told as failures: the controller
  gives them ``failure_reward`` and the search goes on;
* results may arrive in any order and more than once (the controller ignores repeats); the trial
  key is read from the parameters the trial ran (``receive_trial_result`` ids are right, see
  ``experiments.nni_bridge``), not from an id map;
* when NNI asks for a trial while no branch is idle (an episode boundary waiting for the last
  results) the tuner answers "no more trials" and later submits the owed trials itself through
  NNI's ``st_callback``, so concurrency stays at ``branches``;
* after every change the whole state (controller: policy, optimizer, baseline, population,
  records, RNGs; tuner: id map) is written atomically to ``state_file`` (default
  ``<experiment dir>/epnas_tuner_state.pt``); on start an existing file is loaded, so ``nnictl
  resume`` continues the search; trials that were running are proposed again.

* ``nnictl resume``: the trials NNI itself re-runs (those that were running at ``nnictl stop``) are
  taken over, not proposed again, and their results and ends reach the controller as usual (see
  :meth:`EpnasTuner._adopt_recovered`); finished trials NNI replays through ``import_data`` are
  ignored, except a result the stopped tuner had not yet received.

Bad ``classArgs`` and constraints that no architecture can satisfy: NNI 3.0 runs no validation
hook for a customized tuner's ``classArgs`` during ``nnictl create`` (``ClassArgsValidator`` is
only consulted by the legacy v1 launcher, for registered built-in algorithms), so ``nnictl create``
cannot refuse them.  Check a config before launching with ``python -m strategies.epnas_nni
CONFIG.yml`` (exit 2 with one line; it also prints the ``maxTrialNumber`` it implies: ``episodes *
steps * branches``).  Under nnictl the tuner checks them as soon as it is connected and reports
the one-line problem to the manager: the experiment goes to ``ERROR`` before any trial starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

from search_spaces.errors import UserError, exit_on_error

# Nothing heavy at import: nnictl starts the tuner with ``python -m nni`` and gives it 10 s to connect
# (nni_node/core/tuner_command_channel.js), which NNI's own imports already half use on a busy machine.
# torch, the search space and the controller are imported on first use, after the tuner has connected.

__all__ = ["EpnasTuner", "EpnasStrategy", "TunerSettings", "build_search", "max_trials", "final_top_k_of",
           "check_class_args", "check_settings_feasible", "main"]

_log = logging.getLogger(__name__)
STATE_NAME = "epnas_tuner_state.pt"
_SPACE_FIELDS = ("max_layers", "max_branches", "stem_channels", "cell_channels", "cells_per_stage", "stages",
                 "min_spatial")
_CONSTRAINT_FIELDS = ("params_min", "params_max", "flops_min", "flops_max", "intensity_min", "intensity_max")
_TOP_FIELDS = ("space", "algorithm", "state_file", "input_shape", "num_classes", "population", "tournament",
               "final_top_k")
DEFAULT_FINAL_TOP_K = 3   # networks trained fully after the search (classArgs ``final_top_k``; 0: none)


def _epnas_config():
    from .epnas import EpnasConfig

    return EpnasConfig()


def _space_config():
    from search_spaces.epnas import SpaceConfig

    return SpaceConfig()


def _algorithms() -> tuple[str, ...]:
    from .search_baselines import BASELINES

    return ("epnas", *BASELINES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TunerSettings:
    """The tuner's ``classArgs`` (controller + space + what the trials need)."""

    space: str = "layer"
    algorithm: str = "epnas"
    state_file: str = ""
    input_shape: tuple[int, int, int] = (3, 32, 32)   # for the feasibility check (CIFAR-10)
    num_classes: int = 10
    population: int = 16                              # regularized evolution only
    tournament: int = 4
    controller: EpnasConfig = dataclasses.field(default_factory=_epnas_config)
    space_config: SpaceConfig = dataclasses.field(default_factory=_space_config)

    def __post_init__(self):
        if self.algorithm not in _algorithms():
            raise UserError(f"unknown algorithm {self.algorithm!r}; valid: {', '.join(_algorithms())}")


# ``final_top_k`` is checked by final_top_k_of
_TOP_TYPES: dict[str, Any] = {"space": str, "algorithm": str, "state_file": str, "num_classes": int,
                              "population": int, "tournament": int}


def _type_problem(value: Any, hint: Any) -> str | None:
    """What a classArgs value must be for the annotation ``hint``, or None when ``value`` fits.
    YAML gives int, float, str, bool, None and lists; an int is a valid float, a bool is no number."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return None if value in args and not isinstance(value, bool) else "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return None if None in problems else " or ".join(problems)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {type(None): (value is None, "null"), bool: (isinstance(value, bool), "true or false"),
              int: (number and isinstance(value, int), "an integer"), float: (number, "a number"),
              str: (isinstance(value, str), "a string")}
    ok, what = checks.get(hint, (True, ""))
    return None if ok else what


def _check_class_arg_values(args: Mapping[str, Any]) -> None:
    """One-line :class:`UserError` naming the first classArgs key whose value has the wrong type
    (against the annotations of :class:`EpnasConfig` and :class:`SpaceConfig`) or range."""
    import typing

    from search_spaces.epnas import SpaceConfig

    from .epnas import EpnasConfig

    hints = {**typing.get_type_hints(SpaceConfig), **typing.get_type_hints(EpnasConfig), **_TOP_TYPES}
    for key, value in args.items():
        what = _type_problem(value, hints[key]) if key in hints else None
        if what:
            raise UserError(f"EPNAS tuner classArgs '{key}' must be {what}, got {value!r}")
    shape = args.get("input_shape", [3, 32, 32])
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or \
            any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise UserError(f"EPNAS tuner classArgs 'input_shape' must be [C, H, W] (3 positive integers), got {shape!r}")
    for key, least in (("num_classes", 1), ("population", 1), ("tournament", 1)):
        if key in args and args[key] < least:
            raise UserError(f"EPNAS tuner classArgs '{key}' must be >= {least}, got {args[key]!r}")
    if args.get("tournament", 4) > args.get("population", 16):
        raise UserError(f"EPNAS tuner classArgs 'tournament' ({args.get('tournament', 4)}) must be <= 'population' "
                        f"({args.get('population', 16)})")


def check_class_args(args: Mapping[str, Any]) -> TunerSettings:
    """``classArgs`` -> :class:`TunerSettings`; an unknown key, a value of the wrong type (e.g.
    ``branches: "8"``, ``prior: bayes``) or out of range is a one-line :class:`UserError` naming the
    key (``python -m strategies.epnas_nni CONFIG.yml`` exits 2 with it)."""
    from search_spaces.epnas import SpaceConfig

    from .epnas import EpnasConfig

    ctl_fields = {f.name for f in dataclasses.fields(EpnasConfig)}
    valid = set(_TOP_FIELDS) | ctl_fields | set(_SPACE_FIELDS)
    for key in args:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown EPNAS tuner classArgs key '{key}'{hint}")
    _check_class_arg_values(args)
    try:
        ctl = EpnasConfig(**{k: v for k, v in args.items() if k in ctl_fields})
        space = SpaceConfig(kind=args.get("space", "layer"), **{k: args[k] for k in _SPACE_FIELDS if k in args})
        shape = tuple(int(v) for v in args.get("input_shape", (3, 32, 32)))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad EPNAS tuner classArgs: {exc}") from None
    if len(shape) != 3:
        raise UserError(f"input_shape must be [C, H, W], got {list(shape)}")
    return TunerSettings(space=space.kind, algorithm=args.get("algorithm", "epnas"),
                         state_file=str(args.get("state_file", "")), input_shape=shape,
                         num_classes=int(args.get("num_classes", 10)), population=int(args.get("population", 16)),
                         tournament=int(args.get("tournament", 4)), controller=ctl, space_config=space)


def check_settings_feasible(settings: TunerSettings) -> None:
    """:class:`UserError` when no architecture of the space can meet the constraints."""
    from search_spaces.epnas import check_constraints_feasible

    from .epnas import constraints_of

    check_constraints_feasible(constraints_of(settings.controller), settings.space_config, settings.input_shape,
                               settings.num_classes)


def max_trials(settings: TunerSettings, final_top_k: int = 0) -> int:
    """``maxTrialNumber`` for the YAML: episodes x steps x branches (+ the final trainings)."""
    c = settings.controller
    return c.episodes * c.steps_for(settings.space) * c.branches + final_top_k


def final_top_k_of(class_args: Mapping[str, Any]) -> int:
    """classArgs ``final_top_k`` (default :data:`DEFAULT_FINAL_TOP_K`), checked."""
    k = class_args.get("final_top_k", DEFAULT_FINAL_TOP_K)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise UserError(f"final_top_k must be an integer >= 0, got {k!r}")
    return k


def build_search(settings: TunerSettings):
    """The ask/tell search object for ``settings.algorithm`` (after the feasibility check)."""
    from .epnas import EpnasController
    from .search_baselines import BASELINES

    check_settings_feasible(settings)
    if settings.algorithm == "epnas":
        return EpnasController(settings.controller, settings.space_config)
    if settings.algorithm == "evolution":
        return BASELINES["evolution"](settings.controller, settings.space_config, population=settings.population,
                                      sample=settings.tournament)
    return BASELINES[settings.algorithm](settings.controller, settings.space_config)


def _atomic_save(obj: Any, path: Path) -> None:
    from search_spaces.files import atomic_torch_save

    atomic_torch_save(obj, path)


def _default_state_file() -> Path:
    log_dir = os.environ.get("NNI_LOG_DIRECTORY")  # <experiment dir>/log inside the tuner process
    return (Path(log_dir).parent if log_dir else Path.cwd()) / STATE_NAME


def _calling_dispatcher():
    """The NNI ``MsgDispatcher`` whose command handler is calling the tuner (None outside nnictl).

    NNI 3.0 gives a tuner no handle on its dispatcher, yet two things need it: reporting a fatal
    error to the manager (``report_error``, what ``nni/__main__.py`` does when the dispatcher
    crashes) and taking over the trials ``nnictl resume`` re-runs (``recovered_trial_params``)."""
    try:
        from nni.runtime.msg_dispatcher_base import MsgDispatcherBase
    except ImportError:  # pragma: no cover - NNI is a dependency
        return None
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, MsgDispatcherBase):
            return obj
        frame = frame.f_back
    return None


def _tuner_base():
    from nni.tuner import Tuner

    return Tuner


def _locked(method):
    """NNI calls a tuner from two threads (trial ends on the assessor queue's, everything else on
    the default queue's): one lock keeps the controller and its state file consistent."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class EpnasTuner(_tuner_base()):
    """NNI customized tuner wrapping the EPNAS controller (or a baseline).  ``classArgs`` are
    :class:`TunerSettings` keys, the :class:`strategies.epnas.EpnasConfig` fields and the space
    fields (``max_layers`` ...).

    Inside nnictl the constructor only stores ``classArgs`` (the tuner must connect within 10 s);
    they are checked -- unknown keys, bad values, constraints no architecture can meet -- when the
    manager initializes the tuner, right after it connected and before any trial is requested.  A
    problem is then reported to the NNI manager as one line: the experiment goes to ``ERROR`` at
    once, no trial starts, and the line is in the web UI's Dispatcher and NNIManager logs
    (``<experiment dir>/log/dispatcher.log``, ``nnimanager.log``).  Outside nnictl the
    constructor checks everything right away."""

    def __init__(self, **class_args: Any):
        # classArgs arrive as keyword arguments; check_class_args rejects unknown ones by name
        self.class_args = dict(class_args)
        self._settings: TunerSettings | None = None
        self.param_keys: dict[int, str] = {}
        self.owed = 0                 # trials NNI asked for while no branch was idle
        self._st_callback = None
        self._ready: list[tuple[str, dict, dict]] = []
        self._search = None
        self._lock = threading.RLock()
        self._dispatcher = None
        self._adopted = False
        self.resumed_from: int | None = None   # trials known from the state file at start, if any
        self._final = None
        if os.environ.get("NNI_LOG_DIRECTORY") is None:
            _ = self.search  # outside nnictl: check classArgs and constraints / load state right away

    @property
    def settings(self) -> TunerSettings:
        if self._settings is None:
            self._settings = check_class_args(self.class_args)
        return self._settings

    @property
    def state_file(self) -> Path:
        s = self.class_args.get("state_file")
        return Path(s) if s else _default_state_file()

    @property
    def search(self):
        """The controller, built (classArgs and feasibility checks, saved state loaded) on first use."""
        if self._search is None:
            self._search = build_search(self.settings)
            _ = self.final   # classArgs final_top_k checked with the others
            if self.state_file.exists():
                self._load()
        return self._search

    @property
    def final(self):
        """The final phase (:class:`strategies.epnas_evaluator.FinalPhase`): after the search, the
        top-``final_top_k`` feasible networks are trained fully as the experiment's last trials."""
        if self._final is None:
            from .epnas import constraints_of
            from .epnas_evaluator import FinalPhase

            s = self.settings
            self._final = FinalPhase(final_top_k_of(self.class_args), constraints_of(s.controller),
                                     space=s.space_config, input_shape=s.input_shape, num_classes=s.num_classes)
        return self._final

    def _propose(self) -> list[tuple[str, dict, dict]]:
        """The search's proposals; once it is done (every search trial told), the final trainings."""
        out = self.search.propose()
        if out or not self.search.finished or self.search.pending():
            return out
        if self.final.plan(self.search.records, next_trial=getattr(self.search, "next_index", len(self.search.records)),
                           episode=self.settings.controller.episodes):
            _log.info("EPNAS tuner: search done; final training of %d network(s)", len(self.final.records))
            if self.final.note:
                _log.warning("EPNAS tuner: %s", self.final.note)
        return self.final.propose()

    # ---- state -----------------------------------------------------------------------------

    def _load(self) -> None:
        import torch

        try:
            blob = torch.load(self.state_file, weights_only=True)
            self.search.load_state_dict(blob["search"])
            self.param_keys = {int(k): v for k, v in blob["param_keys"].items()}
            if blob.get("final"):
                self.final.load_state_dict(blob["final"])
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"could not resume from {self.state_file} ({type(exc).__name__}: {exc}); starting fresh",
                          RuntimeWarning, stacklevel=2)
            return
        self.resumed_from = len(self.search.records)
        _log.info("EPNAS tuner resumed from %s (%d trials known, episode %d)", self.state_file,
                  len(self.search.records), getattr(self.search, "episode", -1))

    def save(self) -> None:
        _atomic_save({"version": 1, "algorithm": self.settings.algorithm, "search": self.search.state_dict(),
                      "param_keys": dict(self.param_keys), "final": self.final.state_dict()}, self.state_file)

    # ---- NNI callbacks ---------------------------------------------------------------------

    @_locked
    def update_search_space(self, search_space) -> None:
        # The space is defined by classArgs (searchSpace in the YAML is unused).  NNI sends this
        # first, right after the tuner connected: the place to check classArgs and constraints.
        self._dispatcher = self._dispatcher or _calling_dispatcher()
        try:
            _ = self.search
        except UserError as exc:
            message = f"EPNAS tuner: {exc}"
            _log.error(message)
            if self._dispatcher is not None:
                self._dispatcher.report_error(message)   # -> experiment status ERROR, no trial starts
            raise UserError(message) from None

    def _adopt_recovered(self) -> None:
        """Take over the trials ``nnictl resume`` re-runs itself.

        On resume NNI re-submits the trials that were WAITING/RUNNING when it stopped, with their
        old parameters (``nni_node/core/nnimanager.js`` ``addRecoveredTrialJob``), tells the
        dispatcher their parameter ids (``handle_add_customized_trial``), and from then on feeds
        their results to ``import_data`` and drops their ``trial_end`` (``is_created_in_previous_exp``).
        So: they are not proposed again (no duplicate trial keys), and the dispatcher is made to
        route their results and ends here like any other trial's, so a failed one is not waited for
        forever."""
        if self._adopted:
            return
        self._adopted = True
        d = self._dispatcher
        recovered = dict(getattr(d, "recovered_trial_params", None) or {})
        if not recovered:
            return
        from nni.runtime import msg_dispatcher

        keys = set()
        for pid, params in recovered.items():
            key = self._key_of(pid, params if isinstance(params, Mapping) else None)
            if key is None:
                continue
            keys.add(key)
            self.param_keys[int(pid)] = key
            msg_dispatcher._trial_params[int(pid)] = params
        d.recovered_max_param_id = -1
        requeue = getattr(self.search, "requeue", None)
        if requeue is not None:
            self.search.requeue = [k for k in requeue if k not in keys]
        self.final.adopt(keys)
        self._ready = [r for r in self._ready if r[0] not in keys]
        _log.info("EPNAS tuner: NNI re-runs %d trials of the stopped run (%s); not proposed again",
                  len(keys), ", ".join(sorted(keys)))

    def _parameters(self, key: str, arch: dict, meta: dict) -> dict[str, Any]:
        from search_spaces.epnas import arch_to_json

        s = self.settings
        params: dict[str, Any] = {"arch": arch_to_json(arch), "space": s.space, "algorithm": s.algorithm, **meta}
        params.update({k: getattr(s.space_config, k) for k in _SPACE_FIELDS})
        params.update({k: v for k in _CONSTRAINT_FIELDS if (v := getattr(s.controller, k)) is not None})
        params["base_penalty"] = s.controller.base_penalty
        return params

    def _next(self, parameter_id: int) -> dict[str, Any] | None:
        if not self._ready:
            self._ready = self._propose()
        if not self._ready:
            return None
        key, arch, meta = self._ready.pop(0)
        self.param_keys[int(parameter_id)] = key
        return self._parameters(key, arch, meta)

    @_locked
    def generate_parameters(self, parameter_id, **kwargs):
        from nni import NoMoreTrialError

        self._adopt_recovered()
        params = self._next(parameter_id)
        self.save()
        if params is None:
            raise NoMoreTrialError("no EPNAS branch is idle")
        return params

    @_locked
    def generate_multiple_parameters(self, parameter_id_list, **kwargs):
        self._st_callback = kwargs.get("st_callback") or self._st_callback
        self._adopt_recovered()
        out = []
        for pid in parameter_id_list:
            params = self._next(pid)
            if params is None:
                self.owed += len(parameter_id_list) - len(out)
                break
            out.append(params)
        self.save()
        return out

    def _pay_owed(self) -> None:
        """Submit trials NNI asked for earlier but that had to wait for results."""
        if not self.owed or self._st_callback is None:
            return
        from nni.runtime.msg_dispatcher import _create_parameter_id

        while self.owed:
            if not self._ready:
                self._ready = self._propose()
            if not self._ready:
                break
            pid = _create_parameter_id()
            params = self._next(pid)
            self.owed -= 1
            self._st_callback(pid, params)

    def _key_of(self, parameter_id, parameters: Mapping[str, Any] | None) -> str | None:
        if parameters and parameters.get("final") and isinstance(parameters.get("final_rank"), int):
            from .epnas_evaluator import FINAL_PREFIX

            return f"{FINAL_PREFIX}{parameters['final_rank']:02d}"
        if parameters and isinstance(parameters.get("trial"), int) and parameters["trial"] >= 0:
            return f"t{parameters['trial']:05d}"
        return self.param_keys.get(int(parameter_id)) if parameter_id is not None else None

    def _tell(self, key: str, reward: float | None, metrics: Mapping[str, Any] | None = None) -> bool:
        from .epnas_evaluator import is_final_key

        if is_final_key(key):
            return self.final.tell(key, reward, metrics)
        return self.search.tell(key, reward, metrics)

    @_locked
    def receive_trial_result(self, parameter_id, parameters, value, **kwargs) -> None:
        key = self._key_of(parameter_id, parameters)
        metrics = dict(value) if isinstance(value, Mapping) else {"default": value}
        reward = metrics.get("default")
        if key is None or not self._tell(key, None if reward is None else float(reward), metrics):
            _log.warning("ignoring result for unknown or already-told trial %s (parameter %s)", key, parameter_id)
        self._pay_owed()
        self.save()

    @_locked
    def trial_end(self, parameter_id, success, **kwargs) -> None:
        key = self.param_keys.get(int(parameter_id)) if parameter_id is not None else None
        # A trial reports its final metric before its process exits, so a trial that ends without
        # one (failed, killed, or exited without reporting) is a failure; without this its branch
        # would wait forever.  A result that still arrives later is ignored.
        if key is not None and self._tell(key, None):
            _log.warning("trial %s (parameter %s) ended (%s) without a result: told as failure_reward",
                         key, parameter_id, "succeeded" if success else "failed")
        self._pay_owed()
        self.save()

    @_locked
    def import_data(self, data) -> None:
        # nnictl resume replays every finished trial here: known ones are ignored by the controller,
        # a result that reached NNI but not the stopped tuner is recorded now
        for entry in data or []:
            params, value = entry.get("parameter") or {}, entry.get("value")
            key = self._key_of(None, params)
            reward = value.get("default") if isinstance(value, Mapping) else value
            if key is not None and reward is not None:
                self._tell(key, float(reward), value if isinstance(value, Mapping) else None)
        self._pay_owed()
        self.save()


# ------------------------------------------------------------------------------------- NasExperiment


def _make_strategy_class():
    from nni.nas.strategy.base import Strategy

    class EpnasStrategy(Strategy):
        """The same controller as a multi-trial ``Strategy`` for NNI's ``NasExperiment``::

            exp = NasExperiment(EpnasSpace(space_cfg, input_shape=...), EpnasEvaluator(train, val, test_loader=test),
                                EpnasStrategy(space="layer", params_max=2e6, final_top_k=3, ...))
            exp.config.execution_engine = SequentialEngineConfig()   # nni.nas.experiment.config

        The model space must be :class:`search_spaces.epnas.EpnasSpace` with the same space settings
        (architectures are handed to the engine as ``space.freeze(arch_to_sample(arch))``).  Takes the
        tuner's ``classArgs``.  Models whose training ends without a metric are failures.

        With :class:`strategies.epnas_evaluator.EpnasEvaluator` (proxy training, sharing, the
        reward; the strategy gives it its constraints) the run ends, like the nnictl experiment,
        with the final training of the top-``final_top_k`` feasible networks
        (:class:`strategies.epnas_evaluator.FinalPhase`): :attr:`final` holds the plan and
        ``final.results()`` their metrics (test accuracy, params, FLOPs), the evaluator's ``results``
        every model's.  Any other evaluator (e.g. ``FunctionalEvaluator`` reporting the reward) runs
        the search only: multi-trial strategies see only ``default``, so there the evaluator
        computes the reward, and the strategy cannot ask it for a final training.
        """

        def __init__(self, **class_args: Any):
            from .epnas import constraints_of
            from .epnas_evaluator import FinalPhase

            super().__init__()
            self.settings = check_class_args(class_args)
            self.search = build_search(self.settings)
            s = self.settings
            self.final = FinalPhase(final_top_k_of(class_args), constraints_of(s.controller), space=s.space_config,
                                    input_shape=s.input_shape, num_classes=s.num_classes)
            self._running: dict[int, str] = {}
            self._evaluator = None

        def _initialize(self, model_space, engine):
            from nni.nas.execution.event import ModelEventType

            from .epnas_evaluator import EpnasEvaluator

            ev = getattr(model_space, "evaluator", None)
            if isinstance(ev, EpnasEvaluator):
                self._evaluator = ev
                if ev.reward is None:
                    ev.reward = self.settings.controller   # the constraints and base penalty of the search
            engine.register_model_event_callback(ModelEventType.TrainingEnd, self._training_end)
            return model_space

        def _cleanup(self) -> None:
            from nni.nas.execution.event import ModelEventType

            self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._training_end)

        def _training_end(self, event) -> None:
            from .epnas_evaluator import is_final_key

            key = self._running.pop(id(event.model), None)
            if key is not None:
                metric = event.model.metric
                reward = None if metric is None else float(metric)
                if is_final_key(key):
                    self.final.tell(key, reward, self._evaluator.results.get(key) if self._evaluator else None)
                else:
                    self.search.tell(key, reward)

        def _submit(self, key: str, arch: dict, meta: dict) -> bool:
            from search_spaces.epnas import arch_to_sample

            if not self.wait_for_resource():
                return False
            model = self.model_space.freeze(arch_to_sample(arch, self.settings.space_config))
            if self._evaluator is not None:
                model.evaluator = self._evaluator.for_trial(key, meta)
            self._running[id(model)] = key
            self.engine.submit_models(model)
            return True

        def _run(self) -> None:
            while not self.search.finished:
                proposals = self.search.propose()
                if not proposals:
                    if not self._running:
                        return
                    self.engine.wait_models()
                    continue
                for key, arch, meta in proposals:
                    if not self._submit(key, arch, meta):
                        return
            self.engine.wait_models()
            if self._evaluator is None:
                return
            self.final.plan(self.search.records, next_trial=getattr(self.search, "next_index", len(self.search.records)),
                            episode=self.settings.controller.episodes)
            if self.final.note:
                _log.warning("EPNAS strategy: %s", self.final.note)
            for key, arch, meta in self.final.propose():
                if not self._submit(key, arch, meta):
                    return
            self.engine.wait_models()

        def state_dict(self) -> dict:
            return {"search": self.search.state_dict(), "final": self.final.state_dict()}

        def load_state_dict(self, state_dict: dict) -> None:
            if state_dict.get("search"):
                self.search.load_state_dict(state_dict["search"])
            if state_dict.get("final"):
                self.final.load_state_dict(state_dict["final"])

    EpnasStrategy.__module__ = __name__
    return EpnasStrategy


_lazy: dict[str, type] = {}


def __getattr__(name: str):
    # NNI's strategy module imports pytorch-lightning (seconds): created on first access so the
    # tuner process stays quick to start (see EpnasTuner.search)
    if name == "EpnasStrategy":
        if name not in _lazy:
            _lazy[name] = _make_strategy_class()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------- CLI


def _main(argv: list[str]) -> int:
    import yaml

    if len(argv) != 1:
        raise UserError("usage: python -m strategies.epnas_nni CONFIG.yml")
    path = Path(argv[0])
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    tuner = config.get("tuner") or {}
    if tuner.get("className") != "strategies.epnas_nni.EpnasTuner":
        raise UserError(f"{path}: tuner.className must be strategies.epnas_nni.EpnasTuner")
    settings = check_class_args(tuner.get("classArgs") or {})
    check_settings_feasible(settings)
    k = final_top_k_of(tuner.get("classArgs") or {})
    n = max_trials(settings, k)
    if config.get("maxTrialNumber") not in (None, n):
        raise UserError(f"{path}: maxTrialNumber {config['maxTrialNumber']} != episodes x steps x branches "
                        f"+ final_top_k = {n}")
    if config.get("trialConcurrency") not in (None, settings.controller.branches):
        raise UserError(f"{path}: trialConcurrency should equal branches = {settings.controller.branches}")
    print(f"ok: {settings.algorithm} over the {settings.space} space, {k} final training(s), maxTrialNumber {n}, "
          f"trialConcurrency {settings.controller.branches}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_on_error(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
