"""User-facing errors (lowest layer, so every package can raise them; ``experiments.errors`` re-exports).

Every problem caused by what the user typed or pointed at (a config key, a method name, a data
directory, a budget) is raised as :class:`UserError`; entry points turn it into a one-line
``error: ...`` message on stderr and exit status 2.  Training failures (NaN loss) are
:class:`TrialFailed`: the trial ends as failed (exit 1) and its run folder stays readable.
"""
from __future__ import annotations

import sys

__all__ = ["UserError", "TrialFailed", "exit_on_error"]


class UserError(ValueError):
    """Bad input: message names the offending key/value. Exit code 2."""

    exit_code = 2


class TrialFailed(RuntimeError):
    """The run itself failed (e.g. NaN loss). Exit code 1, run folder kept."""

    exit_code = 1


def exit_on_error(fn, *args, **kwargs):
    """Call ``fn``; turn UserError/TrialFailed into a one-line message and exit code."""
    try:
        return fn(*args, **kwargs)
    except (UserError, TrialFailed) as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(exc.exit_code)
