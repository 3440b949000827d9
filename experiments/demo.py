"""``make demo``: the ProxylessNAS search-scope study on embedded data, under nnictl.

Creates the experiment of ``experiments/configs/demo.yml`` (working directory
``runs/nni-experiments``), prints the web UI address, shows a progress bar until every trial has
ended, runs ``python -m analysis`` on the experiment folder, and prints where the plots and tables
are.  The experiment is left running so its web UI stays up; the command to stop it is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError, exit_on_error

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}


def _main(argv: list[str]) -> int:
    from .launch import NnictlError

    try:
        return _demo(argv)
    except NnictlError as exc:   # one line (the manager's log is in the experiment folder)
        raise UserError(str(exc).splitlines()[0]) from None


def _demo(argv: list[str]) -> int:
    import yaml
    from tqdm.auto import tqdm

    from .launch import free_port, run_experiment

    p = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "experiments/configs/demo.yml"))
    p.add_argument("--workdir", default=str(REPO / "runs"))
    p.add_argument("--port", type=int, default=None, help="web UI port (default: 8080, or a free one)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--stop", action="store_true", help="stop the experiment (and its web UI) at the end")
    p.add_argument("--hosts", help="run on NNI's remote training service: a host overlay "
                                   "(trainingService with machineList, see experiments/configs/remote.yml)")
    args = p.parse_args(argv)
    config_path = Path(args.config)
    if not config_path.is_file():
        raise UserError(f"config file not found: {config_path}")
    config: dict | Path = config_path
    if args.hosts:
        from .remote import apply_overlay, check_hosts, load_yaml

        config = apply_overlay(load_yaml(config_path), load_yaml(args.hosts), config_dir=config_path.resolve().parent)
        for line in check_hosts(config["trainingService"]):   # before any progress bar: one clean line
            print(line)
    total = int(yaml.safe_load(config_path.read_text()).get("maxTrialNumber", 0)) or None
    port = args.port or _port_or_free(8080, free_port)
    bar = tqdm(total=total, desc="trials", unit="trial", dynamic_ncols=True)
    t0 = time.time()

    def on_start(run):
        bar.write(f"experiment {run.experiment_id} started; web UI: http://localhost:{run.port}")

    def on_poll(run, jobs):
        done = sum(j.get("status") in TERMINAL for j in jobs)
        running = sum(j.get("status") == "RUNNING" for j in jobs)
        bar.n = done
        bar.set_postfix(running=running, refresh=False)
        bar.refresh()

    with run_experiment(config, tmp_path=args.workdir, port=port, timeout=args.timeout, isolate_home=False,
                        check_hosts=False,
                        on_start=on_start, on_poll=on_poll, keep_running=not args.stop) as run:
        bar.n = bar.total or bar.n
        bar.close()
        jobs = run.trial_jobs
        failed = [j["trialJobId"] for j in jobs if j.get("status") != "SUCCEEDED"]
        exp_dir = run.experiment_dir
        print(f"{len(jobs) - len(failed)}/{len(jobs)} trials succeeded in {time.time() - t0:.0f} s")
        from analysis.__main__ import main as analysis_main

        code = analysis_main([str(exp_dir)])
        print(f"experiment folder: {exp_dir}")
        print(f"plots and tables:  {exp_dir / 'analysis'}")
        if args.stop:
            print("experiment stopped (--stop)")
        else:
            nnictl = Path(sys.executable).parent / "nnictl"
            print(f"web UI:            http://localhost:{run.port}   (stop it with: {nnictl} stop {run.experiment_id})")
        if failed:
            raise UserError(f"trials failed: {', '.join(failed)} (see their trial.log under {exp_dir})")
        return code or 0


def _port_or_free(preferred: int, free_port) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def main(argv: list[str] | None = None) -> int:
    return exit_on_error(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
