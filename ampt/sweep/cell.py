"""One cell: ``train.py`` (unless finished), then the missing ``evaluate.py`` records and audits, with retries;
a complete cell's results.json is labelled with its method (``run.method``, what the report shows).

Outcomes: ``skipped`` (finished and evaluated before), ``done``, ``running
elsewhere`` (another process holds the cell, or ``train.py`` refused a run
folder that another process is training), ``failed`` (after every retry, or
at once for an unreadable results.json; the state file keeps the log path and
the error tail), ``interrupted`` (stopped by Ctrl-C: the cell is left pending,
its attempt not counted). ``done`` means the results.json answers every entry.

A ``train.py`` that fails while the run is finished (another ``train.py``, e.g.
the user's own, finished it meanwhile: ours then refuses the finished folder)
is no failure: the cell goes on to its evaluations. Records of weights other
than the finished run's final weights (an intermediate checkpoint) answer no entry.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set

from ..errors import UserError
from ..results import RunResults
from .requests import audit_answers, audit_command, group_evaluations, is_audit, record_answers, split_sizes
from .requests import evaluate_command as build_evaluate_command
from .runspec import REPO_ROOT
from .spec import Cell
from .state import CellState, LockBusy

logger = logging.getLogger(__name__)

SKIPPED, DONE, ELSEWHERE, FAILED, INTERRUPTED = "skipped", "done", "running elsewhere", "failed", "interrupted"
TAIL_LINES = 20
# train.py's one-line refusal (exit 2) of a run folder that another live process trains (ampt.utils.locks).
LIVE_RUN_MESSAGE = re.compile(r"is being trained by")


class RunningElsewhere(RuntimeError):
    pass


class StepFailed(RuntimeError):
    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


class Interrupted(RuntimeError):
    """The sweep was asked to stop (Ctrl-C) before or while a step ran."""


class StopRequest:
    """Ctrl-C of the runner: no step starts after it, and the running steps are stopped.

    Steps run in their own sessions (the terminal's Ctrl-C reaches only the
    runner), so the runner alone decides: the first :meth:`request` sends
    SIGINT to each step's process group, a second one SIGKILL.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._guard = threading.RLock()  # the signal handler may interrupt a holder in the main thread
        self._children: Set[subprocess.Popen] = set()
        self.requests = 0

    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop is requested meanwhile; True when it was."""
        return self._event.wait(seconds)

    def request(self) -> None:
        with self._guard:
            self.requests += 1
            self._event.set()
            sig = signal.SIGINT if self.requests == 1 else signal.SIGKILL
            for child in self._children:
                try:
                    os.killpg(child.pid, sig)
                except OSError:  # it has just ended
                    pass

    @contextmanager
    def child(self, cmd: List[str], **popen: Any) -> Iterator[subprocess.Popen]:
        """Start ``cmd`` in its own session, unless a stop was requested; stoppable by :meth:`request`."""
        with self._guard:
            if self.requested():
                raise Interrupted("stopped before it started")
            proc = subprocess.Popen(cmd, start_new_session=True, **popen)
            self._children.add(proc)
        try:
            yield proc
        finally:
            with self._guard:
                self._children.discard(proc)


def record_matches(record: Mapping[str, Any], entry: Mapping[str, Any], train_eps: Optional[float] = None,
                   sizes: Optional[Mapping[str, int]] = None) -> bool:
    """Whether a results.json record answers an ``evaluate`` entry (:func:`ampt.sweep.requests.record_answers`)."""
    return record_answers(record, entry, train_eps, sizes)


def of_final_weights(item: Mapping[str, Any], final: Optional[str]) -> bool:
    """Whether a record or audit measured the finished run's final weights (unknown on either side: yes)."""
    return final is None or item.get("weights") in (None, final)


def missing_evaluations(cell: Cell) -> List[Dict[str, Any]]:
    """The cell's ``evaluate`` entries (evaluations and audits) its results.json does not answer yet."""
    data = RunResults(cell.run_dir).load()
    dataset, train_eps = data["run"].get("dataset"), data["run"].get("train_eps")
    final = data["run"].get("final_weights")
    records = [r for r in data["records"] if dataset is None or r.get("dataset") == dataset]
    sizes = split_sizes(records)
    records = [r for r in records if of_final_weights(r, final)]
    audits = [a for a in data.get("audit", []) if isinstance(a, dict) and of_final_weights(a, final)]
    missing = []
    for entry in cell.evaluate:
        if is_audit(entry):
            answered = any(audit_answers(a, entry, train_eps) for a in audits)
        else:
            answered = any(record_matches(r, entry, train_eps, sizes) for r in records)
        if not answered:
            missing.append(entry)
    return missing


def is_complete(cell: Cell) -> bool:
    return RunResults(cell.run_dir).finished and not missing_evaluations(cell)


def evaluate_command(cell: Cell, entry: Mapping[str, Any]) -> List[str]:
    """``evaluate.py`` for an evaluation entry, ``python -m ampt.audit`` for an audit entry."""
    if is_audit(entry):
        return audit_command(cell.run_dir, cell.spec.data_root, entry)
    return build_evaluate_command(cell.run_dir, cell.spec.data_root, entry)


