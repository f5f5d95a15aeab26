"""Stanford Cars: ``stanford_cars/{cars_train,cars_test}/`` plus the devkit ``.mat`` files.

Labels come from ``devkit/cars_train_annos.mat`` and
``cars_test_annos_withlabels.mat`` (1-based ``class``, ``fname``); names
from ``devkit/cars_meta.mat``, with the trailing year moved to the front
as CoOp does (``AM General Hummer SUV 2000`` -> ``2000 AM General Hummer
SUV``). Split-file paths are relative to ``stanford_cars/`` itself
(``cars_train/00001.jpg``). Without ``split_zhou_StanfordCars.json`` the
official train list is split 80/20 per class into train/val.
"""
from __future__ import annotations

import os
from typing import Any, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import split_trainval


def year_first(name: str) -> str:
    """``"Acura RL Sedan 2012"`` -> ``"2012 Acura RL Sedan"`` (CoOp's class names)."""
    words = name.split(" ")
    return " ".join([words[-1]] + words[:-1])


def load_mat_field(path: str, key: str) -> Any:
    """``loadmat(path)[key][0]``; a file without ``key`` is an error naming both."""
    from scipy.io import loadmat  # here: only building the split reads .mat files (0.2 s of imports)

    data = loadmat(path)
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path} has no '{key}' variable (found {found})")
    return data[key][0]


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    """196 car models; CoOp's split: 6,509 train / 1,635 val / 8,041 test."""

    dataset_dir = "stanford_cars"
    image_dir = ""  # split-file paths start with cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    docs_section = "stanfordcars"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        needed = f"(needed because the split file {self.split_path} is missing)"
        meta = self.require(os.path.join(self.dataset_root, "devkit", "cars_meta.mat"),
                            f"devkit class list devkit/cars_meta.mat {needed}")
        train_annos = self.require(os.path.join(self.dataset_root, "devkit", "cars_train_annos.mat"),
                                   f"train annotations devkit/cars_train_annos.mat {needed}")
        test_annos = self.require(os.path.join(self.dataset_root, "cars_test_annos_withlabels.mat"),
                                  f"test annotations cars_test_annos_withlabels.mat {needed}")
        classnames = [year_first(str(c[0])) for c in load_mat_field(meta, "class_names")]
        trainval = self.read_annotations("cars_train", train_annos, classnames)
        test = self.read_annotations("cars_test", test_annos, classnames)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, folder: str, anno_file: str, classnames: List[str]) -> List[Datum]:
        needed = f"(needed because the split file {self.split_path} is missing)"
        image_dir = self.require(os.path.join(self.dataset_root, folder), f"image folder {folder} {needed}")
        items = []
        for i, record in enumerate(load_mat_field(anno_file, "annotations")):
            fname, class_id = str(record["fname"][0]), int(record["class"][0, 0])
            if not 1 <= class_id <= len(classnames):
                raise ValueError(
                    f"{anno_file}: annotation {i} ({fname}) has class {class_id}, outside the "
                    f"{len(classnames)} classes of devkit/cars_meta.mat"
                )
            items.append(Datum(os.path.join(image_dir, fname), class_id - 1, 0, classnames[class_id - 1]))
        return items
