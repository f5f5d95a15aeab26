"""``CoOpDataset``: the template every CoOp-style dataset file subclasses.

A dataset file sets where its data live (``dataset_dir``, ``image_dir``,
``split_file``) and implements :meth:`CoOpDataset.build_split` (its layout
and class-name rules). Everything CoOp's dataset files repeat is here:
folder checks with actionable errors, reading or writing the split JSON,
the few-shot cache, base/new class subsampling and label checks.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Tuple

from .dataset_base import DatasetBase
from .datum import Datum
from .errors import dataset_not_found
from .fewshot import load_or_create_fewshot
from .splits import read_split, save_split, subsample_classes

logger = logging.getLogger(__name__)

DataList = List[Datum]
FEWSHOT_DIR = "split_fewshot"


class CoOpDataset(DatasetBase):
    """Base class of the CoOp datasets; subclasses set the class attributes below."""

    dataset_dir: str = ""  # folder under DATASET.ROOT, e.g. "oxford_pets"
    image_dir: str = "images"  # relative to dataset_dir ("" = dataset_dir itself)
    split_file: Optional[str] = None  # e.g. "split_zhou_OxfordPets.json"; None: build_split every time
    docs_section: str = ""  # anchor in DATASETS.md, e.g. "oxfordpets"
    test_only: bool = False  # train_x = test = the test data, val None; no few-shot (ImageNet variants)
    val_is_test: bool = False  # ImageNet (CoOp): no val split; val = test, few-shot samples train only

    def __init__(self, cfg: Any) -> None:
        root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_root = self.require(os.path.join(root, self.dataset_dir), "dataset folder")
        self.image_path = self.require(
            os.path.join(self.dataset_root, self.image_dir) if self.image_dir else self.dataset_root,
            "image folder",
        )
        self.split_path = os.path.join(self.dataset_root, self.split_file) if self.split_file else None
        self.split_fewshot_dir = os.path.join(self.dataset_root, FEWSHOT_DIR)

        train, val, test = self._load_split()
        if self.test_only:
            train, val = test, None
        elif self.val_is_test:
            val = None
        if cfg.DATASET.NUM_SHOTS >= 1 and not self.test_only:
            train, val = load_or_create_fewshot(
                self.split_fewshot_dir, self.image_path, train, val,
                cfg.DATASET.NUM_SHOTS, cfg.SEED, self.generate_fewshot_dataset,
            )
        train, val, test = self._subsample(train, val, test, cfg.DATASET.SUBSAMPLE_CLASSES)
        if self.val_is_test:
            val = test
        super().__init__(train_x=train, val=val, test=test)

    def build_split(self) -> Tuple[DataList, DataList, DataList]:
        """Build ``(train, val, test)`` from the dataset's own files (layout, annotations).

        Called when ``split_file`` is None, or when the split file is missing
        (the result is then written to it). ``val`` may be ``[]`` when
        ``val_is_test`` or ``test_only`` is set (it is not used). Use
        :meth:`require` for every file or folder read, so a missing one
        names the dataset and its ``DATASETS.md`` section.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_split()")

    def require(self, path: str, what: str) -> str:
        """Return ``path`` if it exists, else raise :class:`DatasetNotFoundError` naming ``what``."""
        if not os.path.exists(path):
            raise dataset_not_found(type(self).__name__, what, path, self.docs_section)
        return path

    @staticmethod
    def _subsample(train: DataList, val: Optional[DataList], test: DataList,
                   subsample: str) -> Tuple[DataList, Optional[DataList], DataList]:
        if val is None:
            train, test = subsample_classes(train, test, subsample=subsample)
            return train, None, test
        train, val, test = subsample_classes(train, val, test, subsample=subsample)
        return train, val, test

    def _load_split(self) -> Tuple[DataList, DataList, DataList]:
        if self.split_path is not None and os.path.isfile(self.split_path):
            return read_split(self.split_path, self.image_path)
        train, val, test = self.build_split()
        if self.split_path is not None:
            logger.info(f"{type(self).__name__}: split file {self.split_path} not found; built it")
            try:
                save_split(train, val, test, self.split_path, self.image_path)
            except OSError as err:
                logger.warning(f"Could not write the split file {self.split_path} ({err})")
        return train, val, test
