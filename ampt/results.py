"""``results.json``: one run's metadata and its evaluation records.

Format (``shared/spec/results.md``)::

    {"run": {"trainer": ..., "dataset": ..., "shots": ..., "seed": ...,
             "backbone": ..., "train_eps": ..., "engine": ..., "finished": bool},
     "records": [{"dataset", "split", "attack", "eps", "steps", "n_samples",
                  "accuracy", ...optional "prompt", "subsample", "alpha", ...}]}

Every change re-reads the file, applies itself and writes atomically, so two
tools appending one after the other (train.py, then evaluate.py) never drop
each other's records, and an interrupted write never truncates the file.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .utils.io import read_json, write_json

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RECORD_KEY_FIELDS = ("dataset", "split", "attack", "eps", "steps", "n_samples", "prompt", "subsample")
# What a key field a record lacks means: records written before base-to-new are of all classes.
KEY_DEFAULTS = {"subsample": "all"}
REQUIRED_FIELDS = ("dataset", "split", "attack", "eps", "steps", "n_samples", "accuracy")


class FinishedRunError(RuntimeError):
    """Training into a folder whose results.json says the run finished."""


def _norm(value: Any) -> Any:
    """Numbers compare by value (4 == 4.0) in record keys."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def record_key(record: Mapping[str, Any]) -> Tuple[Any, ...]:
    """The de-duplication key; a missing ``prompt`` is ``None`` (not "learned"), a missing ``subsample`` "all"."""
    return tuple(_norm(record.get(field, KEY_DEFAULTS.get(field))) for field in RECORD_KEY_FIELDS)


class RunResults:
    """Reader/writer of ``run_dir/results.json``."""

    def __init__(self, run_dir: Union[str, Path]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS_FILE

    # ------------------------------------------------------------------ io
    def load(self) -> Dict[str, Any]:
        """The file's content, or an empty document when there is no file yet."""
        if not self.path.exists():
            return {"run": {}, "records": []}
        try:
            data = read_json(self.path)
        except ValueError as err:
            raise ValueError(
                f"{self.path} is not valid JSON ({err}); fix or move it away, then re-run"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("records", []), list):
            raise ValueError(f'{self.path} is not a results file (expected {{"run": {{...}}, "records": [...]}})')
        data.setdefault("run", {})
        data.setdefault("records", [])
        return data

    def _save(self, data: Dict[str, Any]) -> None:
        write_json(data, self.path)

    # ------------------------------------------------------------------ run
    @property
    def run(self) -> Dict[str, Any]:
        return self.load()["run"]

    @property
    def records(self) -> List[Dict[str, Any]]:
        return self.load()["records"]

    @property
    def finished(self) -> bool:
        return bool(self.run.get("finished", False))

    def set_run(self, **meta: Any) -> None:
        """Update the ``run`` block with ``meta`` (other keys are kept)."""
        data = self.load()
        data["run"].update(meta)
        self._save(data)

    def mark_finished(self, finished: bool = True) -> None:
        self.set_run(finished=finished)

    def reset(self, backup: bool = True) -> Optional[Path]:
        """Start a fresh document (a forced re-run); the old file is kept as a dated backup."""
        if not self.path.exists():
            return None
        target = None
        if backup:
            target = self.path.with_name(f"{RESULTS_FILE}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            self.path.replace(target)
            logger.warning("Moved the previous %s to %s", self.path, target)
        else:
            self.path.unlink()
        return target

    # ------------------------------------------------------------------ records
    def has(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> bool:
        """Whether a record with the same key exists (pass a record, or its key fields)."""
        key = record_key({**(record or {}), **fields})
        return any(record_key(r) == key for r in self.records)

    def get(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> Optional[Dict[str, Any]]:
        """The stored record with the same key, or None."""
        key = record_key({**(record or {}), **fields})
        return next((r for r in self.records if record_key(r) == key), None)

    def add(self, record: Mapping[str, Any], force: bool = False) -> bool:
        """Append ``record``; an existing one with the same key is kept unless ``force``.

        Returns True when the record was written.
        """
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ValueError(f"A results record needs {', '.join(missing)} (got keys {sorted(record)})")
        data = self.load()
        key = record_key(record)
        same = [i for i, r in enumerate(data["records"]) if record_key(r) == key]
        if same and not force:
            logger.info("results.json already holds %s; not replaced (use force)", dict(zip(RECORD_KEY_FIELDS, key)))
            return False
        for i in reversed(same):
            del data["records"][i]
        data["records"].append(dict(record))
        self._save(data)
        return True


def check_not_finished(run_dir: Union[str, Path], force: bool = False) -> None:
    """Refuse to train into ``run_dir`` when its results.json says the run finished."""
    results = RunResults(run_dir)
    if results.path.exists() and results.finished and not force:
        raise FinishedRunError(
            f"{results.path} says this run finished; it is not overwritten. "
            "Use another --output-dir, evaluate it with evaluate.py, or pass --force to train it again from scratch."
        )
