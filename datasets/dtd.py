"""Describable Textures (DTD): ``dtd/images/<class>/``; the folder name is the class name.

Without ``split_zhou_DescribableTextures.json`` each class is split 50/20/30
into train/val/test (CoOp does not use DTD's ``labels/train*.txt`` folds).
"""
from __future__ import annotations

from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    """47 texture classes; CoOp's split: 2,820 train / 1,128 val / 1,692 test."""

    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    docs_section = "describabletextures"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_path)
