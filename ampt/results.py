"""``results.json``: one run's metadata and its evaluation records.

Format (``docs/results_format.md``)::

    {"run": {"trainer": ..., "dataset": ..., "shots": ..., "seed": ...,
             "backbone": ..., "train_eps": ..., "engine": ..., "finished": bool,
             "final_weights": digest of the deployed model once finished},
     "records": [{"dataset", "split", "attack", "eps", "steps", "n_samples",
                  "accuracy", "precision", ...optional "prompt", "subsample", "alpha", "seed",
                  "checkpoint_epoch", "weights", ...}]}

Every change takes ``.results.json.lock`` (``fcntl.flock``), re-reads the
file, applies itself and writes atomically, so any number of processes
(train.py, several evaluate.py) never drop each other's records, and an
interrupted write never truncates the file.

The record key (:data:`RECORD_KEY_FIELDS`) holds every setting that changes
the number. ``alpha`` and ``seed`` joined it later: a stored record without
one of them (written by an older version; clean records carry no alpha)
matches any value of that field. The other fields compare exactly, a
missing one as its :data:`KEY_DEFAULTS` value or ``None`` (``subsample``: as
"all"; ``restarts``/``eot_iter``: 1; ``precision``, written by
every record since the precision policy, stays ``None``: an older record's
precision is unknown, so it answers no fp32 request). Numbers compare by value rounded to 4 decimals.

A record also says which weights it measured (``weights``, a digest of the
trained state dicts, and ``checkpoint_epoch``). :meth:`RunResults.add`
replaces a same-key record that measured other weights (a stale record of an
intermediate checkpoint), except the finished run's own records of its final
model, which only ``force`` replaces.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import UserError
from .utils.io import read_json, write_json
from .utils.locks import file_lock

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
RECORD_KEY_FIELDS = ("dataset", "split", "attack", "eps", "steps", "n_samples", "prompt", "subsample", "alpha", "seed",
                     "precision", "restarts", "eot_iter", "attack_options", "bpda", "image_list",
                     "test_time", "test_time_options", "test_time_threat")
# What a key field a record lacks means: records written before base-to-new are of all classes; before
# restarts, EOT, AutoAttack's versions, BPDA and image lists, every attack ran once, without EOT or BPDA,
# on the seeded subset (image_list None); before test-time methods, nothing adapted at test time ("").
KEY_DEFAULTS = {"subsample": "all", "restarts": 1, "eot_iter": 1, "attack_options": "", "bpda": False,
                "test_time": "", "test_time_options": "", "test_time_threat": ""}
# Key fields added after the first format: absent from a stored record, they match any value.
LATER_KEY_FIELDS = ("alpha", "seed")
REQUIRED_FIELDS = ("dataset", "split", "attack", "eps", "steps", "n_samples", "accuracy")


class FinishedRunError(UserError, RuntimeError):
    """Training into a folder whose results.json says the run finished."""


def _norm(value: Any) -> Any:
    """Numbers compare by value (4 == 4.0, 1.33333 == 1.3333) in record keys."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 4)
    return value


def record_key(record: Mapping[str, Any]) -> Tuple[Any, ...]:
    """The de-duplication key; a missing ``prompt`` is ``None`` (not "learned"), a missing ``subsample`` "all"."""
    return tuple(_norm(record.get(field, KEY_DEFAULTS.get(field))) for field in RECORD_KEY_FIELDS)


def key_matches(stored: Mapping[str, Any], query: Mapping[str, Any],
                fields: Sequence[str] = RECORD_KEY_FIELDS) -> bool:
    """Whether ``stored`` holds the number ``query`` asks for, on ``fields`` (see the module docstring for the rule).

    The one rule "this record answers this request": :meth:`RunResults.get` (evaluate.py's skip) compares every
    key field; the sweep (:mod:`ampt.sweep.requests`) the fields its entry fixes, defaults resolved.
    """
    for field in fields:
        if field in LATER_KEY_FIELDS and stored.get(field) is None:
            continue
        default = KEY_DEFAULTS.get(field)
        if _norm(stored.get(field, default)) != _norm(query.get(field, default)):
            return False
    return True


