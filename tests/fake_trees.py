"""Tiny data trees in the real on-disk layout of each of the 15 CoOp datasets.

Every ``make_*`` writes a few classes of 8x8 images plus the annotation
``.txt`` / ``.mat`` / ``.json`` files the real dataset ships, and returns a
:class:`FakeTree` that records what a correct loader must produce: the class
names in label order, every image with its official split, and the rule
CoOp uses to split it when no ``split_zhou_*.json`` is present.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy.io import savemat

# Split rules CoOp applies when the split JSON is missing.
FOLDER = "folder"  # per class 50% train / 20% val / 30% test
TRAINVAL = "trainval"  # official train list -> per class 80% train / 20% val; official test
OFFICIAL = "official"  # official train / val / test lists (FGVCAircraft)
IMAGENET = "imagenet"  # train folders; val folders are the test set
TEST_ONLY = "test_only"  # ImageNet variants: everything is test data


@dataclass
class FakeTree:
    """What was written, and what a correct loader must return for it."""

    name: str  # registered dataset name
    dataset_dir: Path  # <root>/<folder of the dataset>
    image_root: Path  # folder that split-JSON paths are relative to
    classnames: List[str]  # in label order
    rule: str
    split_file: Optional[str] = None
    # (path relative to image_root, label, split) with split in train/val/test/trainval
    items: List[Tuple[str, int, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def per_class(self, split: str) -> Dict[int, int]:
        counts = {label: 0 for label in range(self.num_classes)}
        for _, label, item_split in self.items:
            if item_split == split:
                counts[label] += 1
        return counts

    def expected_counts(self) -> Dict[str, Dict[int, int]]:
        """Per-class sizes of train/val/test when built from the raw files."""
        labels = range(self.num_classes)
        if self.rule == FOLDER:
            total = self.per_class("all")
            train = {y: round(total[y] * 0.5) for y in labels}
            val = {y: round(total[y] * 0.2) for y in labels}
            test = {y: total[y] - train[y] - val[y] for y in labels}
        elif self.rule == TRAINVAL:
            trainval = self.per_class("trainval")
            val = {y: round(trainval[y] * 0.2) for y in labels}
            train = {y: trainval[y] - val[y] for y in labels}
            test = self.per_class("test")
        elif self.rule == IMAGENET:
            train, test = self.per_class("train"), self.per_class("test")
            val = dict(test)
        elif self.rule == TEST_ONLY:
            test = self.per_class("test")
            train, val = dict(test), dict(test)
        else:
            train, val, test = (self.per_class(s) for s in ("train", "val", "test"))
        return {"train": train, "val": val, "test": test}

    def write_coop_split(self) -> Dict[str, List[list]]:
        """Write a split JSON in CoOp's format with an assignment the raw rule never makes.

        Per class, sorted by path: 3 train, 1 val, the rest test; so a loader
        that ignored the JSON and re-split the files would get other sizes.
        """
        assert self.split_file is not None, f"{self.name} has no split file"
        by_label: Dict[int, List[str]] = {}
        for relpath, label, _ in self.items:
            by_label.setdefault(label, []).append(relpath)
        split: Dict[str, List[list]] = {"train": [], "val": [], "test": []}
        for label in sorted(by_label):
            paths = sorted(by_label[label])
            name = self.classnames[label]
            for i, relpath in enumerate(paths):
                key = "train" if i < 3 else "val" if i == 3 else "test"
                split[key].append([relpath, label, name])
        (self.dataset_dir / self.split_file).write_text(json.dumps(split, indent=1))
        return split


def _image_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


_BYTES: Dict[str, bytes] = {}


def write_image(path: Path) -> None:
    """An 8x8 RGB image; PNG for ``.png`` names, JPEG otherwise."""
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    if fmt not in _BYTES:
        _BYTES[fmt] = _image_bytes(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_BYTES[fmt])


def _write_lines(path: Path, lines: List[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _folder_tree(name: str, dataset_dir: Path, image_dir: str, folders: List[str],
                 classnames: List[str], n_per_class: int, split_file: str,
                 ignored: Tuple[str, ...] = ()) -> FakeTree:
    """``<image_dir>/<class folder>/<images>``; ``folders`` in label (sorted) order."""
    image_root = dataset_dir / image_dir
    tree = FakeTree(name, dataset_dir, image_root, classnames, FOLDER, split_file)
    for label, folder in enumerate(folders):
        for i in range(n_per_class):
            relpath = f"{folder}/{folder}_{i + 1:04d}.jpg"
            write_image(image_root / relpath)
            tree.items.append((relpath, label, "all"))
    for folder in ignored:
        write_image(image_root / folder / "image_0001.jpg")
    return tree


# ----------------------------------------------------------------- ImageNet family
IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
]


def write_classnames(path: Path, classes: List[Tuple[str, str]]) -> None:
    _write_lines(path, [f"{wnid} {name}" for wnid, name in classes])


def make_imagenet(root: Path, n_classes: int = 4, n_train: int = 6, n_val: int = 3) -> FakeTree:
    dataset_dir = root / "imagenet"
    image_root = dataset_dir / "images"
    classes = IMAGENET_CLASSES[:n_classes]
    # classnames.txt lists every class (the real one has 1000); folders hold n_classes
    write_classnames(dataset_dir / "classnames.txt", IMAGENET_CLASSES)
    tree = FakeTree("ImageNet", dataset_dir, image_root, [c for _, c in classes], IMAGENET)
    for label, (wnid, _) in enumerate(classes):
        for i in range(n_train):
            relpath = f"train/{wnid}/{wnid}_{i + 1}.JPEG"
            write_image(image_root / relpath)
            tree.items.append((relpath, label, "train"))
        for i in range(n_val):
            relpath = f"val/{wnid}/ILSVRC2012_val_{label * n_val + i + 1:08d}.JPEG"
            write_image(image_root / relpath)
            tree.items.append((relpath, label, "test"))
    return tree


def _variant_tree(name: str, root: Path, folder: str, image_dir: str, n_classes: int,
                  n_per_class: int, numbered: bool = False, readme: bool = False) -> FakeTree:
    dataset_dir = root / folder
    image_root = dataset_dir / image_dir
    write_classnames(dataset_dir / "classnames.txt", IMAGENET_CLASSES)
    if numbered:  # ImageNetV2: folders 0..N-1 index classnames.txt, which lists N classes
        classes = IMAGENET_CLASSES[:n_classes]
        write_classnames(dataset_dir / "classnames.txt", classes)
        picked = [(str(label), name) for label, (_, name) in enumerate(classes)]
    else:  # a subset of the classes in classnames.txt, like ImageNet-A/R's 200
        picked = IMAGENET_CLASSES[1:1 + 2 * n_classes:2]
    tree = FakeTree(name, dataset_dir, image_root, [c for _, c in picked], TEST_ONLY)
    for label, (sub, _) in enumerate(picked):
        for i in range(n_per_class):
            relpath = f"{sub}/{i:03d}.jpeg" if numbered else f"{sub}/img_{i}.JPEG"
            write_image(image_root / relpath)
            tree.items.append((relpath, label, "test"))
    if readme:
        (image_root / "README.txt").write_text("class folders are WordNet ids\n")
    return tree


def make_imagenetv2(root: Path) -> FakeTree:
    return _variant_tree("ImageNetV2", root, "imagenetv2",
                         "imagenetv2-matched-frequency-format-val", 4, 3, numbered=True)


def make_imagenet_sketch(root: Path) -> FakeTree:
    return _variant_tree("ImageNetSketch", root, "imagenet-sketch", "images", 3, 3)


def make_imagenet_a(root: Path) -> FakeTree:
    return _variant_tree("ImageNetA", root, "imagenet-adversarial", "imagenet-a", 3, 2, readme=True)


def make_imagenet_r(root: Path) -> FakeTree:
    return _variant_tree("ImageNetR", root, "imagenet-rendition", "imagenet-r", 3, 2, readme=True)


# ------------------------------------------------------------- folder-split datasets
def make_caltech101(root: Path) -> FakeTree:
    folders = ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes"]  # sorted, case-sensitive
    names = ["face", "leopard", "motorbike", "accordion", "airplane"]
    return _folder_tree("Caltech101", root / "caltech-101", "101_ObjectCategories", folders, names,
                        10, "split_zhou_Caltech101.json", ignored=("BACKGROUND_Google", "Faces_easy"))


def make_food101(root: Path) -> FakeTree:
    folders = ["apple_pie", "baby_back_ribs", "baklava"]
    return _folder_tree("Food101", root / "food-101", "images", folders, folders, 10,
                        "split_zhou_Food101.json")


def make_dtd(root: Path) -> FakeTree:
    folders = ["banded", "blotchy", "braided"]
    tree = _folder_tree("DescribableTextures", root / "dtd", "images", folders, folders, 20,
                        "split_zhou_DescribableTextures.json")
    _write_lines(root / "dtd" / "labels" / "train1.txt", [f"{f}/{f}_0001.jpg" for f in folders])
    return tree


EUROSAT = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


def make_eurosat(root: Path) -> FakeTree:
    folders = sorted(EUROSAT)
    return _folder_tree("EuroSAT", root / "eurosat", "2750", folders, [EUROSAT[f] for f in folders],
                        10, "split_zhou_EuroSAT.json")


def make_oxford_flowers(root: Path) -> FakeTree:
    dataset_dir = root / "oxford_flowers"
    names = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells"}
    tree = FakeTree("OxfordFlowers", dataset_dir, dataset_dir / "jpg", list(names.values()),
                    FOLDER, "split_zhou_OxfordFlowers.json")
    labels = [(i % 3) + 1 for i in range(30)]  # interleaved, like the real imagelabels.mat
    for i, label in enumerate(labels):
        relpath = f"image_{i + 1:05d}.jpg"
        write_image(tree.image_root / relpath)
        tree.items.append((relpath, label - 1, "all"))
    savemat(str(dataset_dir / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    (dataset_dir / "cat_to_name.json").write_text(json.dumps(names))
    return tree


# -------------------------------------------------------- official-list datasets
def make_oxford_pets(root: Path) -> FakeTree:
    dataset_dir = root / "oxford_pets"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (image prefix, species)
    tree = FakeTree("OxfordPets", dataset_dir, dataset_dir / "images",
                    [b.lower() for b, _ in breeds], TRAINVAL, "split_zhou_OxfordPets.json")
    lines: Dict[str, List[str]] = {"trainval": [], "test": []}
    for label, (breed, species) in enumerate(breeds):
        for i in range(15):
            split = "trainval" if i < 10 else "test"
            imname = f"{breed}_{i + 1}"
            write_image(tree.image_root / f"{imname}.jpg")
            lines[split].append(f"{imname} {label + 1} {species} {label + 1}")
            tree.items.append((f"{imname}.jpg", label, split))
    _write_lines(dataset_dir / "annotations" / "trainval.txt", lines["trainval"])
    _write_lines(dataset_dir / "annotations" / "test.txt", lines["test"])
    return tree


def _cars_annotations(records: List[Tuple[str, int]]) -> np.ndarray:
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("fname", "O")]
    arr = np.zeros((1, len(records)), dtype=dtype)
    for i, (fname, label) in enumerate(records):
        arr[0, i] = (np.array([[1]]), np.array([[1]]), np.array([[7]]), np.array([[7]]),
                     np.array([[label]], dtype=np.uint8), np.array([fname]))
    return arr


def make_stanford_cars(root: Path) -> FakeTree:
    dataset_dir = root / "stanford_cars"
    raw = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"]
    tree = FakeTree("StanfordCars", dataset_dir, dataset_dir, names, TRAINVAL,
                    "split_zhou_StanfordCars.json")
    records: Dict[str, List[Tuple[str, int]]] = {"cars_train": [], "cars_test": []}
    for folder, per_class, split in (("cars_train", 10, "trainval"), ("cars_test", 5, "test")):
        for i in range(per_class * len(raw)):
            label = i % len(raw)
            fname = f"{i + 1:05d}.jpg"
            write_image(dataset_dir / folder / fname)
            records[folder].append((fname, label + 1))
            tree.items.append((f"{folder}/{fname}", label, split))
    (dataset_dir / "devkit").mkdir(parents=True, exist_ok=True)
    meta = np.empty((1, len(raw)), dtype=object)
    for i, name in enumerate(raw):
        meta[0, i] = np.array([name])
    savemat(str(dataset_dir / "devkit" / "cars_meta.mat"), {"class_names": meta})
    savemat(str(dataset_dir / "devkit" / "cars_train_annos.mat"),
            {"annotations": _cars_annotations(records["cars_train"])})
    savemat(str(dataset_dir / "cars_test_annos_withlabels.mat"),
            {"annotations": _cars_annotations(records["cars_test"])})
    return tree


def make_fgvc_aircraft(root: Path) -> FakeTree:
    dataset_dir = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    tree = FakeTree("FGVCAircraft", dataset_dir, dataset_dir / "images", variants, OFFICIAL)
    _write_lines(dataset_dir / "variants.txt", variants)
    counter = 1000000
    for split, per_class in (("train", 4), ("val", 3), ("test", 3)):
        lines = []
        for label, variant in enumerate(variants):
            for _ in range(per_class):
                counter += 1
                write_image(tree.image_root / f"{counter}.jpg")
                lines.append(f"{counter} {variant}")
                tree.items.append((f"{counter}.jpg", label, split))
        _write_lines(dataset_dir / f"images_variant_{split}.txt", lines)
    _write_lines(dataset_dir / "families.txt", ["Boeing 707", "A300", "Cessna 172"])
    return tree


def make_sun397(root: Path) -> FakeTree:
    dataset_dir = root / "sun397"
    paths = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bedroom"]
    names = ["abbey", "outdoor apartment_building", "bedroom"]
    tree = FakeTree("SUN397", dataset_dir, dataset_dir / "SUN397", names, TRAINVAL,
                    "split_zhou_SUN397.json")
    _write_lines(dataset_dir / "ClassName.txt", paths)
    lines: Dict[str, List[str]] = {"trainval": [], "test": []}
    for label, cls in enumerate(paths):
        for i in range(15):
            split = "trainval" if i < 10 else "test"
            relpath = f"{cls[1:]}/sun_{label}{i:04d}.jpg"
            write_image(tree.image_root / relpath)
            lines[split].append("/" + relpath)
            tree.items.append((relpath, label, split))
    _write_lines(dataset_dir / "Training_01.txt", lines["trainval"])
    _write_lines(dataset_dir / "Testing_01.txt", lines["test"])
    return tree


def make_ucf101(root: Path) -> FakeTree:
    dataset_dir = root / "ucf101"
    actions = ["ApplyEyeMakeup", "ApplyLipstick", "YoYo"]
    folders = ["Apply_Eye_Makeup", "Apply_Lipstick", "Yo_Yo"]
    tree = FakeTree("UCF101", dataset_dir, dataset_dir / "UCF-101-midframes", folders, TRAINVAL,
                    "split_zhou_UCF101.json")
    anno = dataset_dir / "ucfTrainTestlist"
    _write_lines(anno / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    lines: Dict[str, List[str]] = {"trainval": [], "test": []}
    for label, (action, folder) in enumerate(zip(actions, folders)):
        for i in range(15):
            split = "trainval" if i < 10 else "test"
            video = f"v_{action}_g{i + 1:02d}_c01"
            write_image(tree.image_root / folder / f"{video}.jpg")
            entry = f"{action}/{video}.avi"
            lines[split].append(f"{entry} {label + 1}" if split == "trainval" else entry)
            tree.items.append((f"{folder}/{video}.jpg", label, split))
    _write_lines(anno / "trainlist01.txt", lines["trainval"])
    _write_lines(anno / "testlist01.txt", lines["test"])
    return tree


MAKERS: Dict[str, Callable[[Path], FakeTree]] = {
    "ImageNet": make_imagenet,
    "Caltech101": make_caltech101,
    "OxfordPets": make_oxford_pets,
    "StanfordCars": make_stanford_cars,
    "OxfordFlowers": make_oxford_flowers,
    "Food101": make_food101,
    "FGVCAircraft": make_fgvc_aircraft,
    "SUN397": make_sun397,
    "DescribableTextures": make_dtd,
    "EuroSAT": make_eurosat,
    "UCF101": make_ucf101,
    "ImageNetV2": make_imagenetv2,
    "ImageNetSketch": make_imagenet_sketch,
    "ImageNetA": make_imagenet_a,
    "ImageNetR": make_imagenet_r,
}


def make_tree(name: str, root: Path) -> FakeTree:
    """Write the tiny tree of dataset ``name`` under ``root``."""
    return MAKERS[name](Path(root))


def base_new_names(classnames: List[str]) -> Tuple[List[str], List[str]]:
    """CoOp's base/new halves of a label-ordered class list."""
    m = math.ceil(len(classnames) / 2)
    return classnames[:m], classnames[m:]
