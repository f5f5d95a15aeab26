"""Executors: a local worker pool (concurrent.futures) and SLURM job arrays (submitit).

Both run :func:`ampt.sweep.cell.run_cell` per cell; neither schedules by
itself. On Ctrl-C (or SIGTERM) the local pool starts no more cells and
stops the running ones (:class:`ampt.sweep.cell.StopRequest`; a second
Ctrl-C kills them); their cells stay pending. Local workers are pinned to one GPU each (``CUDA_VISIBLE_DEVICES``)
or, without GPUs, to ``threads`` CPU threads (``OMP_NUM_THREADS``). On SLURM
each array task is a :class:`CellTask`, which submitit's checkpoint protocol
re-queues unchanged on pre-emption or time-out: the requeued task runs the
same cell, and ``train.py`` resumes the unfinished run from its checkpoint.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from .cell import INTERRUPTED, StopRequest, run_cell
from .spec import Cell, SweepError
from .state import SWEEP_DIR

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
LOCAL_KEYS = ("name", "workers", "gpus", "threads")
# sweep key -> submitit.AutoExecutor parameter
SLURM_KEYS = {
    "partition": "slurm_partition", "timeout_min": "timeout_min", "gpus_per_task": "gpus_per_node",
    "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
    "setup": "slurm_setup", "additional": "slurm_additional_parameters", "max_requeues": "max_num_timeout",
    "job_name": "name",
}
SLURM_OTHER_KEYS = ("name", "cluster", "wait")


@dataclass
class RunOptions:
    output_root: str
    retries: int = 1
    retry_delay_s: float = 0.0


def _check(executor: Mapping[str, Any], valid: Sequence[str]) -> None:
    from ..registry import unknown_name_message

    for key in executor:
        if key not in valid:
            raise SweepError(unknown_name_message(f"key of the {executor['name']} executor", key, list(valid)))


def parse_gpus(value: Any) -> List[str]:
    """``"0,1,2"``, ``[0, 1]`` or None -> ``["0", "1", "2"]``."""
    if value in (None, ""):
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(x).strip() for x in items if str(x).strip()]


def local_slots(executor: Mapping[str, Any]) -> List[Dict[str, str]]:
    """The environment of each local worker: one GPU each (round robin), or a share of the CPU threads."""
    _check(executor, LOCAL_KEYS)
    gpus = parse_gpus(executor.get("gpus"))
    workers = executor.get("workers")
    workers = len(gpus) or 1 if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SweepError(f"executor workers: {workers!r} is not a whole number >= 1 (cells run at once)")
    threads = executor.get("threads") or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers)
    slots = []
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        slots.append(env)
    return slots


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM request ``stop`` instead of raising in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.request()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # once stopping, a repeated Ctrl-C must not turn the one-line exit into a traceback
            signal.signal(sig, signal.SIG_IGN if stop.requested() else handler)


def run_local(cells: Sequence[Cell], executor: Mapping[str, Any], options: RunOptions) -> List[str]:
    """Run ``cells`` on a pool of workers; returns one outcome per cell, in order (``interrupted`` after Ctrl-C)."""
    slots: "queue.Queue[Dict[str, str]]" = queue.Queue()
    envs = local_slots(executor)
    for env in envs:
        slots.put(env)
    stop = StopRequest()

    def work(cell: Cell) -> str:
        slot = slots.get()
        try:
            if stop.requested():
                return INTERRUPTED
            logger.info("%s: starting (%s)", cell.name, " ".join(f"{k}={v}" for k, v in slot.items()))
            outcome = run_cell(cell, options.output_root, options.retries, options.retry_delay_s,
                               {**os.environ, **slot}, stop)
            if outcome != INTERRUPTED:
                logger.info("%s: %s", cell.name, outcome)
            return outcome
        finally:
            slots.put(slot)

    with stop_on_signals(stop), ThreadPoolExecutor(max_workers=len(envs)) as pool:
        return list(pool.map(work, cells))


class CellTask:
    """A submitit task running one cell; re-queued as is on pre-emption or time-out."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def __call__(self, cell: Cell) -> str:
        return run_cell(cell, self.options.output_root, self.options.retries, self.options.retry_delay_s)

    def checkpoint(self, cell: Cell) -> Any:
        """submitit's Checkpointable protocol: resubmit the same cell (train.py resumes its run)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, cell)


def check_executor(executor: Mapping[str, Any]) -> None:
    """Refuse, before anything runs, an executor key its kind does not have or a worker count below 1."""
    if executor.get("name") == "local":
        local_slots(executor)
    else:
        _check(executor, (*SLURM_KEYS, *SLURM_OTHER_KEYS))


def slurm_executor(executor: Mapping[str, Any], output_root: str) -> Any:
    """A ``submitit.AutoExecutor`` with the sweep's SLURM settings (``cluster: local`` runs them here)."""
    try:
        import submitit
    except ImportError:
        raise SweepError("the slurm executor needs submitit: pip install 'submitit>=1.5' "
                         "(or pip install -e '.[slurm]')") from None
    _check(executor, (*SLURM_KEYS, *SLURM_OTHER_KEYS))
    folder = Path(output_root) / SWEEP_DIR / "submitit" / "%j"
    auto = submitit.AutoExecutor(folder=folder, cluster=executor.get("cluster"))
    params = {SLURM_KEYS[k]: v for k, v in executor.items() if k in SLURM_KEYS and v is not None}
    params.setdefault("name", "ampt-sweep")
    auto.update_parameters(**params)
    return auto


def run_slurm(cells: Sequence[Cell], executor: Mapping[str, Any], options: RunOptions) -> Optional[List[str]]:
    """Submit ``cells`` as one job array; with ``wait`` (default for ``cluster: local``) return the outcomes."""
    auto = slurm_executor(executor, options.output_root)
    if not cells:
        return []
    jobs = auto.map_array(CellTask(options), list(cells))
    logger.info("Submitted %d cells as job array %s (logs in %s)", len(jobs), jobs[0].job_id.split("_")[0],
                Path(options.output_root) / SWEEP_DIR / "submitit")
    wait = executor.get("wait", executor.get("cluster") in ("local", "debug"))
    if not wait:
        return None
    return [job.result() for job in jobs]
