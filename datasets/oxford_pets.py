"""Oxford-IIIT Pets: ``oxford_pets/images/`` and ``annotations/{trainval,test}.txt``.

Each annotation line is ``<image> <class id> <species> <breed id>`` with a
1-based class id; the class name is the image name without its trailing
``_<number>``, lower-cased (``Abyssinian_12`` -> ``abyssinian``). Without
``split_zhou_OxfordPets.json`` the official trainval list is split 80/20 per
class into train/val and the official test list is the test set.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    """37 cat and dog breeds; CoOp's split: 2,944 train / 736 val / 3,669 test."""

    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    docs_section = "oxfordpets"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        trainval = self.read_annotations("trainval.txt")
        test = self.read_annotations("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, name: str) -> List[Datum]:
        """Datums of ``annotations/<name>``; a malformed line is an error naming file and line."""
        path = self.require(
            os.path.join(self.dataset_root, "annotations", name),
            f"annotation file annotations/{name} "
            f"(needed because the split file {self.split_path} is missing)",
        )
        items = []
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) != 4 or not fields[1].isdigit() or "_" not in fields[0]:
                    raise ValueError(
                        f"{path}:{lineno}: expected '<Breed>_<n> <class id> <species> <breed id>', "
                        f"got {line!r}"
                    )
                imname, class_id = fields[0], int(fields[1])
                if class_id < 1:
                    raise ValueError(f"{path}:{lineno}: class ids start at 1, got {class_id}")
                breed = imname.rsplit("_", 1)[0].lower()
                impath = os.path.join(self.image_path, imname + ".jpg")
                items.append(Datum(impath, class_id - 1, 0, breed))
        return items
