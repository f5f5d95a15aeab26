"""ImageNet (ILSVRC-2012), CoOp's layout: ``imagenet/images/{train,val}/<wnid>/``.

Class names come from ``imagenet/classnames.txt`` (``<wnid> <name>`` per
line, CLIP's names). There is no split file: the val images are the test
set (and the val set, as in CoOp). Listing 1.33M files takes minutes on a
network file system, so the listing is cached in
``imagenet/ampt_image_index.json``: file names per class folder with the
folder's modification time, relative to ``images/``, so the cache stays
valid when the data folder moves. A class folder whose modification time
changed (files added or removed) is listed again; no image is ever stat'ed.
"""
from __future__ import annotations

import gc
import json
import logging
import os
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

from ampt.api import DATASET_REGISTRY
from ampt.data import CoOpDataset, DatasetLabelError, DatasetNotFoundError, Datum
from ampt.utils.io import write_json

logger = logging.getLogger(__name__)

INDEX_FILE = "ampt_image_index.json"
INDEX_VERSION = 1
VAL_FIX = (
    "The official ILSVRC2012_img_val.tar extracts all 50,000 images into one folder; "
    "sort them into one folder per class with the val re-arrangement script "
    "(valprep.sh, see DATASETS.md#imagenet)"
)

# {class folder: [modification time in ns, sorted file names]}
FolderIndex = Dict[str, list]


def read_classnames(path: str) -> Dict[str, str]:
    """``{folder: class name}`` from a ``<folder> <class name>`` text file, in file order."""
    classnames: Dict[str, str] = {}
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            folder, _, name = line.partition(" ")
            if not name.strip():
                raise ValueError(f"{path}:{lineno}: expected '<folder> <class name>', got {line!r}")
            if folder in classnames:
                raise ValueError(f"{path}:{lineno}: folder {folder!r} is listed twice")
            classnames[folder] = name.strip()
    if not classnames:
        raise ValueError(f"{path} lists no classes; expected '<folder> <class name>' per line")
    return classnames


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of acyclic objects are created.

    Each collection would traverse every object built so far; for 1.33M
    ``Datum`` objects that is most of the build time (about 5x slower).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_index(path: str, train: FolderIndex, val: FolderIndex) -> None:
    """Write the ImageNet index: ``{wnid: [folder mtime_ns, file names]}`` per split."""
    write_json({"version": INDEX_VERSION, "train": train, "val": val}, path, indent=None)