# Config keys the report already tells runs apart by (its table cell), so a method label leaves them out.
REPORT_CELL_KEYS = ("ADV.TRAIN.EPS", "DATASET.SUBSAMPLE_CLASSES")


def method_label(cell: Cell) -> str:
    """The cell's method in reports: its sweep label plus its config-key grid axes, e.g. "AMPT N_PROMPTS=8"."""
    from ..report.methods import short_names

    keys = [k for k in cell.point if "." in k and k not in REPORT_CELL_KEYS]
    names = short_names(keys)
    return " ".join([cell.method, *(f"{names[key]}={cell.point[key]}" for key in keys)])


def label_run(cell: Cell) -> None:
    """Write the cell's :func:`method_label` as ``run.method`` in its results.json (the report's label)."""
    results = RunResults(cell.run_dir)
    label = method_label(cell)
    if results.run.get("method") != label:
        results.set_run(method=label)


def _run_step(what: str, cmd: List[str], log_path: Path, env: Mapping[str, str], stop: StopRequest) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        start = log.tell()
        with stop.child(cmd, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT) as proc:
            returncode = proc.wait()
    if returncode == 0:
        return
    if stop.requested():
        raise Interrupted(f"{what} stopped by Ctrl-C")
    with open(log_path, "r", encoding="utf-8", errors="replace") as log:
        log.seek(start)
        tail = "\n".join(log.read().splitlines()[-TAIL_LINES:])
    last = tail.splitlines()[-1] if tail else ""
    if what == "train.py" and returncode == 2 and LIVE_RUN_MESSAGE.search(last):
        raise RunningElsewhere(last)
    raise StepFailed(f"{what} exited with status {returncode}", tail)


def _train(cell: Cell, state: CellState, env: Mapping[str, str], stop: StopRequest) -> None:
    if RunResults(cell.run_dir).finished:
        return
    try:
        _run_step("train.py", cell.spec.train_command(Path(cell.run_dir)), state.log_path, env, stop)
    except StepFailed:
        if not RunResults(cell.run_dir).finished:
            raise
        logger.info("%s: the run finished meanwhile (another train.py); evaluating it", cell.name)


def _attempt(cell: Cell, state: CellState, env: Mapping[str, str], stop: StopRequest) -> None:
    _train(cell, state, env, stop)
    for entry in group_evaluations(missing_evaluations(cell)):
        _run_step("python -m ampt.audit" if is_audit(entry) else "evaluate.py", evaluate_command(cell, entry),
                  state.log_path, env, stop)
    unanswered = missing_evaluations(cell)
    if unanswered:
        raise StepFailed(f"results.json does not answer the evaluate entry {unanswered[0]} after its command "
                         "succeeded", "")


def _attempts(cell: Cell, state: CellState, retries: int, retry_delay_s: float, env: Mapping[str, str],
              stop: StopRequest) -> str:
    state.log_path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 2):
        previous = state.read()
        state.write("running", attempt=attempt, started=time.time())
        try:
            _attempt(cell, state, env, stop)
        except Interrupted:
            state.write("pending", attempt=previous.get("attempt", attempt - 1), note="interrupted (Ctrl-C)")
            return INTERRUPTED
        except RunningElsewhere as err:
            state.write("pending", note=f"train.py: {err}")
            return ELSEWHERE
        except StepFailed as err:
            state.write("failed", attempt=attempt, error=str(err), error_tail=err.tail)
            logger.warning("%s: attempt %d of %d failed (%s); log %s", cell.name, attempt, retries + 1, err,
                           state.log_path)
            if attempt <= retries and stop.wait(retry_delay_s):
                return INTERRUPTED
            continue
        state.write("done", attempt=attempt, error=None, error_tail=None, note=None)
        return DONE
    return FAILED


def _complete(cell: Cell) -> bool:
    """:func:`is_complete`, False for an unreadable results.json (the locked path reports it)."""
    try:
        return is_complete(cell)
    except UserError:
        return False


def run_cell(cell: Cell, output_root: str, retries: int = 1, retry_delay_s: float = 0.0,
             env: Optional[Mapping[str, str]] = None, stop: Optional[StopRequest] = None) -> str:
    """Run one cell unless it is complete or another process holds it; see the module doc."""
    stop = stop or StopRequest()
    if stop.requested():
        return INTERRUPTED
    if _complete(cell):
        label_run(cell)
        return SKIPPED
    state = CellState(output_root, cell.run_dir)
    try:
        with state.lock():
            return _run_locked(cell, state, retries, retry_delay_s, env or os.environ, stop)
    except LockBusy:
        return ELSEWHERE


def _run_locked(cell: Cell, state: CellState, retries: int, retry_delay_s: float, env: Mapping[str, str],
                stop: StopRequest) -> str:
    try:
        if is_complete(cell):  # finished by another process while we waited for the lock
            outcome = SKIPPED
        else:
            outcome = _attempts(cell, state, retries, retry_delay_s, env, stop)
        if outcome in (SKIPPED, DONE):
            label_run(cell)
        return outcome
    except UserError as err:  # e.g. a corrupt results.json: this cell fails, the others go on
        state.write("failed", error=" ".join(str(err).split()), error_tail=None)
        logger.warning("%s: %s", cell.name, err)
        return FAILED
