"""Where each cell stands: done / running / failed / pending, per method and dataset."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from tabulate import tabulate

from .cell import is_complete
from .spec import Cell
from .state import CellState

STATES = ("done", "running", "failed", "pending")


def cell_state(cell: Cell, output_root: str) -> str:
    """``done`` when trained and evaluated; ``running`` while a process holds the cell;
    ``failed`` when its last attempt failed; else ``pending`` (an interrupted cell too)."""
    if is_complete(cell):
        return "done"
    state = CellState(output_root, cell.run_dir)
    if state.running():
        return "running"
    return "failed" if state.failed() else "pending"


def summary(cells: Sequence[Cell], output_root: str) -> List[List[object]]:
    counts: Dict[Tuple[str, str], Dict[str, int]] = OrderedDict()
    for cell in cells:
        row = counts.setdefault((cell.method, cell.dataset), {s: 0 for s in STATES})
        row[cell_state(cell, output_root)] += 1
    return [[method, dataset, *(c[s] for s in STATES), sum(c.values())] for (method, dataset), c in counts.items()]


def status_table(cells: Sequence[Cell], output_root: str) -> str:
    """The per-(method, dataset) counts, then one line per failed cell with its log."""
    table = tabulate(summary(cells, output_root), headers=["method", "dataset", *STATES, "cells"], tablefmt="github")
    lines = [table]
    for cell in cells:
        failed = CellState(output_root, cell.run_dir).failed()
        if failed and not is_complete(cell):
            lines.append(f"failed: {cell.name} (attempt {failed.get('attempt')}: {failed.get('error')}); "
                         f"log {failed.get('log')}")
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
