"""The one place CompactNAS talks to NNI's trial API.

Everything a trial needs from NNI goes through here: "am I inside an nnictl trial?", "which
parameters must I run?", "report this metric", "where is my output folder?".  Standalone (no
NNI: ``python -m experiments.trial ...``, tests) the functions return ``{}`` / ``None`` and the
report functions only validate and log, and ``nni`` itself is never imported.

The NNI 3.0 bug this module works around
----------------------------------------
With ``trialConcurrency > 1`` on the local (and remote) training service, NNI 3.0 runs every trial
through the v3 compatibility layer ``nni_node/training_service/v3/compat.js`` (``V3asV1``,
chosen in ``nni_node/core/nnimanager.js`` ``initTrainingService``, line ~425).  There:

* ``submitTrialJob(form)`` (compat.js line 79) pushes the tuner's parameter record onto ONE
  shared FIFO, ``this.parameters.push(form.hyperParameters.value)``, then spawns the trial
  process and files the form, i.e. those parameters, under that trial's id (lines 98-123).
  NNI manager stores that form in its database (nnimanager.js ``manageTrials``, line ~634);
  it is what ``GET /api/v1/nni/trial-jobs`` returns and what the web UI shows, and what
  ``TRIAL_END`` reports to the tuner (nnimanager.js lines 549-564 -> ``msg_dispatcher.py``
  ``handle_trial_end``: ``parameter_id`` is taken from the *form*).
* When a trial process calls ``nni.get_next_parameter()`` it sends ``request_parameter`` over
  its HTTP command channel (``nni/runtime/trial_command_channel/v3.py``), and the handler
  (compat.js lines 193-204) answers with ``this.parameters.shift()`` -- the head of the shared
  FIFO, whoever asks.

So the parameters go to whichever trial process *asks first*, not to the trial they were
submitted for (microsoft/nni#5726, #5693, #5689).  Trials that start at the same time and take
different times to import torch / load data swap parameter sets.  Consequences: the web UI
shows, for a trial, parameters that trial did not run (and its metrics next to them);
``Tuner.trial_end(parameter_id)`` fires when *another* process ends; only
``receive_trial_result`` is right, because the trial reports the ``parameter_id`` of the record
it actually received (``nni/trial.py`` ``report_final_result``) and the dispatcher looks the
parameters up by that id.

What we observed (``tests/test_nni_concurrency.py``: 2 CPU cores, ``trialConcurrency: 3``, 6
trials whose start-up takes 0-1.6 s longer in reverse start order): with plain
``nni.get_next_parameter()`` 4 (in one run all 6) of 6 trials ran parameters other than the ones
the web UI lists for them (a 9-trial run: 6 of 9); their metrics were filed under the parameter id they ran, so
the web UI paired accuracy with the wrong parameters, and the tuner got ``trial_end(2)`` before
the result for parameter 2 had even arrived.  With this module the shared queue still handed
4 of 6 trials someone else's record, and all 6 trials ran, and reported under, the parameters
the web UI shows (custom tuner and built-in GridSearch alike).

The fix (trial side only; works for built-in and customized tuners alike)
------------------------------------------------------------------------
The NNI manager does know which parameters belong to which trial: the form it filed under the
trial id.  :func:`get_trial_parameters`

1. still receives a record from the shared FIFO, so the FIFO stays balanced (one record per
   spawned trial) and trials that use plain NNI are no worse off;
2. asks the NNI manager's REST API for its own trial job,
   ``GET <rest>/api/v1/nni/trial-jobs/$NNI_TRIAL_JOB_ID``, and takes the parameter record filed
   there (retrying for a moment: the manager files the form right *after* spawning the process).
   The REST root needs no configuration: the trial's command channel URL
   ``$NNI_TRIAL_COMMAND_CHANNEL`` is built by the same REST server
   (``nni_node/common/globals/rest.js`` ``getFullUrl``: ``http://<host>:<port>/<urlPrefix>/env/
   <envId>/<trialId>``), so it carries host, port and URL prefix, and it is reachable from
   wherever the trial runs;
3. hands that record to NNI as *the* received parameter record, by installing a thin wrapper
   around NNI's default trial command channel (``nni.runtime.trial_command_channel.
   set_default_trial_command_channel``) whose ``receive_parameter`` returns the trial's own
   record.  ``nni.get_next_parameter()`` therefore returns the right parameters and
   ``nni.report_*_result`` tag metrics with the right ``parameter_id`` -- also for any library
   code that calls NNI directly after us.

Web UI, ``trial_end`` and ``receive_trial_result`` then all agree with what the trial ran.  If
the record cannot be fetched in time the trial fails loudly rather than run unverifiable
parameters.  Without an HTTP command channel (the file-based channel of the legacy kubeflow /
frameworkcontroller services, ``nni/runtime/trial_command_channel/local_legacy.py``, reads each
trial's own ``parameter.cfg`` and is not affected) the record from NNI is used as is.

Why not elsewhere: the tuner never learns which process asks (it cannot fix this); a trial
cannot pick a record off the FIFO; patching ``compat.js`` (create the trial id first and file
the parameters under it, as its resume path already does) is the real fix but would live in
site-packages and vanish with every reinstall.  Alternative ways to find the REST port (nnictl's
registry ``~/nni-experiments/.experiment``, ``NNI_EXP_ID``) only work on the nnictl host.

Metrics
-------
NNI's web UI makes table columns only from numeric keys, and the tuner reads ``default``.
:func:`report_intermediate` and :func:`report_final` therefore require a finite ``default``,
cast numpy/torch scalars to ``float``, drop non-numeric values, refuse non-finite numbers
(``NaN`` is not valid JSON for the web UI), and require every intermediate dict to carry the
same keys as the first one.  Validation also runs standalone, so tests catch bad metrics.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

__all__ = [
    "start_run",
    "in_nni_trial",
    "get_trial_parameters",
    "trial_parameter_record",
    "report_intermediate",
    "report_final",
    "trial_output_dir",
    "clean_metrics",
]

_log = logging.getLogger(__name__)

#: How long a trial waits for the NNI manager to file its trial job (it does so milliseconds
#: after spawning the process; minutes only if the manager is badly overloaded).
REST_TIMEOUT_S = 120.0
_POLL_S = 0.2

_lock = threading.Lock()
_record: dict[str, Any] | None = None  # what get_trial_parameters resolved (see trial_parameter_record)
_intermediate_shape: tuple[str, ...] | None = None  # () for a float, sorted keys for a dict


# --------------------------------------------------------------------------------------------
# Where are we?


def in_nni_trial() -> bool:
    """True inside a trial launched by an NNI experiment (nnictl), false standalone and in tests."""
    platform = os.environ.get("NNI_PLATFORM")
    return bool(platform) and platform != "unittest" and bool(os.environ.get("NNI_TRIAL_JOB_ID"))


def trial_output_dir() -> Path | None:
    """``$NNI_OUTPUT_DIR`` inside a trial (the folder the web UI links to), else ``None``."""
    if not in_nni_trial():
        return None
    out = os.environ.get("NNI_OUTPUT_DIR")
    return Path(out) if out else None


# --------------------------------------------------------------------------------------------
# Parameters


def get_trial_parameters() -> dict[str, Any]:
    """The parameters this trial must run: the set NNI filed for this trial id (= the web UI's).

    Standalone: ``{}``.  Safe to call more than once (NNI's own call happens once; later calls
    return a copy of the same dict).
    """
    global _record
    if not in_nni_trial():
        return {}
    with _lock:
        if _record is None:
            _record = _resolve_parameters()
        return copy.deepcopy(_record["parameters"])


def trial_parameter_record() -> dict[str, Any] | None:
    """What :func:`get_trial_parameters` resolved, for logs and run folders; ``None`` before.

    Keys: ``trial_job_id``, ``sequence_id``, ``parameter_id`` (the id metrics are reported
    under), ``queued_parameter_id`` (what NNI's shared queue handed this process; differs from
    ``parameter_id`` exactly when the NNI race struck), ``source`` (``"rest"`` or ``"queue"``).
    """
    with _lock:
        if _record is None:
            return None
        return {k: v for k, v in _record.items() if k != "parameters"}


def _resolve_parameters() -> dict[str, Any]:
    import nni
    from nni.runtime.trial_command_channel import (
        get_default_trial_command_channel,
        set_default_trial_command_channel,
    )

    trial_id = os.environ["NNI_TRIAL_JOB_ID"]
    if nni.trial.get_current_parameter() is not None:
        # A second request would take another trial's record off NNI's queue (or block forever).
        raise RuntimeError("nni.get_next_parameter() was already called outside experiments.nni_bridge; "
                           "get parameters only through experiments.nni_bridge.get_trial_parameters()")
    channel = _own_parameter_channel(get_default_trial_command_channel(), trial_id)
    set_default_trial_command_channel(channel)
    params = nni.get_next_parameter()  # -> channel.receive_parameter(); sets NNI's parameter_id
    if params is None:
        raise RuntimeError(f"NNI has no parameters for trial {trial_id} (command channel closed)")
    own, queued = channel.own, channel.queued
    record = {
        "trial_job_id": trial_id,
        "sequence_id": _int_or_none(os.environ.get("NNI_TRIAL_SEQ_ID")),
        "parameter_id": own.get("parameter_id"),
        "queued_parameter_id": queued.get("parameter_id") if queued else None,
        "source": channel.source,
        "parameters": dict(params),
    }
    _log.info("trial %s runs parameter_id=%s (NNI queue handed parameter_id=%s): %s",
              trial_id, record["parameter_id"], record["queued_parameter_id"], params)
    return record


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _rest_root() -> str | None:
    """The NNI manager's REST root as seen from this trial, or ``None`` (no HTTP command channel).

    Local training service: from the trial's command channel URL (built by the manager's own REST
    server).  Remote training service (``NNI_PLATFORM=remote``, NNI 3.0's trial keeper on an SSH
    host): the trial's command channel is the trial keeper's own server on the host, so the root
    comes from the URL the trial keeper connects back to the manager with, ``managerCommandChannel``
    in ``<environment>/trial_keeper*/trial_keeper_config.json`` (``ws://<nniManagerIp>:<port>/<prefix>
    /platform/...``; the trial's ``$NNI_OUTPUT_DIR`` is ``<environment>/trials/<trial id>``).
    """
    if os.environ.get("NNI_PLATFORM") == "remote":
        out = os.environ.get("NNI_OUTPUT_DIR")
        conf = _trial_keeper_config(Path(out).resolve().parent.parent) if out else None
        if conf is not None:
            try:
                url = json.loads(conf.read_text()).get("managerCommandChannel")
            except (OSError, ValueError):
                url = None
            root = _rest_root_from_manager_channel(url)
            if root is not None:
                return root
    return _rest_root_from_channel(os.environ.get("NNI_TRIAL_COMMAND_CHANNEL"))


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _trial_keeper_config(environment: Path) -> Path | None:
    """The config of the trial keeper that started this trial.  Each (re)start of the experiment
    starts a new keeper in ``trial_keeper``, ``trial_keeper_1``, ... (``nnictl resume``: on a new
    port): the one whose pid is an ancestor of this process, else the newest."""
    dirs = sorted(environment.glob("trial_keeper*"),
                  key=lambda d: int(d.name.rsplit("_", 1)[1]) if d.name.rsplit("_", 1)[-1].isdigit() else 0)
    mine = _ancestors()
    for d in dirs:
        try:
            if int((d / "trial_keeper.pid").read_text().strip()) in mine:
                return d / "trial_keeper_config.json"
        except (OSError, ValueError):
            continue
    return dirs[-1] / "trial_keeper_config.json" if dirs else None


def _rest_root_from_manager_channel(channel_url: str | None) -> str | None:
    """``ws://host:port/<prefix>/platform/<service>/<worker>`` -> ``http://host:port/<prefix>/api/v1/nni``."""
    if not channel_url:
        return None
    parts = urlsplit(channel_url)
    cut = parts.path.rfind("/platform/")
    if parts.scheme not in ("ws", "wss") or not parts.netloc or cut < 0:
        return None
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}{parts.path[:cut]}/api/v1/nni"


