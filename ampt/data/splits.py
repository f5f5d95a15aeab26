"""Split logic shared by every dataset (CoOp's algorithms, written once).

Split files use CoOp's format, so existing ``split_zhou_*.json`` files load
unchanged: ``{"train": [[relpath, label, classname], ...], "val": ...,
"test": ...}`` with paths relative to the dataset's image folder. Nothing
here stats an image; shuffling uses Python's global ``random`` as CoOp does,
so a seeded run reproduces CoOp's splits.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import random
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..utils.io import listdir_nohidden, read_json, write_json
from .datum import Datum
from ..errors import UserError

logger = logging.getLogger(__name__)

DataList = List[Datum]
SPLIT_NAMES = ("train", "val", "test")
SUBSAMPLE_CHOICES = ("all", "base", "new")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building large indexes.

    Creating a million objects triggers hundreds of collections that scan
    every live object; pausing them makes an ImageNet-sized index several
    times faster to build. No reference cycles are created meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_json_fast(path: str) -> Any:
    """:func:`read_json` with the garbage collector paused."""
    with gc_paused():
        return read_json(path)


def to_relative(impath: str, base_dir: str) -> str:
    """``impath`` relative to ``base_dir`` (a plain prefix strip when possible, which is fast)."""
    prefix = base_dir.rstrip("/\\") + os.sep
    if impath.startswith(prefix):
        return impath[len(prefix):]
    return os.path.relpath(impath, base_dir)


def datums_to_rows(items: Iterable[Datum], base_dir: str) -> List[list]:
    """``[[relpath, label, classname], ...]`` for a JSON file."""
    prefix = base_dir.rstrip("/\\") + os.sep
    n = len(prefix)
    with gc_paused():
        return [
            [i.impath[n:] if i.impath.startswith(prefix) else os.path.relpath(i.impath, base_dir),
             int(i.label), i.classname]
            for i in items
        ]


def rows_to_datums(rows: Iterable[Sequence], base_dir: str, where: str = "") -> DataList:
    """Inverse of :func:`datums_to_rows`: join each path to ``base_dir``; no file is checked.

    Labels are taken as stored (JSON integers); :class:`DatasetBase` rejects
    non-integer ones. Stored paths are relative (CoOp's files, and what
    :func:`datums_to_rows` writes); they are joined by concatenation, as
    ``os.path.join`` costs about a second per million rows.
    """
    prefix = base_dir.rstrip("/\\") + os.sep
    try:
        with gc_paused():
            return [
                Datum(prefix + impath, label, 0, classname) for impath, label, classname in rows
            ]
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{where or 'split file'}: each entry must be [relative_path, label, classname] ({err})"
        ) from err


def read_split(filepath: str, image_dir: str) -> Tuple[DataList, DataList, DataList]:
    """Read a CoOp split JSON; image paths are joined to ``image_dir``."""
    split = read_json_fast(filepath)
    missing = [k for k in SPLIT_NAMES if k not in split]
    if missing:
        raise UserError(f"Split file {filepath} lacks the key(s) {missing}; expected {list(SPLIT_NAMES)}")
    logger.info(f"Reading split from {filepath}")
    train, val, test = (rows_to_datums(split[k], image_dir, f"{filepath} [{k}]") for k in SPLIT_NAMES)
    return train, val, test


def save_split(train: DataList, val: Optional[DataList], test: DataList, filepath: str, image_dir: str) -> None:
    """Write a CoOp split JSON with paths relative to ``image_dir`` (atomic write); ``val=None`` is ``[]``."""
    split = {k: datums_to_rows(v or [], image_dir) for k, v in zip(SPLIT_NAMES, (train, val, test))}
    write_json(split, filepath, indent=None)
    logger.info(f"Saved split to {filepath}")


def split_trainval(trainval: DataList, p_val: float = 0.2) -> Tuple[DataList, DataList]:
    """Split a labelled list into train and val per class (CoOp's ``OxfordPets.split_trainval``).

    Per label (in order of first appearance) the item indices are shuffled
    with ``random.shuffle``; the first ``round(n * p_val)`` go to val.
    """
    logger.info(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    tracker: Dict[int, List[int]] = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        if n_val == 0:
            raise UserError(
                f"split_trainval: class {label} ({trainval[idxs[0]].classname!r}) has {len(idxs)} "
                f"image(s), too few for a {p_val:.0%} validation share"
            )
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def read_and_split_data(
    image_dir: str,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_cnames: Optional[Dict[str, str]] = None,
) -> Tuple[DataList, DataList, DataList]:
    """Split a ``image_dir/<class>/<image>`` tree per class (CoOp's ``DTD.read_and_split_data``).

    Class folders are sorted (label = position); per class the image list is
    shuffled and cut into ``round(n * p_trn)`` train, ``round(n * p_val)``
    val and the rest test. Images are listed in sorted order before the
    shuffle (CoOp uses ``os.listdir`` order, which differs between file
    systems), so a seed gives the same split on every machine.
    ``new_cnames`` maps folder names to class names.
    """
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in set(ignored))
    if not categories:
        raise UserError(f"No class folders found in {image_dir}")
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in listdir_nohidden(category_dir, sort=True)]
        if not images:
            raise UserError(f"Class folder {category_dir} is empty; every class needs images")
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if n_train <= 0 or n_val <= 0 or n_test <= 0:
            raise UserError(
                f"Class folder {category_dir} has {n_total} image(s): too few for a "
                f"{p_trn:.0%}/{p_val:.0%}/rest train/val/test split (each part needs >= 1)"
            )
        cname = new_cnames.get(category, category) if new_cnames else category
        train.extend(Datum(im, label, 0, cname) for im in images[:n_train])
        val.extend(Datum(im, label, 0, cname) for im in images[n_train:n_train + n_val])
        test.extend(Datum(im, label, 0, cname) for im in images[n_train + n_val:])
    return train, val, test


def subsample_classes(*splits: DataList, subsample: str = "all") -> List[DataList]:
    """Keep the base (first half) or new (second half) classes and relabel from 0 (CoOp).

    Labels are those of the first split, sorted; base is the first
    ``ceil(n / 2)``. ``"all"`` returns the splits unchanged.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise UserError(
            f'DATASET.SUBSAMPLE_CLASSES is "{subsample}"; valid values: {", ".join(SUBSAMPLE_CHOICES)}'
        )
    if subsample == "all":
        return list(splits)
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    logger.info(f"Subsampling {subsample} classes: {len(selected)} of {len(labels)}")
    output = []
    for split in splits:
        output.append(
            [Datum(i.impath, relabeler[i.label], i.domain, i.classname) for i in split if i.label in relabeler]
        )
    return output
