"""The toy data sets, tiny CLIPs and trained runs that several test modules share.

``conftest.py`` imports the fixtures defined here, so every test module gets
them without importing another test module. What they build is made once per
test session (:func:`once`), even where a module still imports a fixture
function into its own namespace (``from test_apt import toy_env``), which
makes pytest register a second copy of the fixture.

The helpers (``write_toy_data``, ``pretrain_toy_clip``, ``make_cfg``,
``make_trainer``, ``one_batch``) stay importable from ``test_apt`` as before.
"""
from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping

import clip
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ampt.api import DATASET_REGISTRY, TRAINER_REGISTRY, DatasetBase, Datum, build_trainer
from ampt.config import setup_cfg
from ampt.models import ImageNormalizer, save_clip_state_dict
from ampt.models.tiny import build_tiny_clip
from ampt.plugins import load_plugins
from ampt.utils.logger import reset_logger

REPO = Path(__file__).resolve().parent.parent
APT_DIGITS = REPO / "configs" / "trainers" / "APT" / "digits.yaml"
COOP_DIGITS = REPO / "configs" / "trainers" / "CoOp" / "digits.yaml"
DIGITS = REPO / "configs" / "datasets" / "digits.yaml"
TOY_SETS = {  # dataset name -> (folder, class names); colours make the classes separable
    "AptToy": ("apt_toy", ["red", "green", "blue", "white"]),
    "AptToyShapes": ("apt_toy_shapes", ["dark", "light", "yellow"]),
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (230, 230, 230),
           "dark": (20, 20, 20), "light": (160, 160, 160), "yellow": (220, 220, 30)}
SPLITS = {"train": 4, "val": 1, "test": 3}  # images per class
DEMO_SHAPE = {"vision_width": 96, "vision_layers": 3}  # the demo's tiny CLIP (configs/trainers/*/digits.yaml)

load_plugins("builtin")


# ---------------------------------------------------------------- build once per session

_ONCE: Dict[str, Any] = {}
_ONCE_LOCK = threading.Lock()


def once(key: str, make: Callable[[], Any]) -> Any:
    """``make()`` the first time ``key`` is asked for in this process, the same object afterwards."""
    with _ONCE_LOCK:
        if key not in _ONCE:
            _ONCE[key] = make()
        return _ONCE[key]


class LazyRuns(Mapping):
    """name -> ``train(name)``, trained when a test first asks for it: selecting one test trains one run."""

    def __init__(self, names: Iterable[str], train: Callable[[str], Any]) -> None:
        self._names = list(names)
        self._train = train
        self._done: Dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._done:
            self._done[name] = self._train(name)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# ---------------------------------------------------------------- the APT toy data sets

def _toy_lists(root: Path, folder: str, classnames: List[str]) -> Dict[str, List[Datum]]:
    base = root / folder
    return {split: [Datum(str(p), int(p.parent.name), classname=classnames[int(p.parent.name)])
                    for p in sorted((base / split).glob("*/*.png"))] for split in SPLITS}


@DATASET_REGISTRY.register()
class AptToy(DatasetBase):
    """4 colour classes of 32x32 noisy images under ROOT/apt_toy/<split>/<label>/."""

    def __init__(self, cfg) -> None:
        lists = _toy_lists(Path(cfg.DATASET.ROOT), *TOY_SETS["AptToy"])
        super().__init__(train_x=lists["train"], val=lists["val"], test=lists["test"])


@DATASET_REGISTRY.register()
class AptToyShapes(DatasetBase):
    """3 other classes, the target of the cross-dataset tests."""

    def __init__(self, cfg) -> None:
        lists = _toy_lists(Path(cfg.DATASET.ROOT), *TOY_SETS["AptToyShapes"])
        super().__init__(train_x=lists["train"], val=lists["val"], test=lists["test"])


def write_toy_data(root: Path) -> Path:
    rng = np.random.RandomState(0)
    for folder, classnames in TOY_SETS.values():
        for split, count in SPLITS.items():
            for label, name in enumerate(classnames):
                out = root / folder / split / str(label)
                out.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    pixels = np.clip(np.array(COLOURS[name]) + rng.randint(-40, 40, (32, 32, 3)), 0, 255)
                    Image.fromarray(pixels.astype(np.uint8)).save(out / f"{i}.png")
    return root


