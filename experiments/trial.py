"""Trial entry point: ``python -m experiments.trial <method> [--config FILE] [--key value ...]``.

Inside an nnictl trial the NNI parameters (for this trial, see :mod:`experiments.nni_bridge`)
are merged over the method's defaults, the ``--config`` file and the command-line options, and
the run folder is ``$NNI_OUTPUT_DIR``.  Standalone (NNI's standalone mode) the run folder is
``--run-dir`` or ``runs/<method>/<timestamp>``; running again on the same folder resumes it.

Every key is checked against the method's config dataclass: a typo is a one-line error that
names the key, exit status 2.  A failed run (NaN loss) exits 1 and leaves its folder readable.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main", "resolve_config"]


def _quiet_nni_warnings() -> None:
    # torch 2.14 makes NNI warn "<Buffer> is found to be not a nn.Module" (harmless, DESIGN.md)
    warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")


def flatten_nested_choices(params: dict[str, Any]) -> dict[str, Any]:
    """NNI's nested choices as plain keys: ``{"dr_method": {"_name": "pca", "dr_ratio": 0.5}}`` (a
    ``choice`` whose options are ``{_name: ..., <sub-space>}``, as GridSearch/TPE send it) becomes
    ``{"dr_method": "pca", "dr_ratio": 0.5}``; options may nest further.  A sub-key that is also set
    elsewhere in the same record is an error (it would be ambiguous)."""
    from .errors import UserError

    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, dict) and "_name" in value:
            put(key, value["_name"])
            for sub, v in value.items():
                if sub != "_name":
                    put(sub, v)
            return
        if key in out:
            raise UserError(f"NNI parameter {key!r} is set twice in one record (nested choice and plain key)")
        out[key] = value

    for key, value in params.items():
        put(key, value)
    return out


def resolve_config(method_name: str, *, config_file: str | None = None, overrides: dict[str, Any] | None = None,
                   nni_params: dict[str, Any] | None = None):
    """defaults < config file < command line < NNI parameters (nested choices flattened); unknown keys
    are errors."""
    from .config import build_config, load_yaml
    from .methods import get_method

    method = get_method(method_name)
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(load_yaml(config_file))
    merged.update(overrides or {})
    merged.update(flatten_nested_choices(nni_params or {}))
    return method, build_config(method.config_cls, merged)


def _main(argv: list[str]) -> int:
    from . import nni_bridge
    from .config import parse_cli_overrides
    from .harness import execute
    from .methods import METHODS
    from .runfolder import default_run_dir

    parser = argparse.ArgumentParser(
        prog="python -m experiments.trial",
        description="Run one CompactNAS trial (standalone or inside nnictl).",
        epilog="Any other --key value sets a field of the method's config (see README).")
    parser.add_argument("method", help=f"one of: {', '.join(sorted(METHODS))}")
    parser.add_argument("--config", help="YAML file with config keys")
    parser.add_argument("--run-dir", help="run folder (default: $NNI_OUTPUT_DIR or runs/<method>/<time>)")
    parser.add_argument("--keys", action="store_true", help="list the method's config keys and defaults, then exit")
    args, rest = parser.parse_known_args(argv)
    if args.keys:
        import dataclasses

        from .methods import get_method

        for f in dataclasses.fields(get_method(args.method).config_cls):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            print(f"{f.name:24s} {default!r}")
        return 0
    overrides = parse_cli_overrides(rest)
    nni_params = nni_bridge.get_trial_parameters() if nni_bridge.in_nni_trial() else {}
    method, cfg = resolve_config(args.method, config_file=args.config, overrides=overrides, nni_params=nni_params)
    run_dir = args.run_dir or default_run_dir(method.name)
    summary = execute(method.name, cfg, method.run, run_dir)
    shown = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "default"}
    print(f"run folder: {Path(run_dir).resolve()}")
    print("summary: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    _quiet_nni_warnings()
    from .errors import exit_on_error

    return exit_on_error(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
