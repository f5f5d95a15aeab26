"""The built-in Dassl-compatible engine: trainers, checkpoints, evaluator, progress.

``ampt.engine.select`` chooses between this engine and an installed Dassl;
plug-ins import the engine's names from :mod:`ampt.api`.
"""
from .build import TRAINER_REGISTRY, build_trainer
from .trainer import RunMixin, SimpleTrainer, TrainerBase, TrainerX

__all__ = ["TRAINER_REGISTRY", "RunMixin", "SimpleTrainer", "TrainerBase", "TrainerX", "build_trainer"]
