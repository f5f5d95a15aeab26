"""One cell: ``train.py`` (unless finished), then the missing ``evaluate.py`` records and audits, with retries;
a complete cell's results.json is labelled with its method (``run.method``, what the report shows).

Outcomes: ``skipped`` (finished and evaluated before), ``done``, ``running
elsewhere`` (another process holds the cell, or ``train.py`` refused a run
folder that another process is training), ``failed`` (after every retry; the
state file keeps the log path and the error tail).
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..results import RunResults
from .requests import audit_answers, audit_command, is_audit, record_answers
from .requests import evaluate_command as build_evaluate_command
from .runspec import REPO_ROOT
from .spec import Cell
from .state import CellState, LockBusy

logger = logging.getLogger(__name__)

SKIPPED, DONE, ELSEWHERE, FAILED = "skipped", "done", "running elsewhere", "failed"
TAIL_LINES = 20
# train.py's one-line refusal (exit 2) of a run folder that another live process trains (ampt.utils.locks).
LIVE_RUN_MESSAGE = re.compile(r"is being trained by")


class RunningElsewhere(RuntimeError):
    pass


class StepFailed(RuntimeError):
    def __init__(self, what: str, returncode: int, tail: str) -> None:
        super().__init__(f"{what} exited with status {returncode}")
        self.returncode, self.tail = returncode, tail


def record_matches(record: Mapping[str, Any], entry: Mapping[str, Any], train_eps: Optional[float] = None) -> bool:
    """Whether a results.json record answers an ``evaluate`` entry (:func:`ampt.sweep.requests.record_answers`)."""
    return record_answers(record, entry, train_eps)


def missing_evaluations(cell: Cell) -> List[Dict[str, Any]]:
    """The cell's ``evaluate`` entries (evaluations and audits) its results.json does not answer yet."""
    data = RunResults(cell.run_dir).load()
    dataset, train_eps = data["run"].get("dataset"), data["run"].get("train_eps")
    records = [r for r in data["records"] if dataset is None or r.get("dataset") == dataset]
    audits = [a for a in data.get("audit", []) if isinstance(a, dict)]
    final = data["run"].get("final_weights")
    audits = [a for a in audits if final is None or a.get("weights") in (None, final)]
    missing = []
    for entry in cell.evaluate:
        if is_audit(entry):
            answered = any(audit_answers(a, entry, train_eps) for a in audits)
        else:
            answered = any(record_matches(r, entry, train_eps) for r in records)
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


def _run_step(what: str, cmd: List[str], log_path: Path, env: Mapping[str, str]) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        start = log.tell()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        return
    with open(log_path, "r", encoding="utf-8", errors="replace") as log:
        log.seek(start)
        tail = "\n".join(log.read().splitlines()[-TAIL_LINES:])
    last = tail.splitlines()[-1] if tail else ""
    if what == "train.py" and proc.returncode == 2 and LIVE_RUN_MESSAGE.search(last):
        raise RunningElsewhere(last)
    raise StepFailed(what, proc.returncode, tail)


def _attempt(cell: Cell, state: CellState, env: Mapping[str, str]) -> None:
    if not RunResults(cell.run_dir).finished:
        _run_step("train.py", cell.spec.train_command(Path(cell.run_dir)), state.log_path, env)
    for entry in missing_evaluations(cell):
        _run_step("python -m ampt.audit" if is_audit(entry) else "evaluate.py", evaluate_command(cell, entry),
                  state.log_path, env)


def _attempts(cell: Cell, state: CellState, retries: int, retry_delay_s: float, env: Mapping[str, str]) -> str:
    state.log_path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 2):
        state.write("running", attempt=attempt, started=time.time())
        try:
            _attempt(cell, state, env)
        except RunningElsewhere as err:
            state.write("pending", note=f"train.py: {err}")
            return ELSEWHERE
        except StepFailed as err:
            state.write("failed", attempt=attempt, error=str(err), error_tail=err.tail)
            logger.warning("%s: attempt %d of %d failed (%s); log %s", cell.name, attempt, retries + 1, err,
                           state.log_path)
            if attempt <= retries:
                time.sleep(retry_delay_s)
            continue
        state.write("done", attempt=attempt, error=None, error_tail=None)
        return DONE
    return FAILED


def run_cell(cell: Cell, output_root: str, retries: int = 1, retry_delay_s: float = 0.0,
             env: Optional[Mapping[str, str]] = None) -> str:
    """Run one cell unless it is complete or another process holds it; see the module doc."""
    if is_complete(cell):
        label_run(cell)
        return SKIPPED
    state = CellState(output_root, cell.run_dir)
    try:
        with state.lock():
            if is_complete(cell):  # finished by another process while we waited for the lock
                outcome = SKIPPED
            else:
                outcome = _attempts(cell, state, retries, retry_delay_s, env or os.environ)
            if outcome in (SKIPPED, DONE):
                label_run(cell)
            return outcome
    except LockBusy:
        return ELSEWHERE
