"""UCF101 middle frames: ``ucf101/UCF-101-midframes/<Action_Name>/<video>.jpg``.

CoOp uses one frame per video (the middle one). Action codes are CamelCase
(``ApplyEyeMakeup``); the frame folders and class names split them into
words joined by ``_`` (``Apply_Eye_Makeup``; trainers show ``_`` as a
space). Without ``split_zhou_UCF101.json`` the split is built from
``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist01.txt``,
``testlist01.txt``) and the train list is split 80/20 per class.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, Datum
from ampt.data.splits import split_trainval

ANNOTATION_DIR = "ucfTrainTestlist"


def split_camel_case(action: str) -> str:
    """``"ApplyEyeMakeup"`` -> ``"Apply_Eye_Makeup"`` (CoOp's folder and class names)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    """101 actions; CoOp's split: 7,639 train / 1,898 val / 3,783 test."""

    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    docs_section = "ucf101"

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        needed = f"(needed because the split file {self.split_path} is missing)"
        class_file = self.anno_file("classInd.txt", needed)
        cname2lab: Dict[str, int] = {}
        with open(class_file, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[0].isdigit():
                    raise ValueError(
                        f"{class_file}:{lineno}: expected '<class id> <Action>', got {line.strip()!r}"
                    )
                cname2lab[fields[1]] = int(fields[0]) - 1
        trainval = self.read_list(cname2lab, self.anno_file("trainlist01.txt", needed))
        test = self.read_list(cname2lab, self.anno_file("testlist01.txt", needed))
        train, val = split_trainval(trainval)
        return train, val, test

    def anno_file(self, name: str, needed: str) -> str:
        return self.require(os.path.join(self.dataset_root, ANNOTATION_DIR, name),
                            f"annotation file {ANNOTATION_DIR}/{name} {needed}")

    def read_list(self, cname2lab: Dict[str, int], path: str) -> List[Datum]:
        items = []
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                action, _, video = fields[0].partition("/")
                if action not in cname2lab or not video:
                    raise ValueError(
                        f"{path}:{lineno}: expected '<Action>/<video>.avi' with an action of "
                        f"classInd.txt, got {line.strip()!r}"
                    )
                folder = split_camel_case(action)
                impath = os.path.join(self.image_path, folder, os.path.splitext(video)[0] + ".jpg")
                items.append(Datum(impath, cname2lab[action], 0, folder))
        return items
