"""Digits: scikit-learn's bundled handwritten digits, the embedded default dataset.

Layout (written by ``ampt.demo.prepare_digits`` on first use, so a fresh
``DATASET.ROOT`` populates itself; no download)::

    digits/images/<classname>/<index>.png   32x32 RGB, classes "zero".."nine"
    digits/split_zhou_Digits.json           train 217 / val 80 / test 600
    digits/pretrain.json                    900 images for the demo's tiny CLIP, disjoint from the split
"""
from __future__ import annotations

import os
from typing import Any, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import read_split
from ampt.demo.digits_data import DATASET_DIR, IMAGE_DIR, SPLIT_FILE, prepare_digits


@DATASET_REGISTRY.register()
class Digits(CoOpDataset):
    dataset_dir = DATASET_DIR
    image_dir = IMAGE_DIR
    split_file = SPLIT_FILE
    docs_section = "digits"

    def __init__(self, cfg: Any) -> None:
        # The base class checks that the folders exist before build_split could run.
        prepare_digits(os.path.expanduser(cfg.DATASET.ROOT))
        super().__init__(cfg)

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        prepare_digits(os.path.dirname(self.dataset_root))
        return read_split(self.split_path, self.image_path)
