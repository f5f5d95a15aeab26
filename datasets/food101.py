"""Food-101: ``food-101/images/<class>/``; the folder name is the class name.

Without ``split_zhou_Food101.json`` each class is split 50/20/30 into
train/val/test (CoOp ignores the official ``meta/train.txt``).
"""
from __future__ import annotations

from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import read_and_split_data


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    """101 dishes; CoOp's split: 50,500 train / 20,200 val / 30,300 test."""

    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    docs_section = "food101"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_path)
