"""Optimizers and LR schedulers with Dassl's names and ``cfg.OPTIM`` keys."""
from .lr_scheduler import AVAI_SCHEDS, WarmupLR, build_lr_scheduler
from .optimizer import AVAI_OPTIMS, build_optimizer

__all__ = ["AVAI_OPTIMS", "AVAI_SCHEDS", "WarmupLR", "build_lr_scheduler", "build_optimizer"]