def _rest_root_from_channel(channel_url: str | None) -> str | None:
    """``http://host:port/<prefix>/env/<env>/<trial>`` -> ``http://host:port/<prefix>/api/v1/nni``."""
    if not channel_url:
        return None
    parts = urlsplit(channel_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    cut = parts.path.rfind("/env/")
    if cut < 0:
        return None
    return f"{parts.scheme}://{parts.netloc}{parts.path[:cut]}/api/v1/nni"


def _fetch_own_record(rest_root: str, trial_id: str, timeout_s: float = REST_TIMEOUT_S) -> dict[str, Any]:
    """The parameter record NNI manager filed for ``trial_id`` (what the web UI shows)."""
    import nni

    url = f"{rest_root}/trial-jobs/{trial_id}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the manager is never behind a proxy
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer"
    while True:
        try:
            with opener.open(url, timeout=10) as resp:
                body = resp.read().decode("utf-8")
            job = json.loads(body) if body.strip() else None
            hyper = (job or {}).get("hyperParameters") or []
            if hyper:
                # One entry per parameter_index; NNI 3.0 trials get exactly one (index 0).
                records = [nni.load(h) if isinstance(h, str) else h for h in hyper]
                return max(records, key=lambda r: r.get("parameter_index") or 0)
            last_problem = "trial job not filed yet"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"could not get the parameters NNI filed for trial {trial_id} from {url} within "
                f"{timeout_s:.0f} s ({last_problem}); refusing to run parameters the web UI would not show")
        time.sleep(_POLL_S)


