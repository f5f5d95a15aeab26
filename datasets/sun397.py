"""SUN397: ``sun397/SUN397/<letter>/<class path>/`` with the partition files.

``ClassName.txt`` lists class paths (``/a/apartment_building/outdoor``;
label = line position). The class name is the path without its letter,
reversed and joined with spaces (``outdoor apartment_building``), as CoOp
does. Without ``split_zhou_SUN397.json`` the first partition
(``Training_01.txt``, ``Testing_01.txt``) is used and its train list is
split 80/20 per class into train/val.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import split_trainval


def readable_name(class_path: str) -> str:
    """``"a/apartment_building/outdoor"`` -> ``"outdoor apartment_building"``."""
    return " ".join(class_path.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    """397 scene classes; CoOp's split: 15,880 train / 3,970 val / 19,850 test."""

    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    docs_section = "sun397"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        needed = f"(needed because the split file {self.split_path} is missing)"
        class_file = self.require(os.path.join(self.dataset_root, "ClassName.txt"),
                                  f"class list ClassName.txt {needed}")
        with open(class_file, "r", encoding="utf-8") as f:
            class_paths = [line.strip().lstrip("/") for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(class_paths)}
        trainval = self.read_list(cname2lab, "Training_01.txt", needed)
        test = self.read_list(cname2lab, "Testing_01.txt", needed)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, cname2lab: Dict[str, int], name: str, needed: str) -> List[Datum]:
        path = self.require(os.path.join(self.dataset_root, name), f"partition file {name} {needed}")
        items = []
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                imname = line.strip().lstrip("/")
                if not imname:
                    continue
                class_path = os.path.dirname(imname)
                if class_path not in cname2lab:
                    raise ValueError(
                        f"{path}:{lineno}: class folder {class_path!r} of {imname!r} is not in ClassName.txt"
                    )
                impath = os.path.join(self.image_path, imname)
                items.append(Datum(impath, cname2lab[class_path], 0, readable_name(class_path)))
        return items
