"""Write scikit-learn's bundled digits as a dataset in CoOp's layout.

scikit-learn ships 1797 real 8x8 handwritten digits (UCI optdigits, values
0-16). ``prepare_digits(root)`` writes them once as 32x32 RGB PNGs (bilinear
upsampling, white ink on black) under ``<root>/digits/``::

    digits/images/<classname>/<index>.png
    digits/split_zhou_Digits.json   {"train": [[relpath, label, classname], ...], "val", "test"}
    digits/pretrain.json            {"pretrain": [[relpath, label, classname], ...]}

The split is per class and deterministic: 90 images of each class go to the
tiny CLIP's pretraining set, 60 to ``test``, 8 to ``val`` and the rest (16 to
25) to ``train``. The pretraining set shares no image with train/val/test.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
from PIL import Image

from ..utils.io import read_json, write_json

logger = logging.getLogger(__name__)

CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DATASET_DIR = "digits"
IMAGE_DIR = "images"
SPLIT_FILE = "split_zhou_Digits.json"
PRETRAIN_FILE = "pretrain.json"
IMAGE_SIZE = 32
SPLIT_SEED = 0
PER_CLASS = {"pretrain": 90, "test": 60, "val": 8}  # the remainder of each class is "train"

Entry = List[Union[str, int]]  # [relative path, label, classname]


def _relpath(index: int, label: int) -> str:
    return f"{CLASSNAMES[label]}/{index:04d}.png"


def _assign(targets: np.ndarray) -> Dict[str, List[Entry]]:
    """Per-class deterministic assignment of every image index to one part."""
    rng = np.random.RandomState(SPLIT_SEED)
    parts: Dict[str, List[Entry]] = {"pretrain": [], "train": [], "val": [], "test": []}
    for label in range(len(CLASSNAMES)):
        indices = rng.permutation(np.flatnonzero(targets == label))
        start = 0
        for part, count in PER_CLASS.items():
            chosen = indices[start:start + count]
            parts[part] += [[_relpath(int(i), label), label, CLASSNAMES[label]] for i in chosen]
            start += count
        parts["train"] += [[_relpath(int(i), label), label, CLASSNAMES[label]] for i in indices[start:]]
    for entries in parts.values():
        entries.sort(key=lambda e: (e[1], e[0]))
    return parts


def _is_complete(dataset_dir: Path) -> bool:
    split_path = dataset_dir / SPLIT_FILE
    pretrain_path = dataset_dir / PRETRAIN_FILE
    if not (split_path.is_file() and pretrain_path.is_file()):
        return False
    entries = [e for part in read_json(split_path).values() for e in part]
    entries += read_json(pretrain_path)["pretrain"]
    image_dir = dataset_dir / IMAGE_DIR
    return all((image_dir / e[0]).is_file() for e in entries)


def _to_image(pixels: np.ndarray) -> Image.Image:
    """8x8 values in [0, 16] -> 32x32 RGB, bilinear."""
    gray = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8))
    return gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB")


def prepare_digits(root: Union[str, Path]) -> Path:
    """Write the Digits dataset under ``<root>/digits`` unless it is already complete.

    Returns the dataset folder. The JSON files are written last, so an
    interrupted run is detected and redone on the next call.
    """
    dataset_dir = Path(root).expanduser() / DATASET_DIR
    if _is_complete(dataset_dir):
        return dataset_dir
    from sklearn.datasets import load_digits  # imported here: it takes seconds

    digits = load_digits()
    parts = _assign(digits.target)
    image_dir = dataset_dir / IMAGE_DIR
    for name in CLASSNAMES:
        (image_dir / name).mkdir(parents=True, exist_ok=True)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        _to_image(pixels).save(image_dir / _relpath(index, int(label)))
    write_json({"pretrain": parts["pretrain"]}, dataset_dir / PRETRAIN_FILE)
    write_json({k: parts[k] for k in ("train", "val", "test")}, dataset_dir / SPLIT_FILE)
    logger.info(
        "Wrote %d digits images to %s (pretrain %d, train %d, val %d, test %d)",
        len(digits.target), image_dir, *(len(parts[k]) for k in ("pretrain", "train", "val", "test")),
    )
    return dataset_dir


def read_pretrain_entries(dataset_dir: Union[str, Path]) -> List[Entry]:
    """The pretraining part written by :func:`prepare_digits`."""
    return read_json(Path(dataset_dir) / PRETRAIN_FILE)["pretrain"]
