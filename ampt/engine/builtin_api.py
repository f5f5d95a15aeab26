"""The Dassl API names backed by the built-in engine (``--engine builtin``)."""
from __future__ import annotations

from types import SimpleNamespace


def api() -> SimpleNamespace:
    """Namespace of TRAINER_REGISTRY, DATASET_REGISTRY, TrainerX, SimpleTrainer,
    build_trainer, DataManager, DatasetBase, Datum (and get_cfg_default)."""
    from .. import data
    from ..config import get_cfg_default
    from .build import TRAINER_REGISTRY, build_trainer
    from .trainer import SimpleTrainer, TrainerX

    return SimpleNamespace(
        TRAINER_REGISTRY=TRAINER_REGISTRY,
        DATASET_REGISTRY=data.DATASET_REGISTRY,
        TrainerX=TrainerX,
        SimpleTrainer=SimpleTrainer,
        build_trainer=build_trainer,
        DataManager=data.DataManager,
        DatasetBase=data.DatasetBase,
        Datum=data.Datum,
        get_cfg_default=get_cfg_default,
    )
