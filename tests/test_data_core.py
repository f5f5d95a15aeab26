"""Data core: Dassl-identical few-shot sampling, portable caches, CoOp splits, loaders, transforms."""
from __future__ import annotations

import json
import os
import random
import shutil
from collections import OrderedDict

import pytest
import torch
from PIL import Image

from ampt.config.defaults import get_cfg_default
from ampt.data import (
    DATASET_REGISTRY, CoOpDataset, DataManager, DatasetBase, DatasetLabelError,
    DatasetNotFoundError, Datum, build_dataset, build_transform, read_image,
)
from ampt.data.fewshot import fewshot_cache_path, load_or_create_fewshot
from ampt.data.splits import (
    read_and_split_data, read_split, save_split, split_trainval, subsample_classes,
)

TOY_CLASSES = OrderedDict([("cat", 10), ("dog", 12), ("fox", 10), ("owl", 11), ("yak", 10)])


@DATASET_REGISTRY.register(force=True)
class ToyFolders(CoOpDataset):
    """A DTD-like folder dataset: images/<class>/<file>.png, split built per class."""

    dataset_dir = "toy_folders"
    image_dir = "images"
    split_file = "split_toy.json"
    docs_section = "toyfolders"

    def build_split(self):
        return read_and_split_data(self.image_path, new_cnames={"yak": "wild yak"})


def make_tree(root, classes=TOY_CLASSES):
    """Write tiny PNGs (distinct colors) under root/toy_folders/images/<class>/."""
    for c, (name, n) in enumerate(classes.items()):
        folder = os.path.join(root, "toy_folders", "images", name)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            color = (40 * c % 256, 17 * i % 256, 200)
            Image.new("RGB", (20, 14), color).save(os.path.join(folder, f"{name}_{i:03d}.png"))
    return root


