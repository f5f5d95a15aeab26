"""Caltech101: ``caltech-101/101_ObjectCategories/<class>/``, CoOp's 100 classes.

CoOp drops the ``BACKGROUND_Google`` clutter class and ``Faces_easy`` (a
cropped duplicate of ``Faces``) and renames four folders to singular,
lower-case names. Without ``split_zhou_Caltech101.json`` each class is split
50/20/30 into train/val/test.
"""
from __future__ import annotations

from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import read_and_split_data

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    """100 object classes; CoOp's split: 4,128 train / 1,649 val / 2,465 test."""

    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    docs_section = "caltech101"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_path, ignored=IGNORED, new_cnames=NEW_CNAMES)
