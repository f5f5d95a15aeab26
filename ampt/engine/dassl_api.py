"""The Dassl API names backed by an installed Dassl (``--engine dassl``).

Registries, ``DataManager`` and ``build_trainer`` are Dassl's own, so the
project's trainers and datasets register there. ``TrainerX`` is Dassl's
class with :class:`~ampt.engine.trainer.RunMixin` in front: safe checkpoints,
the resume policy, ``results.json`` and the progress bar. Trainers build their
scheduler with :mod:`ampt.optim` (Dassl's own raises ``TypeError`` on
PyTorch >= 2.7). ``Datum``/``DatasetBase`` are the project's (duck-compatible
with Dassl's DataManager). Not tested in CI (Dassl is not on PyPI).
"""
from __future__ import annotations

import logging
from types import ModuleType, SimpleNamespace
from typing import Tuple

from yacs.config import CfgNode as CN

from ..errors import MissingDependencyError

INSTALL_HINT = (
    "--engine dassl needs Dassl.pytorch, which is not on PyPI. Install it with:\n"
    "  git clone https://github.com/KaiyangZhou/Dassl.pytorch\n"
    "  pip install -e Dassl.pytorch --no-deps\n"
    "  pip install yacs gdown tabulate tensorboard pandas\n"
    "  pip install --no-deps wilds\n"
    "(--no-deps skips its pinned linters and wilds' own dependencies; the last two lines are "
    "what its imports need.) "
    "Or use the built-in engine: --engine builtin (the default)."
)


def _import_dassl() -> Tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """dassl.engine, dassl.data, dassl.data.datasets, dassl.config.

    Dassl's ``wilds_base`` module calls ``logging.disable(logging.WARNING)`` at
    import, which would silence every INFO log of the run (the evaluator block
    included); the previous setting is restored.
    """
    previous = logging.root.manager.disable
    try:
        import dassl.config as dassl_config
        import dassl.data as dassl_data
        import dassl.data.datasets as dassl_datasets
        import dassl.engine as dassl_engine
    except ImportError as err:
        raise MissingDependencyError(f"{INSTALL_HINT}\n(import failed: {err})") from None
    finally:
        logging.disable(previous)
    return dassl_engine, dassl_data, dassl_datasets, dassl_config


def _add_missing(target: CN, source: CN) -> None:
    """Copy into ``target`` every key of ``source`` it lacks (Dassl's values win)."""
    for key, value in source.items():
        if key not in target:
            target[key] = value.clone() if isinstance(value, CN) else value
        elif isinstance(value, CN) and isinstance(target[key], CN):
            _add_missing(target[key], value)


def get_cfg_default() -> CN:
    """Dassl's defaults plus the project's keys (ADV, ROBUST_WEIGHTS, DOWNLOAD_ROOT, SUBSAMPLE_CLASSES)."""
    from ..config.defaults import get_cfg_default as ours

    *_, dassl_config = _import_dassl()
    cfg = dassl_config.get_cfg_default()
    _add_missing(cfg, ours())
    # Dassl's boolean (ImageNet weights for its own backbones, unused by CLIP trainers) becomes
    # ours: the open_clip pretrained tag or file
    cfg.MODEL.BACKBONE.PRETRAINED = ours().MODEL.BACKBONE.PRETRAINED
    return cfg


def api() -> SimpleNamespace:
    """The same names as :func:`ampt.engine.builtin_api.api`, resolved to Dassl."""
    dassl_engine, dassl_data, dassl_datasets, _ = _import_dassl()
    from ..data import DatasetBase, Datum
    from .evaluator import build_evaluator
    from .trainer import RunMixin

    class SimpleTrainer(RunMixin, dassl_engine.SimpleTrainer):
        """Dassl's SimpleTrainer behind RunMixin; the evaluator logs (Dassl's prints)."""

        engine_name = "dassl"

        def __init__(self, cfg):
            super().__init__(cfg)
            # Dassl's evaluator prints its block to stdout only; ours logs it to log.txt too.
            self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)

    class TrainerX(SimpleTrainer, dassl_engine.TrainerX):
        """Dassl's TrainerX behind RunMixin."""

    return SimpleNamespace(
        TRAINER_REGISTRY=dassl_engine.TRAINER_REGISTRY,
        DATASET_REGISTRY=dassl_datasets.DATASET_REGISTRY,
        TrainerX=TrainerX,
        SimpleTrainer=SimpleTrainer,
        build_trainer=dassl_engine.build_trainer,
        DataManager=dassl_data.DataManager,
        DatasetBase=DatasetBase,
        Datum=Datum,
        get_cfg_default=get_cfg_default,
    )
