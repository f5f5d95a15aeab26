"""AMPT_PLUGIN_PATH: a trainer and a dataset that live in another folder train through train.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ampt.models import build_tiny_clip, save_clip_state_dict
from ampt.plugins import PLUGIN_PATH_ENV, plugin_path

REPO = Path(__file__).resolve().parent.parent

TRAINER = '''
"""A method in its own repository: CoOp's prompt, cross-entropy, under another name."""
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.trainer_base.clip import ClipTrainer
from ampt.method_kits.coop_prompt import add_coop_prompt_keys, build_coop_prompt_model


@TRAINER_REGISTRY.register()
class PluginProbe(ClipTrainer):
    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.PLUGINPROBE = CN()
        add_coop_prompt_keys(cfg.TRAINER.PLUGINPROBE)

    def build_model(self):
        build_coop_prompt_model(self, self.cfg.TRAINER.PLUGINPROBE)

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        loss = F.cross_entropy(self.model(image), label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}
'''

DATASET = '''
from pathlib import Path

from ampt.api import DATASET_REGISTRY, DatasetBase, Datum

NAMES = ["dark", "light"]


@DATASET_REGISTRY.register()
class PluginShades(DatasetBase):
    def __init__(self, cfg):
        base = Path(cfg.DATASET.ROOT) / "shades"
        items = [Datum(str(p), int(p.parent.name), classname=NAMES[int(p.parent.name)])
                 for p in sorted(base.glob("*/*.png"))]
        super().__init__(train_x=items, val=items, test=items)
'''

CONFIG = '''
TRAINER:
  PLUGINPROBE:
    N_CTX: 2
    PREC: "fp32"
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 4
  NUM_WORKERS: 0
INPUT:
  SIZE: (32, 32)
  TRANSFORMS: []
OPTIM:
  NAME: "sgd"
  LR: 0.002
  MAX_EPOCH: 1
'''


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_plugin_from_path_trains(tmp_path, monkeypatch, capsys):
    plugin = tmp_path / "my_method"
    _write(plugin / "trainers" / "probe.py", TRAINER)
    _write(plugin / "datasets" / "shades.py", DATASET)
    config = _write(plugin / "configs" / "probe.yaml", CONFIG)
    for label, value in enumerate((30, 220)):
        folder = tmp_path / "data" / "shades" / str(label)
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), value + i, np.uint8)).save(folder / f"{i}.png")
    backbone = save_clip_state_dict(build_tiny_clip(seed=0), tmp_path / "tiny.pt")
    out = tmp_path / "run"
    env = {**os.environ, PLUGIN_PATH_ENV: f"{tmp_path / 'missing_is_not_ok'}", "AMPT_NO_PROGRESS": "1",
           "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "train.py", "--root", str(tmp_path / "data"), "--trainer", "PluginProbe",
            "--config-file", str(config), "--output-dir", str(out), "--seed", "1",
            "DATASET.NAME", "PluginShades", "MODEL.BACKBONE.NAME", str(backbone)]
    import train

    monkeypatch.setenv(PLUGIN_PATH_ENV, env[PLUGIN_PATH_ENV])
    monkeypatch.setattr(sys, "argv", argv[1:])
    assert train.cli() == 2  # a wrong entry: one line, exit code 2, before anything is built
    err = capsys.readouterr().err
    assert "AMPT_PLUGIN_PATH entry" in err and "Traceback" not in err

    env[PLUGIN_PATH_ENV] = f"{plugin}{os.pathsep}"
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["trainer"] == "PluginProbe" and results["run"]["finished"]
    assert (out / "prompt_learner" / "model.pth.tar-1").is_file()


def test_plugin_path_entries(tmp_path, monkeypatch):
    (tmp_path / "a" / "datasets").mkdir(parents=True)
    monkeypatch.setenv(PLUGIN_PATH_ENV, f"{tmp_path / 'a'}{os.pathsep}{os.pathsep}")
    assert plugin_path() == [(tmp_path / "a").resolve()]
    monkeypatch.setenv(PLUGIN_PATH_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no trainers/, datasets/, objectives/ or configs/ folder"):
        plugin_path()