def _make_channel_class():
    from nni.runtime.trial_command_channel import TrialCommandChannel

    class OwnParameterChannel(TrialCommandChannel):
        """NNI's trial command channel, except that ``receive_parameter`` returns this trial's own record."""

        def __init__(self, inner: TrialCommandChannel, trial_id: str):
            self._inner = inner
            self._trial_id = trial_id
            self.queued: dict[str, Any] | None = None
            self.own: dict[str, Any] = {}
            self.source = "queue"

        def receive_parameter(self):
            # Take our record from the shared queue so it stays one record per spawned trial.
            self.queued = self._inner.receive_parameter()
            rest_root = _rest_root()
            if rest_root is None:  # legacy / file-based channel: per-trial parameters, no race
                self.own, self.source = dict(self.queued or {}), "queue"
                return self.queued
            self.own, self.source = _fetch_own_record(rest_root, self._trial_id), "rest"
            if self.queued is not None and self.queued.get("parameter_id") != self.own.get("parameter_id"):
                _log.warning(
                    "NNI race (microsoft/nni#5726): the shared queue handed trial %s parameter_id=%s, "
                    "but NNI filed parameter_id=%s for it (shown in the web UI); running parameter_id=%s",
                    self._trial_id, self.queued.get("parameter_id"), self.own.get("parameter_id"),
                    self.own.get("parameter_id"))
            return self.own

        def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002 (NNI's name)
            self._inner.send_metric(type=type, parameter_id=parameter_id, trial_job_id=trial_job_id,
                                    sequence=sequence, value=value)

    return OwnParameterChannel


def _own_parameter_channel(inner, trial_id: str):
    """Built lazily so that the standalone path never imports nni."""
    return _make_channel_class()(inner, trial_id)


# --------------------------------------------------------------------------------------------
# Metrics


def _as_number(value: Any) -> float | None:
    """``float(value)`` for Python/numpy/torch scalars; ``None`` for anything non-numeric."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    if not isinstance(value, numbers.Real) and hasattr(value, "item"):
        count = value.numel() if hasattr(value, "numel") else getattr(value, "size", 1)  # torch / numpy
        if count != 1:
            return None
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def clean_metrics(metrics: Mapping[str, Any], *, what: str = "metric") -> dict[str, float]:
    """Validate a metric dict and reduce it to ``{key: float}`` (what NNI and its web UI accept).

    ``default`` must be present and finite; numpy/torch scalars become floats; non-numeric
    values (strings, lists, ``None``, tensors with more than one element) are dropped; any
    numeric value that is not finite raises ``ValueError`` naming the key.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{what} must be a dict with a 'default' key, got {type(metrics).__name__}")
    if "default" not in metrics:
        raise ValueError(f"{what} has no 'default' key (keys: {sorted(map(str, metrics))})")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ValueError(f"{what} key {key!r} is not a string")
        number = _as_number(value)
        if number is None:
            if key == "default":
                raise ValueError(f"{what}['default'] must be a finite number, got {value!r}")
            _log.debug("dropping non-numeric %s[%r] = %r", what, key, value)
            continue
        if not math.isfinite(number):
            raise ValueError(f"{what}[{key!r}] must be finite, got {number!r}")
        out[key] = number
    return out


def report_intermediate(value: float | Mapping[str, Any]) -> float | dict[str, float]:
    """Report one intermediate result (e.g. per epoch); returns what was (or would be) sent.

    A number, or a dict with a finite ``default`` whose numeric keys are the same every time.
    """
    global _intermediate_shape
    if isinstance(value, Mapping):
        cleaned: float | dict[str, float] = clean_metrics(value, what="intermediate metric")
        shape = tuple(sorted(cleaned))
    else:
        number = _as_number(value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"intermediate metric must be a finite number or a dict, got {value!r}")
        cleaned, shape = number, ()
    with _lock:
        if _intermediate_shape is None:
            _intermediate_shape = shape
        elif shape != _intermediate_shape:
            raise ValueError(
                f"intermediate metric keys changed: first report had {list(_intermediate_shape) or 'a number'}, "
                f"this one has {list(shape) or 'a number'} (the web UI needs the same keys every time)")
    if in_nni_trial():
        import nni

        get_trial_parameters()  # make sure NNI tags the metric with this trial's own parameter_id
        nni.report_intermediate_result(cleaned)
    else:
        _log.debug("intermediate result (standalone, not sent): %s", cleaned)
    return cleaned


def report_final(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Report the trial's final result (a dict with a finite ``default``); returns what was sent."""
    cleaned = clean_metrics(metrics, what="final metric")
    if in_nni_trial():
        import nni

        get_trial_parameters()
        nni.report_final_result(cleaned)
    else:
        _log.info("final result (standalone, not sent): %s", cleaned)
    return cleaned


def start_run() -> None:
    """A new run in this process (``harness.execute``; a benchmark runs several in one process):
    its intermediate metrics may have their own keys, the same within the run."""
    global _intermediate_shape
    with _lock:
        _intermediate_shape = None


def _reset_for_tests() -> None:
    """Forget resolved parameters and the intermediate-metric shape (unit tests only)."""
    global _record, _intermediate_shape
    with _lock:
        _record = None
        _intermediate_shape = None
