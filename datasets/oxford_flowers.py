"""Oxford Flowers-102: ``oxford_flowers/jpg/image_NNNNN.jpg``.

Labels are in ``imagelabels.mat`` (``labels``: 1-based, one per image in
file-number order); names in ``cat_to_name.json`` (``{"1": "pink primrose",
...}``). Without ``split_zhou_OxfordFlowers.json`` each class is split
50/20/30 into train/val/test (CoOp does not use the official ``setid.mat``).
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Dict, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.utils.io import read_json


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    """102 flower species; CoOp's split: 4,093 train / 1,633 val / 2,463 test."""

    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    docs_section = "oxfordflowers"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        needed = f"(needed because the split file {self.split_path} is missing)"
        label_file = self.require(os.path.join(self.dataset_root, "imagelabels.mat"),
                                  f"label file imagelabels.mat {needed}")
        names_file = self.require(os.path.join(self.dataset_root, "cat_to_name.json"),
                                  f"class-name file cat_to_name.json {needed}")
        from scipy.io import loadmat  # here: only building the split reads .mat files (0.2 s of imports)

        mat = loadmat(label_file)
        if "labels" not in mat:
            raise ValueError(f"{label_file} has no 'labels' variable")
        lab2cname: Dict[str, str] = read_json(names_file)
        tracker: Dict[int, List[str]] = defaultdict(list)
        for i, label in enumerate(mat["labels"][0]):
            tracker[int(label)].append(os.path.join(self.image_path, f"image_{i + 1:05d}.jpg"))
        missing = sorted(label for label in tracker if str(label) not in lab2cname)
        if missing:
            raise ValueError(f"{names_file} has no name for label(s) {missing[:10]} used in {label_file}")

        train, val, test = [], [], []
        for label, impaths in tracker.items():  # CoOp: labels in order of first appearance
            random.shuffle(impaths)
            n_train, n_val = round(len(impaths) * 0.5), round(len(impaths) * 0.2)
            if n_train <= 0 or n_val <= 0 or len(impaths) - n_train - n_val <= 0:
                raise ValueError(
                    f"{label_file}: label {label} has {len(impaths)} image(s), too few for a 50/20/30 split"
                )
            cname = lab2cname[str(label)]
            train.extend(Datum(p, label - 1, 0, cname) for p in impaths[:n_train])
            val.extend(Datum(p, label - 1, 0, cname) for p in impaths[n_train:n_train + n_val])
            test.extend(Datum(p, label - 1, 0, cname) for p in impaths[n_train + n_val:])
        return train, val, test
