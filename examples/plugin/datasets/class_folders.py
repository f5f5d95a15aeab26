"""ClassFolders: your own images, one folder per class and split; no split file, no download.

Layout under ``DATASET.ROOT`` (``--root``)::

    class_folders/train/<classname>/*.png|jpg|jpeg
    class_folders/val/<classname>/...      (optional: without it, val is the test split)
    class_folders/test/<classname>/...

Class names are the folder names of ``train/`` (sorted; ``_`` reads as a
space in prompts); label ``k`` is the k-th. Few-shot (``DATASET.NUM_SHOTS``)
and base/new subsampling work as for CoOp's datasets (:class:`ampt.data.CoOpDataset`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.errors import UserFileNotFoundError

SUFFIXES = (".png", ".jpg", ".jpeg")


@DATASET_REGISTRY.register()
class ClassFolders(CoOpDataset):
    dataset_dir = "class_folders"
    image_dir = ""

    def require(self, path: str, what: str) -> str:
        if not os.path.exists(path):
            raise UserFileNotFoundError(f"ClassFolders: {what} not found at {path}: put the images in "
                                        "<root>/class_folders/<train|val|test>/<classname>/ (--root sets <root>)")
        return path

    def _split(self, split: str, classnames: List[str]) -> List[Datum]:
        base = Path(self.require(os.path.join(self.dataset_root, split), f"{split}/ folder"))
        return [Datum(str(p), label, classname=name) for label, name in enumerate(classnames)
                for p in sorted((base / name).glob("*")) if p.suffix.lower() in SUFFIXES]

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        train_dir = Path(self.require(os.path.join(self.dataset_root, "train"), "train/ folder"))
        classnames = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if not classnames:
            raise UserFileNotFoundError(f"ClassFolders: no class folder in {train_dir}: add one folder of images "
                                        "per class")
        train, test = self._split("train", classnames), self._split("test", classnames)
        has_val = os.path.isdir(os.path.join(self.dataset_root, "val"))
        return train, self._split("val", classnames) if has_val else test, test
