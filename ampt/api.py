"""The Dassl API names plug-ins use, resolved to the selected engine.

``from ampt.api import TRAINER_REGISTRY, TrainerX`` gives the built-in
engine's objects, or Dassl's when ``train.py --engine dassl`` selected it.
Names: TRAINER_REGISTRY, DATASET_REGISTRY, TrainerX, SimpleTrainer,
build_trainer, DataManager, DatasetBase, Datum, get_cfg_default.
"""
from __future__ import annotations

from typing import Any

from .engine.select import active_api


def __getattr__(name: str) -> Any:
    api = active_api()
    if not hasattr(api, name):
        raise AttributeError(f"ampt.api has no name {name!r}; valid: {sorted(vars(api))}")
    return getattr(api, name)