def write_colour_digits(root: Path) -> Path:
    """Four noisy colour classes in the Digits layout (split file + images), read by the Digits plug-in."""
    rng = np.random.RandomState(1)
    names = TOY_SETS["AptToy"][1]
    split: dict = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        folder = root / "digits" / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(16):
            pixels = np.clip(np.array(COLOURS[name]) + rng.randint(-90, 90, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
            part = "train" if i < 4 else "val" if i < 6 else "test"
            split[part].append([f"{name}/{i}.png", label, name])
    (root / "digits" / "split_zhou_Digits.json").write_text(json.dumps(split))
    (root / "digits" / "pretrain.json").write_text(json.dumps({"pretrain": []}))
    return root


def pretrain_toy_clip(root: Path, steps: int = 15) -> torch.nn.Module:
    """The tiny CLIP, fitted for a few steps to caption the toy train images (so accuracies are not 0)."""
    torch.manual_seed(0)
    model = build_tiny_clip(seed=0).train()
    model.token_embedding.requires_grad_(False)
    names, images, labels = [], [], []
    for folder, classnames in TOY_SETS.values():
        for p in sorted((root / folder / "train").glob("*/*.png")):
            images.append(torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255)
            labels.append(len(names) + int(p.parent.name))
        names += classnames
    x, y = ImageNormalizer()(torch.stack(images)), torch.tensor(labels)
    tokens = clip.tokenize([f"a photo of a {name}." for name in names])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        image = F.normalize(model.encode_image(x), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        loss = F.cross_entropy(20 * image @ text.t(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# ---------------------------------------------------------------- trainers on the toy data

def make_cfg(toy_env, out: Path, trainer: str = "APT", config: Path = APT_DIGITS, dataset: str = "AptToy",
             **flags) -> object:
    """The frozen config train.py would build (same merge order and guards)."""
    root, backbone = toy_env
    args = argparse.Namespace(root=str(root), output_dir=str(out), trainer=trainer, config_file=str(config),
                              dataset_config_file="", seed=flags.pop("seed", 1), opts=list(flags.pop("opts", [])))
    for key in ("eps", "alpha", "steps", "adv_prompt"):
        setattr(args, key, flags.pop(key, None))
    assert not flags, flags
    args.opts += ["DATASET.NAME", dataset, "MODEL.BACKBONE.NAME", str(backbone), "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]
    return setup_cfg(args, TRAINER_REGISTRY.get(trainer))


def make_trainer(toy_env, tmp_path, **flags):
    torch.manual_seed(0)
    return build_trainer(make_cfg(toy_env, tmp_path / "run", **flags))


def one_batch(trainer):
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the last batch: no LR step
    return next(iter(trainer.train_loader_x))


# ---------------------------------------------------------------- fixtures (imported by conftest.py)

@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    """No progress bars; the log file handlers a test's run opened are closed after it."""
    monkeypatch.setenv("AMPT_NO_PROGRESS", "1")
    yield
    reset_logger()


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """The AptToy and AptToyShapes images (read only: a test that writes data makes its own)."""
    return once("toy_root", lambda: write_toy_data(tmp_path_factory.mktemp("toy") / "data"))


@pytest.fixture(scope="session")
def toy_env(toy_root, tmp_path_factory):
    """(data root, tiny CLIP checkpoint fitted briefly to the toy images): the APT, evaluate, loss tests."""
    return once("toy_env", lambda: (toy_root, save_clip_state_dict(
        pretrain_toy_clip(toy_root), tmp_path_factory.mktemp("toy_clip") / "tiny_clip.pt")))


@pytest.fixture(scope="session")
def demo_shape_env(toy_root, tmp_path_factory):
    """(data root, untrained tiny CLIP of the demo's shape): every trainer's digits.yaml fits it."""
    return once("demo_shape_env", lambda: (toy_root, save_clip_state_dict(
        build_tiny_clip(seed=0, **DEMO_SHAPE), tmp_path_factory.mktemp("demo_shape_clip") / "tiny.pt")))


@pytest.fixture(scope="session")
def colour_digits_env(toy_env, tmp_path_factory):
    """(data root, the toy CLIP): 4 colour classes in the Digits layout, 16 train and 40 test images."""
    return once("colour_digits_env", lambda: (
        write_colour_digits(tmp_path_factory.mktemp("colour_digits") / "data"), toy_env[1]))


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """The embedded Digits data (``prepare_digits``), read only."""
    from ampt.demo.digits_data import prepare_digits

    def make() -> Path:
        root = tmp_path_factory.mktemp("digits") / "data"
        prepare_digits(root)
        return root

    return once("digits_root", make)
