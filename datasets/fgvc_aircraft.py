"""FGVC-Aircraft (2013b), the ``data/`` folder renamed ``fgvc_aircraft/``.

Classes are the 100 variants of ``variants.txt`` (label = line position);
the official ``images_variant_{train,val,test}.txt`` lists (``<image id>
<variant>``, variants may contain spaces) are the split, so there is no
split JSON.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    """100 aircraft variants; official split: 3,334 train / 3,333 val / 3,333 test."""

    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    split_file = None
    docs_section = "fgvcaircraft"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        variants_file = self.require(os.path.join(self.dataset_root, "variants.txt"),
                                     "class list variants.txt")
        with open(variants_file, "r", encoding="utf-8") as f:
            classnames = [line.strip() for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train, val, test = (
            self.read_list(cname2lab, f"images_variant_{split}.txt") for split in ("train", "val", "test")
        )
        return train, val, test

    def read_list(self, cname2lab: Dict[str, int], name: str) -> List[Datum]:
        path = self.require(os.path.join(self.dataset_root, name), f"split list {name}")
        items = []
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                imname, _, classname = line.partition(" ")
                if classname not in cname2lab:
                    raise ValueError(
                        f"{path}:{lineno}: variant {classname!r} is not in variants.txt "
                        f"(expected '<image id> <variant>', got {line!r})"
                    )
                impath = os.path.join(self.image_path, imname + ".jpg")
                items.append(Datum(impath, cname2lab[classname], 0, classname))
        return items
