"""Where each cell stands: done / running / failed / pending, per method and dataset."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from ..errors import UserError
from .cell import is_complete
from .spec import Cell
from .state import CellState, run_is_locked

STATES = ("done", "running", "failed", "pending")


def cell_state_and_problem(cell: Cell, output_root: str) -> Tuple[str, Optional[str]]:
    """The cell's state and, for a failed cell, what failed (an unreadable results.json, or its last attempt)."""
    try:
        if is_complete(cell):
            return "done", None
        unreadable = None
    except UserError as err:
        unreadable = " ".join(str(err).split())
    state = CellState(output_root, cell.run_dir)
    if state.running() or run_is_locked(cell.run_dir):
        return "running", None
    if unreadable:
        return "failed", unreadable
    failed = state.failed()
    if failed:
        return "failed", f"attempt {failed.get('attempt')}: {failed.get('error')}; log {failed.get('log')}"
    return "pending", None


def cell_state(cell: Cell, output_root: str) -> str:
    """``done`` when trained and evaluated; ``running`` while a process holds the cell or a ``train.py``
    holds its run folder (``ampt.utils.locks``); ``failed`` when its last attempt failed or its results.json
    is unreadable; else ``pending`` (an interrupted cell too)."""
    return cell_state_and_problem(cell, output_root)[0]


def _states(cells: Sequence[Cell], output_root: str) -> List[Tuple[str, Optional[str]]]:
    return [cell_state_and_problem(cell, output_root) for cell in cells]


def summary(cells: Sequence[Cell], output_root: str,
            states: Optional[List[Tuple[str, Optional[str]]]] = None) -> List[List[object]]:
    counts: Dict[Tuple[str, str], Dict[str, int]] = OrderedDict()
    for cell, (state, _) in zip(cells, states or _states(cells, output_root)):
        row = counts.setdefault((cell.method, cell.dataset), {s: 0 for s in STATES})
        row[state] += 1
    return [[method, dataset, *(c[s] for s in STATES), sum(c.values())] for (method, dataset), c in counts.items()]


def status_table(cells: Sequence[Cell], output_root: str) -> str:
    """The per-(method, dataset) counts, then one line per failed cell with its error and log."""
    states = _states(cells, output_root)
    table = tabulate(summary(cells, output_root, states), headers=["method", "dataset", *STATES, "cells"],
                     tablefmt="github")
    lines = [table]
    for cell, (state, problem) in zip(cells, states):
        if state == "failed":
            lines.append(f"failed: {cell.name} ({problem})")
    return "\n".join(lines)


def cells_table(cells: Sequence[Cell], output_root: str) -> str:
    """One row per cell (``run --dry-run``): its state and run folder."""
    rows = []
    for cell in cells:
        rel = Path(cell.run_dir)
        try:
            rel = rel.relative_to(output_root)
        except ValueError:
            pass
        rows.append([cell.method, *(f"{k}={v}" for k, v in cell.point.items()), cell_state(cell, output_root), rel])
    return tabulate(rows, tablefmt="plain")
