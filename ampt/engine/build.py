"""The built-in engine's trainer registry and ``build_trainer`` (Dassl's names)."""
from __future__ import annotations

import logging
from typing import Any

from ..registry import Registry
from ..errors import UserError

logger = logging.getLogger(__name__)

TRAINER_REGISTRY = Registry("trainer")


def build_trainer(cfg: Any) -> Any:
    """Instantiate the trainer named ``cfg.TRAINER.NAME``; an unknown name lists the valid ones."""
    name = cfg.TRAINER.NAME
    if not name:
        raise UserError(
            "No trainer given: pass --trainer NAME or set TRAINER.NAME "
            f"(registered: {', '.join(TRAINER_REGISTRY.registered_names()) or 'none; were the plug-ins loaded?'})"
        )
    trainer_cls = TRAINER_REGISTRY.get(name)
    if cfg.VERBOSE:
        logger.info("Loading trainer: %s", name)
    return trainer_cls(cfg)
