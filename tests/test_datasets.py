"""The 15 CoOp dataset plug-ins on tiny trees laid out like the real datasets.

Each dataset is built from its raw files (the split JSON is then written),
from a CoOp-style split JSON, as 1- and 4-shot subsets and as base/new
halves; the few-shot cache must survive moving the data root, and every
missing file or bad annotation must raise an error naming the path.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_trees import EUROSAT, MAKERS, TEST_ONLY, FakeTree, base_new_names, make_tree  # noqa: E402

from ampt.config import get_cfg_default  # noqa: E402
from ampt.data import DatasetLabelError, DatasetNotFoundError  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAMES = list(MAKERS)
load_plugins()
from ampt.api import DATASET_REGISTRY  # noqa: E402

TRAINABLE = [n for n in NAMES if not DATASET_REGISTRY.get(n).test_only]
WITH_SPLIT_FILE = [n for n in NAMES if DATASET_REGISTRY.get(n).split_file]


def build(root: Path, name: str, shots: int = -1, seed: int = 1, subsample: str = "all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return DATASET_REGISTRY.get(name)(cfg)


def per_class(items) -> Dict[int, int]:
    return dict(Counter(item.label for item in items))


def rows(items, base: Path) -> List[Tuple[str, int, str]]:
    """Items as sorted (path relative to ``base``, label, classname)."""
    return sorted((os.path.relpath(i.impath, base), i.label, i.classname) for i in items)


def nonzero(counts: Dict[int, int]) -> Dict[int, int]:
    return {k: v for k, v in counts.items() if v}


# --------------------------------------------------------------------- raw build
@pytest.mark.parametrize("name", NAMES)
def test_build_from_raw_files(tmp_path: Path, name: str) -> None:
    tree = make_tree(name, tmp_path)
    ds = build(tmp_path, name)
    assert ds.num_classes == tree.num_classes
    assert ds.classnames == tree.classnames
    expected = tree.expected_counts()
    assert per_class(ds.train_x) == nonzero(expected["train"])
    assert per_class(ds.test) == nonzero(expected["test"])
    if tree.rule == TEST_ONLY:
        assert ds.val is None and ds.train_x == ds.test
    else:
        assert per_class(ds.val) == nonzero(expected["val"])
    # every item is a written image, with the label and split the tree gave it
    written = {relpath: (label, split) for relpath, label, split in tree.items}
    for split_name, items in (("train", ds.train_x), ("val", ds.val or []), ("test", ds.test)):
        for item in items:
            relpath = os.path.relpath(item.impath, tree.image_root)
            assert relpath in written, item.impath
            label, official = written[relpath]
            assert item.label == label and item.classname == tree.classnames[label]
            if official == "test" and tree.rule != TEST_ONLY:
                assert split_name == "test" or tree.rule == "imagenet", (relpath, split_name)
    if tree.split_file:  # the split built from the raw files was written, relative, and is re-read
        split = json.loads((tree.dataset_dir / tree.split_file).read_text())
        assert all(not os.path.isabs(r[0]) for r in split["train"] + split["val"] + split["test"])
        again = build(tmp_path, name)
        assert rows(again.train_x, tree.image_root) == rows(ds.train_x, tree.image_root)
        assert rows(again.test, tree.image_root) == rows(ds.test, tree.image_root)


@pytest.mark.parametrize("name", WITH_SPLIT_FILE)
def test_build_from_coop_split_json(tmp_path: Path, name: str) -> None:
    tree = make_tree(name, tmp_path)
    split = tree.write_coop_split()
    ds = build(tmp_path, name)
    for key, items in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        assert rows(items, tree.image_root) == sorted(tuple(r) for r in split[key])
    assert ds.classnames == tree.classnames
    assert per_class(ds.train_x) == {y: 3 for y in range(tree.num_classes)}


def test_split_json_needs_no_annotations_and_no_image_stat(tmp_path: Path) -> None:
    tree = make_tree("OxfordPets", tmp_path)
    tree.write_coop_split()
    shutil.rmtree(tree.dataset_dir / "annotations")
    for image in tree.image_root.iterdir():  # a missing image is reported when read, not here
        image.unlink()
    ds = build(tmp_path, "OxfordPets")
    assert len(ds.train_x) == 3 * tree.num_classes


# ----------------------------------------------------------------------- few-shot
def expected_fewshot(counts: Dict[int, int], k: int) -> Dict[int, int]:
    return nonzero({y: min(k, n) for y, n in counts.items()})


@pytest.mark.parametrize("name", TRAINABLE)
def test_fewshot_sizes(tmp_path: Path, name: str) -> None:
    tree = make_tree(name, tmp_path)
    expected = tree.expected_counts()
    for k in (1, 4):
        ds = build(tmp_path, name, shots=k, seed=2)
        assert per_class(ds.train_x) == expected_fewshot(expected["train"], k)
        if name == "ImageNet":  # CoOp: no val split; val is the full test set
            assert ds.val == ds.test
        else:
            assert per_class(ds.val) == expected_fewshot(expected["val"], min(k, 4))
        assert per_class(ds.test) == nonzero(expected["test"])
        cache = json.loads((tree.dataset_dir / "split_fewshot" / f"shot_{k}-seed_2.json").read_text())
        assert sorted(tuple(r) for r in cache["train"]) == rows(ds.train_x, tree.image_root)


def test_fewshot_val_capped_at_four_and_seeded(tmp_path: Path) -> None:
    tree = make_tree("DescribableTextures", tmp_path)  # 10 train / 4 val per class
    ds8 = build(tmp_path, "DescribableTextures", shots=8, seed=3)
    assert set(per_class(ds8.train_x).values()) == {8}
    assert set(per_class(ds8.val).values()) == {4}
    shutil.rmtree(tree.dataset_dir / "split_fewshot")
    again = build(tmp_path, "DescribableTextures", shots=8, seed=3)
    assert rows(again.train_x, tmp_path) == rows(ds8.train_x, tmp_path)
    other = build(tmp_path, "DescribableTextures", shots=8, seed=4)
    assert rows(other.train_x, tmp_path) != rows(ds8.train_x, tmp_path)


@pytest.mark.parametrize("name", ["DescribableTextures", "ImageNet", "StanfordCars"])
def test_fewshot_cache_survives_moving_the_root(tmp_path: Path, name: str) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    tree = make_tree(name, old)
    first = build(old, name, shots=4, seed=1)
    cache = tree.dataset_dir / "split_fewshot" / "shot_4-seed_1.json"
    stamp = cache.stat().st_mtime_ns
    shutil.move(str(old), str(new))
    moved = build(new, name, shots=4, seed=1)
    new_image_root = new / tree.image_root.relative_to(old)
    assert rows(moved.train_x, new_image_root) == rows(first.train_x, tree.image_root)
    assert all(Path(i.impath).is_file() for i in moved.train_x + moved.val)
    assert (new / cache.relative_to(old)).stat().st_mtime_ns == stamp  # read, not re-sampled


# ------------------------------------------------------------------------ base/new
@pytest.mark.parametrize("name", NAMES)
def test_base_new_subsampling(tmp_path: Path, name: str) -> None:
    tree = make_tree(name, tmp_path)
    base_names, new_names = base_new_names(tree.classnames)
    test_counts = tree.expected_counts()["test"]
    for subsample, names, offset in (("base", base_names, 0), ("new", new_names, len(base_names))):
        ds = build(tmp_path, name, subsample=subsample)
        assert ds.classnames == names and ds.num_classes == len(names)
        assert per_class(ds.test) == {y: test_counts[y + offset] for y in range(len(names))}
        assert all(i.classname == names[i.label] for i in ds.train_x + ds.test)


# -------------------------------------------------------------------- class names
def test_renaming_rules(tmp_path: Path) -> None:
    for name in ("Caltech101", "EuroSAT", "SUN397", "UCF101", "StanfordCars"):
        make_tree(name, tmp_path)
    caltech = ["face", "leopard", "motorbike", "accordion", "airplane"]
    assert build(tmp_path, "Caltech101").classnames == caltech
    assert build(tmp_path, "EuroSAT").classnames == [EUROSAT[f] for f in sorted(EUROSAT)]
    assert "outdoor apartment_building" in build(tmp_path, "SUN397").classnames
    assert build(tmp_path, "UCF101").classnames == ["Apply_Eye_Makeup", "Apply_Lipstick", "Yo_Yo"]
    assert build(tmp_path, "StanfordCars").classnames[0] == "2000 AM General Hummer SUV"


# ------------------------------------------------------------------------- errors
def anchor(name: str) -> str:
    return f"DATASETS.md#{DATASET_REGISTRY.get(name).docs_section}"


@pytest.mark.parametrize("name", NAMES)
def test_missing_dataset_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build(tmp_path, name)
    folder = str(tmp_path / DATASET_REGISTRY.get(name).dataset_dir)
    assert folder in str(err.value) and name in str(err.value) and anchor(name) in str(err.value)


MISSING = [  # (dataset, path to delete relative to the dataset folder, path named in the error)
    ("ImageNet", "images", "images"),
    ("ImageNet", "images/val", "images/val"),
    ("ImageNet", "classnames.txt", "classnames.txt"),
    ("Caltech101", "101_ObjectCategories", "101_ObjectCategories"),
    ("OxfordPets", "annotations/test.txt", "annotations/test.txt"),
    ("StanfordCars", "devkit/cars_meta.mat", "devkit/cars_meta.mat"),
    ("StanfordCars", "cars_test", "cars_test"),
    ("OxfordFlowers", "cat_to_name.json", "cat_to_name.json"),
    ("OxfordFlowers", "imagelabels.mat", "imagelabels.mat"),
    ("Food101", "images", "images"),
    ("FGVCAircraft", "images_variant_val.txt", "images_variant_val.txt"),
    ("FGVCAircraft", "variants.txt", "variants.txt"),
    ("SUN397", "Training_01.txt", "Training_01.txt"),
    ("DescribableTextures", "images", "images"),
    ("EuroSAT", "2750", "2750"),
    ("UCF101", "ucfTrainTestlist", "ucfTrainTestlist/classInd.txt"),
    ("ImageNetV2", "imagenetv2-matched-frequency-format-val/2", "imagenetv2-matched-frequency-format-val/2"),
    ("ImageNetSketch", "classnames.txt", "classnames.txt"),
    ("ImageNetA", "imagenet-a", "imagenet-a"),
    ("ImageNetR", "classnames.txt", "classnames.txt"),
]


@pytest.mark.parametrize("name,delete,named", MISSING)
def test_missing_file_names_path_and_section(tmp_path: Path, name: str, delete: str, named: str) -> None:
    tree = make_tree(name, tmp_path)
    target = tree.dataset_dir / delete
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        build(tmp_path, name)
    message = str(err.value)
    assert str(tree.dataset_dir / named) in message and anchor(name) in message
    if tree.split_file and delete != tree.image_root.name:  # annotations are only needed without the split
        assert str(tree.dataset_dir / tree.split_file) in message


def move_val_flat(tree: FakeTree) -> Path:
    val = tree.image_root / "val"
    for folder in list(val.iterdir()):
        for image in folder.iterdir():
            image.rename(val / image.name)
        folder.rmdir()
    return val


def test_imagenet_flat_val_is_explained(tmp_path: Path) -> None:
    val = move_val_flat(make_tree("ImageNet", tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        build(tmp_path, "ImageNet")
    assert str(val) in str(err.value) and "valprep.sh" in str(err.value)
    assert "DATASETS.md#imagenet" in str(err.value)


def test_imagenet_unextracted_train_tars(tmp_path: Path) -> None:
    tree = make_tree("ImageNet", tmp_path)
    (tree.image_root / "train" / "n01496331.tar").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="n01496331.tar"):
        build(tmp_path, "ImageNet")


@pytest.mark.parametrize("name,folder", [
    ("ImageNet", "images/train/n01440764"),
    ("Food101", "images/apple_pie"),
    ("ImageNetSketch", "images/n01443537"),
])
def test_empty_class_folder_is_an_error(tmp_path: Path, name: str, folder: str) -> None:
    tree = make_tree(name, tmp_path)
    for image in (tree.dataset_dir / folder).iterdir():
        image.unlink()
    with pytest.raises(ValueError) as err:
        build(tmp_path, name)
    assert str(tree.dataset_dir / folder) in str(err.value)


def replace_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


BAD_LINES = [  # (dataset, annotation file, 0-based line, replacement, 1-based line named)
    ("OxfordPets", "annotations/trainval.txt", 2, "Abyssinian_3 1", 3),
    ("FGVCAircraft", "images_variant_test.txt", 0, "1000001 Boeing 999", 1),
    ("SUN397", "Testing_01.txt", 4, "/z/zoo/sun_1.jpg", 5),
    ("UCF101", "ucfTrainTestlist/trainlist01.txt", 1, "Juggling/v_Juggling_g01_c01.avi 9", 2),
    ("ImageNet", "classnames.txt", 1, "n01443537", 2),
]


@pytest.mark.parametrize("name,relpath,index,text,lineno", BAD_LINES)
def test_bad_annotation_line_names_file_and_line(tmp_path: Path, name: str, relpath: str, index: int,
                                                 text: str, lineno: int) -> None:
    tree = make_tree(name, tmp_path)
    replace_line(tree.dataset_dir / relpath, index, text)
    with pytest.raises(ValueError, match=re.escape(f"{tree.dataset_dir / relpath}:{lineno}")):
        build(tmp_path, name)


def test_label_outside_class_list(tmp_path: Path) -> None:
    tree = make_tree("StanfordCars", tmp_path)
    from scipy.io import loadmat, savemat

    path = tree.dataset_dir / "cars_test_annos_withlabels.mat"
    annotations = loadmat(str(path))["annotations"]
    annotations[0, 0]["class"] = np.array([[99]], dtype=np.uint8)  # loadmat may share small arrays
    savemat(str(path), {"annotations": annotations})
    with pytest.raises(ValueError, match=re.escape(str(path))):
        build(tmp_path, "StanfordCars")
    tree = make_tree("OxfordPets", tmp_path / "pets")
    split = tree.write_coop_split()
    split["test"][0][1] = 7
    (tree.dataset_dir / tree.split_file).write_text(json.dumps(split))
    with pytest.raises(DatasetLabelError, match="outside"):
        build(tmp_path / "pets", "OxfordPets")


def test_imagenet_folder_missing_from_classnames(tmp_path: Path) -> None:
    tree = make_tree("ImageNet", tmp_path)
    (tree.image_root / "train" / "n99999999").mkdir()
    (tree.image_root / "train" / "n99999999" / "x.JPEG").write_bytes(b"")
    with pytest.raises(DatasetLabelError, match="n99999999"):
        build(tmp_path, "ImageNet")


# ------------------------------------------------------------------ ImageNet index
def imagenet_module():
    return sys.modules[DATASET_REGISTRY.get("ImageNet").__module__]


def test_imagenet_index_is_cached_portable_and_refreshed(tmp_path: Path, monkeypatch) -> None:
    tree = make_tree("ImageNet", tmp_path)
    module = imagenet_module()
    first = build(tmp_path, "ImageNet")
    index_file = tree.dataset_dir / module.INDEX_FILE
    assert str(tmp_path) not in index_file.read_text()  # relative names only
    listed: List[str] = []
    real_list_files = module.list_files
    monkeypatch.setattr(module, "list_files", lambda path: listed.append(path) or real_list_files(path))
    again = build(tmp_path, "ImageNet")
    assert listed == [] and rows(again.train_x, tmp_path) == rows(first.train_x, tmp_path)
    folder = tree.image_root / "train" / "n01440764"
    (folder / "new.JPEG").write_bytes(b"")
    stat = folder.stat()
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    refreshed = build(tmp_path, "ImageNet")
    assert listed == [str(folder)]
    assert len(refreshed.train_x) == len(first.train_x) + 1


# ------------------------------------------------------------------- docs, configs
def github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_docs_sections_and_configs_exist() -> None:
    headings = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", (REPO / "DATASETS.md").read_text(), re.M)}
    configs = {}
    for path in (REPO / "configs" / "datasets").glob("*.yaml"):
        configs[yaml.safe_load(path.read_text())["DATASET"]["NAME"]] = path.name
    for name in NAMES:
        assert DATASET_REGISTRY.get(name).docs_section in headings, name
        assert name in configs, name
    assert "portable-few-shot-cache" in headings


def test_bench_script_runs_on_a_small_index(tmp_path: Path, monkeypatch, capsys) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_dataset_index as bench
    finally:
        sys.path.remove(str(REPO / "scripts"))
    argv = ["--root", str(tmp_path), "--classes", "5", "--train", "103", "--val", "10", "--shots", "4",
            "--scan-classes", "2", "--scan-files", "3"]
    monkeypatch.setattr(sys, "argv", ["bench_dataset_index.py"] + argv)
    bench.main()
    out = capsys.readouterr().out
    assert "103 train + 10 val entries, 5 classes" in out and "4-shot (cached)" in out
    assert "cold scan of 12 real files" in out


@pytest.mark.parametrize("name", ["OxfordPets", "StanfordCars", "UCF101"])
def test_train_py_runs_coop_one_epoch_on_a_generated_tree(tmp_path: Path, name: str) -> None:
    import train
    from ampt.models.tiny import build_tiny_clip, save_clip_state_dict
    from ampt.utils.logger import reset_logger

    tree = make_tree(name, tmp_path / "data")
    backbone = save_clip_state_dict(build_tiny_clip(), tmp_path / "tiny.pt")
    config_id = {"OxfordPets": "oxford_pets", "StanfordCars": "stanford_cars", "UCF101": "ucf101"}[name]
    out = tmp_path / "run"
    argv = ["--root", str(tmp_path / "data"), "--trainer", "CoOp", "--seed", "1", "--output-dir", str(out),
            "--dataset-config-file", str(REPO / "configs" / "datasets" / f"{config_id}.yaml"),
            "--config-file", str(REPO / "configs" / "trainers" / "CoOp" / "digits.yaml"),
            "MODEL.BACKBONE.NAME", str(backbone), "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1",
            "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip']", "USE_CUDA", "False"]
    try:
        assert train.main(argv) == 0
    finally:
        reset_logger()
    log = (out / "log.txt").read_text()
    assert f"* total: {sum(tree.expected_counts()['test'].values())}\n" in log and "Finish training" in log
    assert (tree.dataset_dir / "split_fewshot" / "shot_2-seed_1.json").is_file()
