"""Find the runs under the report's roots and read each into a :class:`Run`.

A run is a folder holding ``results.json`` (this toolkit's runs: sweep
runner, shell scripts, by hand), or a ``log.txt`` without one (a run made
with CoOp's or APT's own code, read by :mod:`ampt.report.migrate`). A
``results.json`` that cannot be read is skipped and named (:class:`SkippedRun`),
never dropped silently. A ``train.py --eval-only`` folder of loaded weights
is marked (``Run.eval_only``): the report gives it its own rows.
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
    eval_only: str = ""  # "eval-only, epoch E" for train.py --eval-only of loaded weights (its own rows); else ""

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


@dataclass(frozen=True)
class SkippedRun:
    """A results.json the report could not read: shown in every format, never dropped silently."""

    path: str
    reason: str

    def text(self) -> str:
        return f"{self.path} ({self.reason})"


def _read_results(path: Path) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(content, "")``, or ``(None, why it is not a run's results file)``."""
    try:
        data = read_json(path)
    except ValueError as err:  # UnicodeDecodeError is one too
        return None, f"not valid JSON: {err}"
    except OSError as err:
        return None, f"cannot be read: {err.strerror or err}"
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict) or not isinstance(data.get("records"), list):
        return None, 'not a run\'s results file: no "run" block and "records" list'
    return data, ""


def read_results_run(run_dir: Path, skipped: Optional[List[SkippedRun]] = None) -> Optional[Run]:
    """A :class:`Run` from ``run_dir/results.json``; None (appended to ``skipped``) when it cannot be read."""
    path = run_dir / RESULTS_FILE
    data, reason = _read_results(path)
    if data is None:
        logger.warning("Skipping %s: %s", path, reason)
        if skipped is not None:
            skipped.append(SkippedRun(str(path), reason))
        return None
    meta = data["run"]
    settings = read_settings(run_dir)
    trainer = str(meta.get("trainer") or settings.get("TRAINER.NAME") or "?")
    shots = meta.get("shots", settings.get("DATASET.NUM_SHOTS", -1))
    seed = meta.get("seed", settings.get("SEED"))
    run = Run(
        path=run_dir, trainer=trainer, dataset=str(meta.get("dataset") or settings.get("DATASET.NAME") or "?"),
        shots=int(shots if shots is not None else -1), seed=None if seed is None else int(seed),
        train_eps=float(meta.get("train_eps") or 0.0), finished=bool(meta.get("finished", False)),
        records=[r for r in data["records"] if isinstance(r, dict)], settings=settings,
        method=str(meta.get("method") or ""),
        subsample=str(meta.get("subsample") or settings.get("DATASET.SUBSAMPLE_CLASSES") or "all"),
        meta=dict(meta), audit=[e for e in data.get("audit") or [] if isinstance(e, dict)],
    )
    run.eval_only = eval_only_label(run)
    return run


def loaded_from(run: Run) -> Optional[Path]:
    """The model folder an eval-only run loaded (its records' ``model_dir``, else ``run.model_dir``)."""
    folders = [r.get("model_dir") for r in run.records if r.get("model_dir")] + [run.meta.get("model_dir")]
    folder = next((f for f in folders if f), None)
    return Path(folder).resolve() if folder else None


def eval_only_label(run: Run) -> str:
    """``eval-only, epoch E`` for a ``train.py --eval-only`` run of a learning trainer; "" otherwise.

    Such a run is ``run.eval_only: true``, or a run without final weights whose records loaded another
    folder's model. Zero-shot runs made with ``--eval-only`` are the zero-shot model itself: "".
    """
    from .protocols import is_zero_shot

    other = loaded_from(run)
    loaded_elsewhere = other is not None and other != run.path.resolve() and not run.meta.get("final_weights")
    if is_zero_shot(run) or not (run.meta.get("eval_only") or loaded_elsewhere):
        return ""
    epochs = sorted({int(r["checkpoint_epoch"]) for r in run.records if isinstance(r.get("checkpoint_epoch"), int)})
    if not epochs and isinstance(run.meta.get("load_epoch"), int):
        epochs = [run.meta["load_epoch"]]
    return f"eval-only, epoch {', '.join(map(str, epochs))}" if epochs else "eval-only"


def _run_folders(root: Path) -> Iterable[Tuple[Path, str]]:
    """``(folder, file)`` for every results.json, and every log.txt without a results.json beside it."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if RESULTS_FILE in files:
            yield Path(folder), RESULTS_FILE
        elif LOG_FILE in files:
            yield Path(folder), LOG_FILE


def collect_runs(roots: Iterable[os.PathLike], skipped: Optional[List[SkippedRun]] = None) -> List[Run]:
    """Every run under ``roots`` (sorted by path); a missing root is an error that names it.

    ``skipped`` receives each results.json that could not be read (sorted by path).
    """
    from .migrate import read_log_run

    runs: List[Run] = []
    unread: List[SkippedRun] = []
    seen = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise UserFileNotFoundError(f"Report root {root} is not a folder: give folders that hold run folders")
        for folder, name in _run_folders(root):
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            run = read_results_run(folder, unread) if name == RESULTS_FILE else read_log_run(folder)
            if run is not None:
                runs.append(run)
    if skipped is not None:
        skipped += sorted(unread, key=lambda s: s.path)
    return sorted(runs, key=lambda r: str(r.path))