def list_folder(path: str) -> Tuple[Dict[str, int], List[str]]:
    """One ``os.scandir``: ``({sub-folder: mtime_ns}, [other entries])``, hidden names skipped."""
    folders: Dict[str, int] = {}
    others: List[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders[entry.name] = entry.stat().st_mtime_ns
            else:
                others.append(entry.name)
    return folders, others


def list_files(path: str) -> List[str]:
    """Sorted non-hidden entry names of ``path`` (one ``os.scandir``, no stat)."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if not e.name.startswith("."))


def class_folder_items(image_dir: str, folders: List[str], classnames: Dict[str, str],
                       classnames_file: str) -> List[Datum]:
    """Datums for ``image_dir/<folder>/*`` with label = position in ``folders``.

    Used by the test-only ImageNet variants; an empty folder or a folder
    missing from ``classnames_file`` is an error naming it.
    """
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise DatasetLabelError(
            f"{len(unknown)} class folder(s) of {image_dir} are not listed in {classnames_file}: "
            f"{unknown[:5]}; copy imagenet/classnames.txt there (see DATASETS.md)"
        )
    items: List[Datum] = []
    for label, folder in enumerate(folders):
        folder_path = os.path.join(image_dir, folder)
        files = list_files(folder_path)
        if not files:
            raise DatasetLabelError(f"Class folder {folder_path} is empty; every class needs images")
        prefix = folder_path + os.sep
        cname = classnames[folder]
        items.extend([Datum(prefix + name, label, 0, cname) for name in files])
    return items


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    """ImageNet-1k: 1,281,167 train images, the 50,000 val images as test set; 1000 classes."""

    dataset_dir = "imagenet"
    image_dir = "images"
    split_file = None
    docs_section = "imagenet"
    val_is_test = True

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        with gc_paused():
            return self._build_split()

    def _build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        classnames_file = self.require(os.path.join(self.dataset_root, "classnames.txt"),
                                       "class-name file classnames.txt")
        classnames = read_classnames(classnames_file)
        train_dir = self.require(os.path.join(self.image_path, "train"), "training image folder")
        val_dir = self.require(os.path.join(self.image_path, "val"), "validation image folder")
        cached = self._load_index()
        train_index, train_changed = self._index_split("train", train_dir, cached.get("train", {}))
        val_index, val_changed = self._index_split("val", val_dir, cached.get("val", {}))
        if train_changed or val_changed:
            self._save_index(train_index, val_index)

        classes = sorted(train_index)
        unknown = [wnid for wnid in classes if wnid not in classnames]
        if unknown:
            raise DatasetLabelError(
                f"ImageNet: {len(unknown)} class folder(s) of {train_dir} are not in "
                f"{classnames_file}: {unknown[:5]}"
            )
        extra = sorted(set(val_index) - set(train_index))
        if extra:
            raise DatasetLabelError(
                f"ImageNet: {len(extra)} class folder(s) of {val_dir} have no training folder in "
                f"{train_dir}: {extra[:5]}"
            )
        label_of = {wnid: label for label, wnid in enumerate(classes)}
        train = self._items(train_dir, train_index, label_of, classnames)
        test = self._items(val_dir, val_index, label_of, classnames)
        return train, [], test

    # ------------------------------------------------------------------ index cache
    @property
    def index_path(self) -> str:
        return os.path.join(self.dataset_root, INDEX_FILE)

    def _load_index(self) -> Dict[str, FolderIndex]:
        if not os.path.isfile(self.index_path):
            return {}
        try:
            with open(self.index_path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as err:
            logger.warning(f"ImageNet: ignoring the unreadable index {self.index_path} ({err})")
            return {}
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            logger.warning(f"ImageNet: ignoring the index {self.index_path} (other version)")
            return {}
        return {"train": data.get("train") or {}, "val": data.get("val") or {}}

    def _index_split(self, split: str, split_dir: str, cached: FolderIndex) -> Tuple[FolderIndex, bool]:
        """``({wnid: [mtime_ns, files]}, changed)`` of ``split_dir``; lists only changed folders."""
        folders, loose = list_folder(split_dir)
        if loose:
            self._explain_loose_files(split, split_dir, folders, loose)
        if not folders:
            raise DatasetNotFoundError(
                f"ImageNet: no class folders in {split_dir}; expected images/{split}/<wnid>/ "
                "(see DATASETS.md#imagenet)"
            )
        fresh: FolderIndex = {}
        changed = False
        for wnid, mtime in folders.items():
            entry = cached.get(wnid)
            if entry is not None and entry[0] == mtime:
                fresh[wnid] = entry
                continue
            files = list_files(os.path.join(split_dir, wnid))
            if not files:
                raise DatasetLabelError(
                    f"ImageNet: class folder {os.path.join(split_dir, wnid)} is empty; "
                    "every class needs images"
                )
            fresh[wnid] = [mtime, files]
            changed = True
        return fresh, changed or fresh.keys() != cached.keys()

    @staticmethod
    def _explain_loose_files(split: str, split_dir: str, folders: Dict[str, int], loose: List[str]) -> None:
        tars = [n for n in loose if n.endswith(".tar")]
        if split == "train" and tars:
            raise DatasetNotFoundError(
                f"ImageNet: {len(tars)} .tar file(s) in {split_dir} (e.g. {tars[0]}); the training "
                "archive holds one tar per class: extract each into images/train/<wnid>/ "
                "(see DATASETS.md#imagenet)"
            )
        images = [n for n in loose if os.path.splitext(n)[1].lower() in (".jpeg", ".jpg", ".png")]
        if images:
            fix = VAL_FIX if split == "val" else "move them into images/train/<wnid>/"
            raise DatasetNotFoundError(
                f"ImageNet: {len(images)} image file(s) lie directly in {split_dir} (e.g. {images[0]}) "
                f"and {len(folders)} class folder(s) were found; images/{split}/ must hold one folder "
                f"per class. {fix}"
            )

    def _save_index(self, train: FolderIndex, val: FolderIndex) -> None:
        try:
            write_index(self.index_path, train, val)
            logger.info(f"ImageNet: saved the image index to {self.index_path}")
        except OSError as err:
            logger.warning(f"ImageNet: could not write the image index {self.index_path} ({err})")

    @staticmethod
    def _items(split_dir: str, folder_index: FolderIndex, label_of: Dict[str, int],
               classnames: Dict[str, str]) -> List[Datum]:
        items: List[Datum] = []
        for wnid in sorted(folder_index):
            prefix = os.path.join(split_dir, wnid) + os.sep
            label, cname = label_of[wnid], classnames[wnid]
            items.extend([Datum(prefix + name, label, 0, cname) for name in folder_index[wnid][1]])
        return items



class ImageNetFolderVariant(CoOpDataset):
    """Base of the test-only variants laid out as ``<image_dir>/<wnid>/`` plus ``classnames.txt``.

    Labels are the positions of the sorted class folders (files such as
    ``README.txt`` are skipped), names come from the dataset's copy of
    ImageNet's ``classnames.txt``; not registered itself.
    """

    split_file = None
    test_only = True

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        classnames_file = self.require(os.path.join(self.dataset_root, "classnames.txt"),
                                       "class-name file classnames.txt (copy it from imagenet/)")
        folders = sorted(list_folder(self.image_path)[0])
        if not folders:
            raise DatasetNotFoundError(
                f"{type(self).__name__}: no class folders in {self.image_path} "
                f"(see DATASETS.md#{self.docs_section})"
            )
        classnames = read_classnames(classnames_file)
        return [], [], class_folder_items(self.image_path, folders, classnames, classnames_file)
