"""Portable few-shot cache: one JSON per (shots, seed), paths relative to the image folder.

CoOp pickles the sampled ``Datum`` objects with absolute paths, so a cache
breaks when the data folder moves. Here the file
``<cache_dir>/shot_{K}-seed_{SEED}.json`` holds ``[relpath, label,
classname]`` rows (the split-file format), joined to the current image
folder when read.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, List, Optional, Tuple

from ..errors import UserError
from ..utils.io import write_json
from .datum import Datum
from .splits import datums_to_rows, read_json_fast, rows_to_datums

logger = logging.getLogger(__name__)

DataList = List[Datum]
CACHE_VERSION = 1
VAL_SHOTS_MAX = 4  # CoOp: val gets min(num_shots, 4) items per class


def fewshot_cache_path(cache_dir: str, num_shots: int, seed: int) -> str:
    """``<cache_dir>/shot_{num_shots}-seed_{seed}.json``."""
    return os.path.join(cache_dir, f"shot_{num_shots}-seed_{seed}.json")


def load_or_create_fewshot(
    cache_dir: str,
    dataset_dir: str,
    train: DataList,
    val: Optional[DataList],
    num_shots: int,
    seed: int,
    sample_fn: Callable[..., DataList],
) -> Tuple[DataList, Optional[DataList]]:
    """The ``num_shots``-shot train and val subsets, read from the cache or sampled and cached.

    ``cache_dir`` holds the cache files (CoOp: ``<dataset>/split_fewshot``);
    ``dataset_dir`` is the folder cached paths are relative to (the image
    folder). ``sample_fn`` is the dataset's ``generate_fewshot_dataset``.
    Sampling follows CoOp's ``oxford_pets.py``: train with ``num_shots``,
    then val with ``min(num_shots, 4)``, both from Python's global
    ``random``; ``val=None`` (CoOp's ImageNet) samples train only.

    When ``seed >= 0`` the global ``random`` is re-seeded with it first:
    this reproduces CoOp's subset (CoOp seeds right before building the
    dataset and nothing draws in between when the split is read from a
    file), and makes the cached subset depend only on the split, the shots
    and the seed, whoever calls this. ``seed < 0`` (no seed) samples a
    fresh subset each time and caches nothing (CoOp would freeze one random
    subset as ``seed_-1``). A cache that cannot be written (read-only data
    folder) is logged and skipped.
    """
    path = fewshot_cache_path(cache_dir, num_shots, seed)
    if seed >= 0 and os.path.isfile(path):
        logger.info(f"Loading few-shot data from {path}")
        train, val = _read_cache(path, dataset_dir, num_shots, seed)
        warn_short_classes(train, num_shots, "train (cached)")
        return train, val
    if seed >= 0:
        random.seed(seed)
    train = sample_fn(train, num_shots=num_shots)
    if val is not None:
        val = sample_fn(val, num_shots=min(num_shots, VAL_SHOTS_MAX))
    if seed < 0:
        logger.warning("SEED is -1 (no seed): a fresh random few-shot subset is used and not cached")
        return train, val
    data = {
        "version": CACHE_VERSION,
        "num_shots": num_shots,
        "seed": seed,
        "train": datums_to_rows(train, dataset_dir),
        "val": None if val is None else datums_to_rows(val, dataset_dir),
    }
    try:
        write_json(data, path, indent=None)
        logger.info(f"Saved few-shot data to {path}")
    except OSError as err:
        logger.warning(f"Could not write the few-shot cache {path} ({err}); continuing without it")
    return train, val


def short_classes(data: DataList, num_shots: int) -> List[str]:
    """``"<classname> (<count>)"`` for each label of ``data`` with fewer than ``num_shots`` items."""
    counts: dict = {}
    for item in data:
        name, count = counts.get(item.label, (item.classname or str(item.label), 0))
        counts[item.label] = (name, count + 1)
    return [f"{name} ({count})" for _, (name, count) in sorted(counts.items()) if count < num_shots]


def warn_short_classes(data: DataList, num_shots: int, what: str) -> None:
    """Log the classes of ``data`` that have fewer items than the ``num_shots`` asked."""
    short = short_classes(data, num_shots)
    if short:
        logger.warning("%d-shot %s: %d class(es) have fewer images than the shots asked and keep all they "
                       "have: %s", num_shots, what, len(short), ", ".join(short))


def _read_cache(
    path: str, dataset_dir: str, num_shots: int, seed: int
) -> Tuple[DataList, Optional[DataList]]:
    try:
        data = read_json_fast(path)
    except ValueError as err:
        raise UserError(f"Few-shot cache {path} is not valid JSON ({err}); delete it to re-sample") from err
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise UserError(f"Few-shot cache {path} lacks 'train'/'val'; delete it to re-sample")
    if data.get("num_shots", num_shots) != num_shots or data.get("seed", seed) != seed:
        raise UserError(
            f"Few-shot cache {path} was written for {data.get('num_shots')} shots, seed "
            f"{data.get('seed')}; delete it to re-sample"
        )
    train = rows_to_datums(data["train"], dataset_dir, f"{path} [train]")
    val = None if data["val"] is None else rows_to_datums(data["val"], dataset_dir, f"{path} [val]")
    return train, val
