"""ImageNetV2 (matched frequency): ``imagenetv2/imagenetv2-matched-frequency-format-val/<i>/``.

Test only. Folder ``<i>`` holds the images of the i-th class of
``imagenetv2/classnames.txt`` (a copy of ImageNet's), so labels match
ImageNet's.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, DatasetLabelError, Datum

from .imagenet import list_files, read_classnames


@DATASET_REGISTRY.register()
class ImageNetV2(CoOpDataset):
    """1000 classes, 10,000 test images."""

    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    split_file = None
    docs_section = "imagenetv2"
    test_only = True

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        classnames_file = self.require(os.path.join(self.dataset_root, "classnames.txt"),
                                       "class-name file classnames.txt (copy it from imagenet/)")
        classnames = list(read_classnames(classnames_file).values())
        test: List[Datum] = []
        for label, cname in enumerate(classnames):
            folder = self.require(os.path.join(self.image_path, str(label)), f"class folder {label}")
            files = list_files(folder)
            if not files:
                raise DatasetLabelError(f"ImageNetV2: class folder {folder} is empty")
            test.extend(Datum(os.path.join(folder, name), label, 0, cname) for name in files)
        return [], [], test
