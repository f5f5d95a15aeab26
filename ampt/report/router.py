"""The router table: AMPT-style diagnostics from each run's ``router_stats.json``, mean and std over seeds.

One row per method setting and (dataset, shots, train eps), as the accuracy
table, for the finished runs that wrote ``router_stats.json``. Columns (what
each number is: :mod:`ampt.models.router_stats`):

- ``K``: prompts in the bank; ``entropy``: mean per-image entropy of the
  weights in the last training epoch (log K: uniform; 0: one prompt per image);
- ``TV spread``: last epoch's mean total-variation distance between an
  image's weights and the batch mean (0: the weights ignore the image);
- ``bank cos``: mean pairwise cosine of the K prompts' text features after
  training (1: the prompts collapsed to one);
- ``MI label``: mutual information (nats) of the weights with the class on
  the final test's clean images; ``TV clean->adv``: mean TV distance between
  an image's clean and attacked weights there.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..utils.io import read_json
from .aggregate import Stat, dataset_order, make_stat, method_order
from .collect import Run

Getter = Callable[[Dict[str, Any]], Optional[float]]  # one run's router_stats.json -> the number, or None


def _last(key: str) -> Getter:
    return lambda stats: stats["epochs"][-1].get(key) if stats.get("epochs") else None


def _test(*path: str) -> Getter:
    def get(stats: Dict[str, Any]) -> Optional[float]:
        node: Any = stats.get("test")
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return node
    return get


# column -> (header, digits, getter)
COLUMNS: Dict[str, Tuple[str, int, Getter]] = {
    "k": ("K", 0, lambda s: len(s["epochs"][-1]["mean_weights"]) if s.get("epochs") else None),
    "entropy": ("entropy", 3, _last("entropy")),
    "log_k": ("log K", 3, _last("max_entropy")),
    "tv_spread": ("TV spread", 3, _last("tv_from_batch_mean")),
    "bank_cosine": ("bank cos", 2, _last("bank_cosine")),
    "mi_label": ("MI label", 3, _test("clean", "mi_label")),
    "tv_clean_to_attacked": ("TV clean->adv", 3, _test("tv_clean_to_attacked")),
}
CONSTANT_COLUMNS = ("k", "log_k")  # the same for every seed: shown without a spread


@dataclass
class RouterRow:
    method: str
    dataset: str
    shots: int
    train_eps: float
    seeds: List[int] = field(default_factory=list)
    stats: Dict[str, Stat] = field(default_factory=dict)


def router_rows(runs: Sequence[Run], std: str = "sample") -> List[RouterRow]:
    """The table's rows, in the accuracy table's order (methods, then datasets)."""
    groups: Dict[Tuple[str, str, int, float], List[Run]] = defaultdict(list)
    for run in runs:
        if run.finished and run.router_stats is not None and run.subsample == "all":
            groups[(run.method, run.dataset, run.shots, run.train_eps)].append(run)
    rows = []
    for (method, dataset, shots, eps), members in groups.items():
        members = sorted(members, key=lambda r: r.seed or 0)
        files = [read_json(run.router_stats) for run in members]
        row = RouterRow(method, dataset, shots, eps, seeds=[r.seed for r in members if r.seed is not None])
        for column, (_, _, get) in COLUMNS.items():
            values = [v for v in (get(f) for f in files) if v is not None]
            if values:
                row.stats[column] = make_stat(values, std)
        rows.append(row)
    return sorted(rows, key=lambda r: (r.shots, dataset_order(r.dataset), method_order(r.method), r.train_eps))


def router_caption(std_text: str) -> str:
    return (f"Router diagnostics (router_stats.json), mean ± {std_text} over seeds: entropy and TV spread of "
            "the weights in the last training epoch, bank cos after training; MI label and TV clean->adv "
            "on the final test.")


def router_header() -> List[str]:
    return ["Method", "Dataset", "Shots", "Train eps", "Seeds", *(header for header, _, _ in COLUMNS.values())]


def router_cells(row: RouterRow, pm: str = "±") -> List[str]:
    cells = []
    for column, (_, digits, _) in COLUMNS.items():
        stat = row.stats.get(column)
        if stat is None:
            cells.append("-")
        elif stat.std is None or (column in CONSTANT_COLUMNS and stat.std == 0):
            cells.append(f"{stat.mean:.{digits}f}")
        else:
            cells.append(f"{stat.mean:.{digits}f} {pm} {stat.std:.{digits}f}")
    return [row.method, row.dataset, str(row.shots), f"{row.train_eps:g}", str(len(row.seeds)), *cells]