def toy_cfg(root, num_shots=-1, seed=1, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "ToyFolders"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.INPUT.SIZE = (16, 16)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 5
    cfg.USE_CUDA = False
    return cfg


def reference_fewshot(items, num_shots, repeat=False):
    """Dassl's sampling as its docs describe it: group by label (first appearance), sample per label."""
    groups = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out = []
    for group in groups.values():
        if len(group) >= num_shots:
            out.extend(random.sample(group, num_shots))
        else:
            out.extend(random.choices(group, k=num_shots) if repeat else group)
    return out


def shuffled_items(n_classes=7, seed=123):
    rng = random.Random(seed)
    items = [Datum(f"/d/img/c{y}/{i}.jpg", y, 0, f"c{y}") for y in range(n_classes) for i in range(3 + 2 * y)]
    rng.shuffle(items)  # labels interleaved: first-appearance order is not 0..n-1
    return items


class _Sampler(DatasetBase):
    def __init__(self):  # only the sampling methods are used
        pass


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_fewshot_cache_samples_like_dassl(tmp_path, seed):
    train, val = shuffled_items(), shuffled_items(seed=9)
    random.seed(seed)
    ref_train = reference_fewshot(train, 5)
    ref_val = reference_fewshot(val, 4)  # CoOp: val gets min(shots, 4)
    random.seed(seed + 100)  # the function re-seeds with `seed` itself
    got_train, got_val = load_or_create_fewshot(
        str(tmp_path / "fs"), "/d/img", train, val, 5, seed, _Sampler().generate_fewshot_dataset)
    assert got_train == ref_train and got_val == ref_val
    assert len(got_train) == 3 + 6 * 5 and len(got_val) == 3 + 6 * 4  # class 0 has 3 items: all kept
    cached = load_or_create_fewshot(
        str(tmp_path / "fs"), "/d/img", train, val, 5, seed, None)  # sample_fn unused: read from cache
    assert cached == (ref_train, ref_val)


def test_unseeded_fewshot_is_not_cached_and_val_none_samples_train_only(tmp_path):
    train = shuffled_items()
    sample = _Sampler().generate_fewshot_dataset
    got, val = load_or_create_fewshot(str(tmp_path), "/d/img", train, None, 2, -1, sample)
    assert val is None and len(got) == 14 and os.listdir(tmp_path) == []
    random.seed(4)
    ref = reference_fewshot(train, 2)  # val None: nothing drawn after train (CoOp's ImageNet)
    assert load_or_create_fewshot(str(tmp_path), "/d/img", train, None, 2, 4, sample) == (ref, None)
    assert random.random() == (random.seed(4), reference_fewshot(train, 2), random.random())[2]


def test_generate_fewshot_repeat_and_multiple_sources():
    items = shuffled_items()
    random.seed(3)
    ref = reference_fewshot(items, 5, repeat=True), reference_fewshot(items, 2)
    random.seed(3)
    a = _Sampler().generate_fewshot_dataset(items, num_shots=5, repeat=True)
    b = _Sampler().generate_fewshot_dataset(items, num_shots=2)
    assert (a, b) == ref and len(a) == 35
    random.seed(3)
    assert _Sampler().generate_fewshot_dataset(items, items, num_shots=5, repeat=True)[0] == a
    assert _Sampler().generate_fewshot_dataset(items, num_shots=-1) is items


def test_dataset_fewshot_sizes_and_cache_is_relative_json(tmp_path):
    make_tree(tmp_path / "a")
    ds = build_dataset(toy_cfg(tmp_path / "a", num_shots=8, seed=5))
    assert len(ds.train_x) == 5 + 6 + 5 + 6 + 5  # fewer than 8 per class: all kept
    assert len(ds.val) == 5 * 2  # val has 2 per class (round(n * 0.2))
    cache = fewshot_cache_path(str(tmp_path / "a" / "toy_folders" / "split_fewshot"), 8, 5)
    with open(cache) as f:
        rows = json.load(f)["train"]
    assert len(rows) == 27 and all(not os.path.isabs(r[0]) and r[0].count("/") == 1 for r in rows)
    assert len(build_dataset(toy_cfg(tmp_path / "a", num_shots=3, seed=5)).train_x) == 15


def test_fewshot_cache_survives_moving_the_root(tmp_path, monkeypatch):
    make_tree(tmp_path / "a")
    first = build_dataset(toy_cfg(tmp_path / "a", num_shots=2, seed=3))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the split or few-shot subset was rebuilt instead of read")

    monkeypatch.setattr(ToyFolders, "build_split", no_rebuild)
    monkeypatch.setattr(ToyFolders, "generate_fewshot_dataset", no_rebuild)
    moved = build_dataset(toy_cfg(tmp_path / "b", num_shots=2, seed=3))
    rel = lambda ds, base: [(os.path.relpath(d.impath, base), d.label, d.classname) for d in ds]  # noqa: E731
    assert rel(moved.train_x, tmp_path / "b") == rel(first.train_x, tmp_path / "a")
    assert rel(moved.val, tmp_path / "b") == rel(first.val, tmp_path / "a")
    assert all(os.path.isfile(d.impath) for d in moved.train_x)
    assert len(moved.train_x) == 10 and moved.classnames[-1] == "wild yak"


def test_split_json_round_trip_with_relative_paths(tmp_path):
    img = str(tmp_path / "imgs")
    train = [Datum(os.path.join(img, "a", f"{i}.jpg"), i % 2, 0, "ab"[i % 2]) for i in range(4)]
    val, test = train[:1], train[1:3]
    save_split(train, val, test, str(tmp_path / "s.json"), img)
    with open(tmp_path / "s.json") as f:
        raw = json.load(f)
    assert raw["train"][1] == ["a/1.jpg", 1, "b"] and set(raw) == {"train", "val", "test"}
    moved = str(tmp_path / "elsewhere")
    got = read_split(str(tmp_path / "s.json"), moved)
    assert [d.impath for d in got[2]] == [os.path.join(moved, "a", f"{i}.jpg") for i in (1, 2)]
    assert [(d.label, d.classname) for d in got[0]] == [(d.label, d.classname) for d in train]


def test_split_trainval_sizes_and_too_small_class():
    items = [Datum(f"{y}/{i}", y, 0, str(y)) for y in range(3) for i in range(10 + y)]
    random.seed(0)
    train, val = split_trainval(items, p_val=0.2)
    assert len(val) == 2 + 2 + 2 and len(train) == 33 - 6 and not set(train) & set(val)
    with pytest.raises(ValueError, match="too few"):
        split_trainval([Datum("x", 0), Datum("y", 0)], p_val=0.2)


def test_read_and_split_data_sizes_and_errors(tmp_path):
    make_tree(tmp_path)
    img = str(tmp_path / "toy_folders" / "images")
    random.seed(0)
    train, val, test = read_and_split_data(img, ignored=("owl",), new_cnames={"cat": "house cat"})
    assert len(train) == 5 + 6 + 5 + 5 and len(val) == 2 * 4 and len(test) == 3 + 4 + 3 + 3
    assert sorted({(d.label, d.classname) for d in train}) == [(0, "house cat"), (1, "dog"), (2, "fox"), (3, "yak")]
    random.seed(0)
    assert read_and_split_data(img, ignored=("owl",), new_cnames={"cat": "house cat"})[0] == train
    os.makedirs(os.path.join(img, "zzz_empty"))
    with pytest.raises(ValueError, match="zzz_empty.*empty"):
        read_and_split_data(img)
    shutil.rmtree(os.path.join(img, "zzz_empty"))
    for f in sorted(os.listdir(os.path.join(img, "cat")))[2:]:
        os.remove(os.path.join(img, "cat", f))
    with pytest.raises(ValueError, match="cat.*too few"):
        read_and_split_data(img)


def test_subsample_base_new_relabels_from_zero():
    items = [Datum(f"{y}", y, 0, f"c{y}") for y in (4, 0, 2, 1, 3)]
    base, = subsample_classes(items, subsample="base")
    new_train, new_test = subsample_classes(items, items[:2], subsample="new")
    assert sorted((d.label, d.classname) for d in base) == [(0, "c0"), (1, "c1"), (2, "c2")]
    assert sorted((d.label, d.classname) for d in new_train) == [(0, "c3"), (1, "c4")]
    assert [(d.label, d.classname) for d in new_test] == [(1, "c4")]
    assert subsample_classes(items, subsample="all")[0] is items
    with pytest.raises(ValueError, match="all, base, new"):
        subsample_classes(items, subsample="novel")


def test_dataset_subsample_from_config(tmp_path):
    make_tree(tmp_path)
    new = build_dataset(toy_cfg(tmp_path, subsample="new"))
    assert new.num_classes == 2 and new.classnames == ["owl", "wild yak"]
    assert {d.label for d in new.test} == {0, 1}


def test_empty_class_and_out_of_range_label_are_errors():
    class Broken(DatasetBase):
        pass

    with pytest.raises(DatasetLabelError, match="Broken.*1 of 3 classes"):
        Broken(train_x=[Datum("a", 0), Datum("b", 2)])
    with pytest.raises(DatasetLabelError, match="Broken: test has labels outside.*\\[5\\]"):
        Broken(train_x=[Datum("a", 0), Datum("b", 1)], test=[Datum("c", 5)])
    with pytest.raises(DatasetLabelError, match="Broken.*empty"):
        Broken(train_x=[])
    ok = Broken(train_x=[Datum("a", 1, 0, "b"), Datum("b", 0, 0, "a")], test=[Datum("c", 1)])
    assert ok.num_classes == 2 and ok.classnames == ["a", "b"] and ok.lab2cname == {0: "a", 1: "b"}


def test_missing_folders_name_dataset_path_and_docs(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"ToyFolders: dataset folder .*toy_folders.*#toyfolders"):
        build_dataset(toy_cfg(tmp_path))
    os.makedirs(tmp_path / "toy_folders")
    with pytest.raises(FileNotFoundError, match=r"image folder .*images"):
        build_dataset(toy_cfg(tmp_path))
    cfg = toy_cfg(tmp_path)
    cfg.DATASET.NAME = "ToyFolder"
    with pytest.raises(KeyError, match="Did you mean \"ToyFolders\""):
        build_dataset(cfg)


def test_no_image_is_checked_at_build_missing_one_fails_at_read(tmp_path):
    make_tree(tmp_path)
    build_dataset(toy_cfg(tmp_path))  # writes the split file
    victim = os.path.join(tmp_path, "toy_folders", "images", "dog", "dog_003.png")
    os.remove(victim)
    for folder in ("cat", "fox"):  # whole classes gone: still builds from the split file
        shutil.rmtree(os.path.join(tmp_path, "toy_folders", "images", folder))
    ds = build_dataset(toy_cfg(tmp_path))
    assert victim in {d.impath for d in ds.train_x + ds.val + ds.test}
    with pytest.raises(FileNotFoundError, match="dog_003.png"):
        read_image(victim)


def test_datamanager_batches_are_dicts_of_pixels_in_unit_range(tmp_path):
    make_tree(tmp_path)
    dm = DataManager(toy_cfg(tmp_path, num_shots=2))
    assert dm.num_classes == 5 and dm.lab2cname[4] == "wild yak" and dm.train_loader_u is None
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "impath", "index", "domain"}
    assert batch["img"].shape == (4, 3, 16, 16) and batch["img"].dtype == torch.float32
    assert 0.0 <= batch["img"].min() and batch["img"].max() <= 1.0
    assert len(dm.train_loader_x) == 10 // 4  # drop_last
    test_batches = list(dm.test_loader)
    assert sum(len(b["label"]) for b in test_batches) == len(dm.dataset.test)
    assert torch.equal(test_batches[0]["index"], torch.arange(5))
    assert dm.val_loader is not None


def test_transforms_with_and_without_normalize(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 30))
    cfg = toy_cfg(tmp_path)
    test_tfm = build_transform(cfg, is_train=False)
    out = test_tfm(img)
    assert out.shape == (3, 16, 16) and out.max() <= 1.0 and out[0].min() == 1.0
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    normed = build_transform(cfg, is_train=False)(img)
    mean, std = cfg.INPUT.PIXEL_MEAN[0], cfg.INPUT.PIXEL_STD[0]
    assert torch.allclose(normed[0], (out[0] - mean) / std) and normed.min() < 0
    assert build_transform(cfg, is_train=True)(img).shape == (3, 16, 16)
    cfg.INPUT.TRANSFORMS = ("random_flip", "cutout", "gaussian_noise", "random_translation")
    assert build_transform(cfg, is_train=True)(img).shape == (3, 16, 16)
    cfg.INPUT.TRANSFORMS = ("random_flips",)
    with pytest.raises(ValueError, match="random_flips.*random_flip"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.TRANSFORMS = ()
    cfg.INPUT.INTERPOLATION = "cubic"
    with pytest.raises(ValueError, match="bicubic"):
        build_transform(cfg, is_train=False)
