"""``python -m ampt.sweep run|status|report SWEEP.yaml``: run a comparison described in a sweep file.

    python -m ampt.sweep run configs/sweeps/digits-compare.yaml --workers 2
    python -m ampt.sweep run SWEEP.yaml --gpus 0,1,2,3            # one worker per GPU
    python -m ampt.sweep run SWEEP.yaml --executor slurm --partition gpu --timeout-min 240
    python -m ampt.sweep run SWEEP.yaml --dry-run                 # list the cells and their state
    python -m ampt.sweep status SWEEP.yaml
    python -m ampt.sweep report SWEEP.yaml [ampt.report options]

Keys of the sweep file: docs/sweeps.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any, Dict, List, Optional

from ..utils.cli import exit_process, run_cli
from .cell import method_label
from .executors import EXECUTORS, RunOptions, check_executor, run_local, run_slurm
from .expand import expand
from .spec import Sweep, SweepError, load_sweep
from .status import cells_table, status_table

# command-line flag -> executor key (given flags override the sweep file)
EXECUTOR_FLAGS = ("workers", "gpus", "threads", "partition", "timeout_min", "gpus_per_task", "cpus_per_task",
                  "mem_gb", "array_parallelism", "account", "qos", "cluster")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ampt.sweep", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every cell that is not done (skips finished runs and records)")
    run.add_argument("sweep")
    run.add_argument("--dry-run", action="store_true", help="list the cells, their state and run folders; run nothing")
    run.add_argument("--executor", choices=EXECUTORS, default=None, help="overrides executor.name")
    run.add_argument("--retries", type=int, default=None, help="retries of a failed cell (overrides retries)")
    local = run.add_argument_group("local executor")
    local.add_argument("--workers", type=int, default=None, help="cells run at once")
    local.add_argument("--gpus", default=None, help="GPU ids, e.g. 0,1,2,3: one worker per GPU")
    local.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each worker")
    slurm = run.add_argument_group("slurm executor (submitit)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--timeout-min", type=int, default=None, help="time limit of each array task, minutes")
    slurm.add_argument("--gpus-per-task", type=int, default=None)
    slurm.add_argument("--cpus-per-task", type=int, default=None)
    slurm.add_argument("--mem-gb", type=float, default=None)
    slurm.add_argument("--array-parallelism", type=int, default=None, help="array tasks running at once")
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--cluster", default=None, help="submitit cluster: slurm (default when sbatch exists) or local")
    slurm.add_argument("--wait", action="store_true", help="wait for the array and print the outcomes")
    for name, text in (("status", "done / running / failed / pending per method and dataset"),
                       ("report", "tables of the sweep's results (python -m ampt.report on its output root)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("sweep")
        if name == "report":
            cmd.add_argument("report_args", nargs=argparse.REMAINDER, help="passed to python -m ampt.report")
    return p


def _executor(sweep: Sweep, args: argparse.Namespace) -> Dict[str, Any]:
    executor = dict(sweep.executor)
    if args.executor:
        executor = {"name": args.executor} if args.executor != executor.get("name") else executor
    for flag in EXECUTOR_FLAGS:
        if getattr(args, flag, None) is not None:
            executor[flag] = getattr(args, flag)
    if args.wait:
        executor["wait"] = True
    if executor.get("name") not in EXECUTORS:
        raise SweepError(f"{sweep.path}: executor name {executor.get('name')!r} is not one of {', '.join(EXECUTORS)}")
    try:
        check_executor(executor)
    except SweepError as err:
        raise SweepError(f"{sweep.path}: {err}") from None
    return executor


INTERRUPTED_EXIT = 130  # the shell's status of a command stopped by Ctrl-C
RESUME_HINT = "run the same command again to resume"


def cmd_run(args: argparse.Namespace) -> int:
    from .cell import FAILED, INTERRUPTED
    from .prepare import prepare

    sweep = load_sweep(args.sweep)
    if args.retries is not None:
        sweep.retries = args.retries
    executor = _executor(sweep, args)
    cells = expand(sweep)
    if args.dry_run:
        print(cells_table(cells, sweep.output_root))
        print(f"{len(cells)} cells; executor {executor}")
        return 0
    prepare(sweep)
    options = RunOptions(sweep.output_root, sweep.retries, sweep.retry_delay_s)
    runner = run_local if executor["name"] == "local" else run_slurm
    outcomes = runner(cells, executor, options)
    if outcomes is None:
        print(f"Submitted {len(cells)} cells; follow them with: python -m ampt.sweep status {args.sweep}")
        return 0
    if INTERRUPTED in outcomes:
        print(f"interrupted: stopped the running cells, started no others; their cells are pending ({RESUME_HINT})",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    counts = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
    print(status_table(cells, sweep.output_root))
    print("this call: " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    return 1 if FAILED in outcomes else 0


def cmd_status(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep)
    print(status_table(expand(sweep), sweep.output_root))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``python -m ampt.report`` on the output root, every cell's run named by its sweep method."""
    sweep = load_sweep(args.sweep)
    if importlib.util.find_spec("ampt.report") is None:
        raise SweepError("the report needs the ampt.report package, which this installation lacks")
    from ..report.__main__ import main as report_main

    labels = {cell.run_dir: method_label(cell) for cell in expand(sweep)}
    return report_main([sweep.output_root, *(args.report_args or [])], method_labels=labels)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return {"run": cmd_run, "status": cmd_status, "report": cmd_report}[args.command](args)


def cli(argv: Optional[List[str]] = None) -> int:
    # Ctrl-C before or after the cells ran is run_cli's one line; while they run, run_local stops them.
    return run_cli(lambda: main(argv), (SweepError, FileNotFoundError), interrupt_hint=RESUME_HINT)


if __name__ == "__main__":
    exit_process(cli())
