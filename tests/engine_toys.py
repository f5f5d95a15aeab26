"""The built-in engine's toy: a linear trainer on a tiny generated image set (test_engine, test_run_integrity).

``conftest.py`` imports the ``data_root`` fixture; the helpers stay importable
from ``test_engine`` as before.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ampt.api import DATASET_REGISTRY, TRAINER_REGISTRY, DatasetBase, Datum, TrainerX
from ampt.config import get_cfg_default
from ampt.optim import build_lr_scheduler, build_optimizer

SPLITS = {"train": 8, "val": 2, "test": 4}  # images per class


@DATASET_REGISTRY.register()
class EngineToyData(DatasetBase):
    """Two classes of 8x8 images: dark (0) and bright (1), under ROOT/engine_toy/<split>/<label>/."""

    def __init__(self, cfg) -> None:
        root = Path(cfg.DATASET.ROOT) / "engine_toy"
        lists = {}
        for split in SPLITS:
            lists[split] = [
                Datum(str(p), int(p.parent.name), classname=["dark", "bright"][int(p.parent.name)])
                for p in sorted((root / split).glob("*/*.png"))
            ]
        super().__init__(train_x=lists["train"], val=lists["val"], test=lists["test"])


@TRAINER_REGISTRY.register()
class EngineToyTrainer(TrainerX):
    """A linear classifier; CoOp's pattern of stepping the LR at the last batch."""

    nan_at_epoch = -1
    stop_at_epoch = -1

    def build_model(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, self.num_classes)).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("linear", self.model, self.optim, self.sched)
        self.epoch_lrs = {}

    def before_epoch(self) -> None:
        if self.epoch == self.stop_at_epoch:
            raise KeyboardInterrupt
        self.epoch_lrs[self.epoch] = self.get_current_lr()

    def forward_backward(self, batch):
        image, label, _ = self.parse_batch_train(batch)
        loss = F.cross_entropy(self.model(image), label)
        if self.epoch == self.nan_at_epoch:
            loss = loss * float("nan")
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """EngineToyData's images (read only)."""
    root = tmp_path_factory.mktemp("engine_data")
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        for label in (0, 1):
            folder = root / "engine_toy" / split / str(label)
            folder.mkdir(parents=True)
            for i in range(n):
                mean = 60 if label == 0 else 190
                pixels = np.clip(rng.normal(mean, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def make_cfg(data_root: Path, out: Path, **over):
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "EngineToyData"
    cfg.DATASET.ROOT = str(data_root)
    cfg.OUTPUT_DIR = str(out)
    cfg.TRAINER.NAME = "EngineToyTrainer"
    cfg.SEED = 0
    cfg.USE_CUDA = False
    cfg.VERBOSE = False
    cfg.INPUT.SIZE = (8, 8)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.SAMPLER = "SequentialSampler"  # deterministic: resume must match exactly
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH = "sgd", 0.05, 3
    cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE = "cosine", 1, "constant"
    cfg.TRAIN.CHECKPOINT_FREQ = 1
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    cfg.freeze()
    return cfg


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _train_argv(data_root: Path, out: Path, *extra: str):
    return ["--root", str(data_root), "--trainer", "EngineToyTrainer", "--output-dir", str(out),
            "--seed", "0", *extra, "DATASET.NAME", "EngineToyData", "INPUT.SIZE", "(8, 8)",
            "DATALOADER.NUM_WORKERS", "0", "OPTIM.NAME", "sgd", "OPTIM.MAX_EPOCH", "2", "USE_CUDA", "False"]
