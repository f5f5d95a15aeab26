"""``ClipTrainer`` on ``--engine dassl``: it may use only what Dassl's ``TrainerX`` and ``RunMixin`` define.

Dassl is not installed in CI, so a stand-in ``dassl`` package with Dassl's
``TrainerBase`` update methods (``model_zero_grad``, ``model_backward``,
``model_update``, ``model_backward_and_update``: no ``sync_gradients``,
which only the built-in engine has) is put on the path of a fresh process
that selects the dassl engine before ``ampt.trainer_base.clip`` is imported.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DASSL_ENGINE = '''
from collections import OrderedDict

import torch

from ampt.registry import Registry

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerBase:
    """Dassl.pytorch's TrainerBase: registered models and their updates (dassl/engine/trainer.py)."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        real = list(self._models.keys())
        if names is None:
            return real
        return [names] if isinstance(names, str) else list(names)

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg


class TrainerX(SimpleTrainer):
    pass
'''

STAND_IN_DASSL = {
    "__init__.py": "",
    "engine.py": DASSL_ENGINE,
    "config.py": "from yacs.config import CfgNode as CN\n\ndef get_cfg_default():\n    return CN()\n",
    "data/__init__.py": "DataManager = object\n",
    "data/datasets.py": "from ampt.registry import Registry\nDATASET_REGISTRY = Registry('DATASET')\n",
}

ONE_FP16_STEP = '''
import torch
import dassl.engine
from ampt.engine.select import use_engine

use_engine("dassl")
from ampt.trainer_base.clip import ClipTrainer


class Probe(ClipTrainer):
    def __init__(self):  # Dassl's TrainerBase only: no config, data or CLIP to build
        dassl.engine.TrainerBase.__init__(self)


trainer = Probe()
assert not hasattr(trainer, "sync_gradients") and dassl.engine.TrainerX in type(trainer).__mro__
layer = torch.nn.Linear(2, 1)
trainer.register_model("layer", layer, torch.optim.SGD(layer.parameters(), lr=0.1), None)
trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # what TRAINER.<X>.PREC fp16 sets up
before = layer.weight.detach().clone()
trainer.model_backward_and_update(layer(torch.ones(1, 2)).sum())
step = (layer.weight.detach() - before) / -0.1  # the unscaled gradient: d(w.x + b)/dw = x = 1
assert torch.allclose(step, torch.ones_like(step)), step
print("one fp16 step on the dassl engine")
'''


def test_fp16_update_on_the_dassl_engine_needs_no_builtin_engine_method(tmp_path):
    for name, text in STAND_IN_DASSL.items():
        (tmp_path / "dassl" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dassl" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", ONE_FP16_STEP], cwd=REPO, capture_output=True, text=True,
                          env={**_clean_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "one fp16 step on the dassl engine" in done.stdout


def _clean_env():
    """One process (no torchrun variables) and only the stand-in and the repository on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTHONPATH")}
