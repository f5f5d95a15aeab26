"""Find the runs under the report's roots and read each into a :class:`Run`.

A run is a folder holding ``results.json`` (this toolkit's runs: sweep
runner, shell scripts, by hand), or a ``log.txt`` without one (a run made
with CoOp's or APT's own code, read by :mod:`ampt.report.migrate`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..results import RESULTS_FILE
from ..utils.io import read_json
from ..errors import UserFileNotFoundError

logger = logging.getLogger(__name__)

LOG_FILE = "log.txt"
CONFIG_FILE = "config.yaml"
ROUTER_STATS_FILE = "router_stats.json"
# Keys of a run's config that never tell two methods apart (they differ between any two runs).
IGNORED_SETTINGS = ("OUTPUT_DIR", "RESUME", "SEED", "DATASET.ROOT", "MODEL.BACKBONE.DOWNLOAD_ROOT")


@dataclass
class Run:
    """One run: where it is, what it was trained as, and its test records."""

    path: Path
    trainer: str
    dataset: str
    shots: int
    seed: Optional[int]
    train_eps: float
    finished: bool
    records: List[Dict[str, Any]] = field(default_factory=list)
    settings: Dict[str, Any] = field(default_factory=dict)  # flattened config: the method label's source
    method: str = ""  # an explicit label (run.method in results.json); else derived by ampt.report.methods
    source: str = ""  # "" for this toolkit's runs; "CoOp log" / "APT log" for migrated ones
    subsample: str = "all"  # the classes it was trained on (base-to-new)
    meta: Dict[str, Any] = field(default_factory=dict)  # the whole run block of results.json
    audit: List[Dict[str, Any]] = field(default_factory=list)  # results.json's "audit" entries (python -m ampt.audit)
    protocol: Optional[Any] = None  # its ampt.report.protocols.Protocol, set when rows are built

    @property
    def router_stats(self) -> Optional[Path]:
        path = self.path / ROUTER_STATS_FILE
        return path if path.is_file() else None


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``; lists become tuples (hashable)."""
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tuple(node) if isinstance(node, list) else node}


def read_settings(run_dir: Path) -> Dict[str, Any]:
    """The run's ``config.yaml``, flattened, without the keys every run differs in."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        logger.warning("Cannot read %s (%s): the method label uses the trainer name only", path, err)
        return {}
    flat = flatten(config)
    return {k: v for k, v in flat.items() if k not in IGNORED_SETTINGS}


def read_results_run(run_dir: Path) -> Optional[Run]:
    """A :class:`Run` from ``run_dir/results.json``; None when the file is not a run's results file."""
    path = run_dir / RESULTS_FILE
    try:
        data = read_json(path)
    except ValueError as err:
        logger.warning("Skipping %s: not valid JSON (%s)", path, err)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict) or not isinstance(data.get("records"), list):
        logger.info("Skipping %s: not a run's results file (no run block and records)", path)
        return None
    meta = data["run"]
    settings = read_settings(run_dir)
    trainer = str(meta.get("trainer") or settings.get("TRAINER.NAME") or "?")
    shots = meta.get("shots", settings.get("DATASET.NUM_SHOTS", -1))
    seed = meta.get("seed", settings.get("SEED"))
    return Run(
        path=run_dir, trainer=trainer, dataset=str(meta.get("dataset") or settings.get("DATASET.NAME") or "?"),
        shots=int(shots if shots is not None else -1), seed=None if seed is None else int(seed),
        train_eps=float(meta.get("train_eps") or 0.0), finished=bool(meta.get("finished", False)),
        records=[r for r in data["records"] if isinstance(r, dict)], settings=settings,
        method=str(meta.get("method") or ""),
        subsample=str(meta.get("subsample") or settings.get("DATASET.SUBSAMPLE_CLASSES") or "all"),
        meta=dict(meta), audit=[e for e in data.get("audit") or [] if isinstance(e, dict)],
    )


def _run_folders(root: Path) -> Iterable[Tuple[Path, str]]:
    """``(folder, file)`` for every results.json, and every log.txt without a results.json beside it."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if RESULTS_FILE in files:
            yield Path(folder), RESULTS_FILE
        elif LOG_FILE in files:
            yield Path(folder), LOG_FILE


def collect_runs(roots: Iterable[os.PathLike]) -> List[Run]:
    """Every run under ``roots`` (sorted by path); a missing root is an error that names it."""
    from .migrate import read_log_run

    runs: List[Run] = []
    seen = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise UserFileNotFoundError(f"Report root {root} is not a folder: give folders that hold run folders")
        for folder, name in _run_folders(root):
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            run = read_results_run(folder) if name == RESULTS_FILE else read_log_run(folder)
            if run is not None:
                runs.append(run)
    return sorted(runs, key=lambda r: str(r.path))
