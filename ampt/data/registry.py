"""The dataset registry and ``build_dataset`` (Dassl's names).

Under the built-in engine ``ampt.api.DATASET_REGISTRY`` is this object, so
plug-ins in ``datasets/`` register here.
"""
from __future__ import annotations

import logging
from typing import Any

from ..registry import Registry
from ..errors import UserError

logger = logging.getLogger(__name__)

DATASET_REGISTRY = Registry("dataset")


def build_dataset(cfg: Any) -> Any:
    """Instantiate the dataset class registered as ``cfg.DATASET.NAME`` with ``cfg``.

    An unknown name raises ``KeyError`` listing the registered names and the
    closest one.
    """
    name = cfg.DATASET.NAME
    if not name:
        raise UserError(
            "DATASET.NAME is empty; pass --dataset-config-file configs/datasets/<Name>.yaml. "
            f"Registered datasets: {', '.join(DATASET_REGISTRY.registered_names()) or '(none)'}"
        )
    dataset_class = DATASET_REGISTRY.get(name)
    if getattr(cfg, "VERBOSE", False):
        logger.info(f"Loading dataset: {name}")
    return dataset_class(cfg)