def same_key(stored: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """Whether ``stored`` and ``record`` have the same key (:func:`key_matches` on every key field)."""
    return key_matches(stored, record)


def same_weights(stored: Mapping[str, Any], provenance: Mapping[str, Any]) -> bool:
    """Whether ``stored`` measured the weights ``provenance`` describes (``weights``, else ``checkpoint_epoch``).

    A record without either field (older files, unknown provenance) counts as the same.
    """
    for field in ("weights", "checkpoint_epoch"):
        if stored.get(field) is not None and provenance.get(field) is not None:
            return stored[field] == provenance[field]
    return True


def is_final_record(run: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """A record of the finished run's final model (unknown provenance in a finished run counts as final)."""
    if not run.get("finished"):
        return False
    final = run.get("final_weights")
    return final is None or record.get("weights") is None or record["weights"] == final


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
            raise UserError(
                f"{self.path} is not valid JSON ({err}); fix or move it away, then re-run"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("records", []), list):
            raise UserError(f'{self.path} is not a results file (expected {{"run": {{...}}, "records": [...]}})')
        data.setdefault("run", {})
        data.setdefault("records", [])
        return data

    @property
    def lock_path(self) -> Path:
        return self.run_dir / f".{RESULTS_FILE}.lock"

    def _save(self, data: Dict[str, Any]) -> None:
        write_json(data, self.path)

    def locked(self):
        """The lock every read-modify-write of this file holds (other processes wait for it)."""
        return file_lock(self.lock_path)

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
        with self.locked():
            data = self.load()
            data["run"].update(meta)
            self._save(data)

    def mark_finished(self, finished: bool = True) -> None:
        self.set_run(finished=finished)

    def reset(self, backup: bool = True, stamp: str = "") -> Optional[Path]:
        """Start a fresh document (a forced re-run); the old file is kept as a dated backup."""
        with self.locked():
            if not self.path.exists():
                return None
            target = None
            if backup:
                target = self.path.with_name(f"{RESULTS_FILE}.bak-{stamp or backup_stamp()}")
                self.path.replace(target)
                logger.warning("Moved the previous %s to %s", self.path, target)
            else:
                self.path.unlink()
            return target

    # ------------------------------------------------------------------ records
    def has(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> bool:
        """Whether a record with the same key exists (pass a record, or its key fields)."""
        return self.get(record, **fields) is not None

    def get(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> Optional[Dict[str, Any]]:
        """The stored record with the same key, or None."""
        query = {**(record or {}), **fields}
        return next((r for r in self.records if same_key(r, query)), None)

    def add(self, record: Mapping[str, Any], force: bool = False) -> bool:
        """Append ``record``; returns True when it was written.

        A stored record with the same key is replaced when ``force``, or when
        it measured other weights and is not the finished run's record of
        its final model; otherwise it is kept.
        """
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ValueError(f"A results record needs {', '.join(missing)} (got keys {sorted(record)})")
        with self.locked():
            data = self.load()
            same = [i for i, r in enumerate(data["records"]) if same_key(r, record)]
            if same and not force:
                kept = data["records"][same[0]]
                if same_weights(kept, record) or is_final_record(data["run"], kept):
                    logger.info("results.json already holds %s; not replaced (use force)",
                                dict(zip(RECORD_KEY_FIELDS, record_key(record))))
                    return False
                logger.info("Replacing the stale record of other weights (checkpoint epoch %s) for %s",
                            kept.get("checkpoint_epoch"), dict(zip(RECORD_KEY_FIELDS, record_key(record))))
            for i in reversed(same):
                del data["records"][i]
            data["records"].append(dict(record))
            self._save(data)
        return True


    def add_audit(self, entry: Mapping[str, Any], replace: Any = None, force: bool = False) -> bool:
        """Append an audit entry (``python -m ampt.audit``) to the ``audit`` list; returns True when written.

        ``replace`` maps an entry to its identity: a stored entry of the same
        identity is kept (False) unless ``force``, which replaces it. Records are never touched.
        """
        with self.locked():
            data = self.load()
            audits = [a for a in data.get("audit", []) if isinstance(a, dict)]
            same = [a for a in audits if replace is not None and replace(a) == replace(entry)]
            if same and not force:
                return False
            data["audit"] = [a for a in audits if not any(a is b for b in same)] + [dict(entry)]
            self._save(data)
        return True


def backup_stamp() -> str:
    """The suffix of forced-run backups (``results.json.bak-<stamp>``, ``<model>.bak-<stamp>``).

    Seconds plus microseconds: two forced runs within a second never overwrite each other's backup.
    """
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"


def check_not_finished(run_dir: Union[str, Path], force: bool = False) -> None:
    """Refuse to train into ``run_dir`` when its results.json says the run finished."""
    results = RunResults(run_dir)
    if results.path.exists() and results.finished and not force:
        raise FinishedRunError(
            f"{results.path} says this run finished; it is not overwritten. "
            "Use another --output-dir, evaluate it with evaluate.py, or pass --force to train it again from scratch."
        )
