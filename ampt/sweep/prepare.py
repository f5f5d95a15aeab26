"""``prepare:`` steps that make a sweep runnable from a fresh clone.

``digits-demo`` writes the embedded Digits dataset under ``data_root`` and
pretrains the demo's tiny robust CLIP into ``<output_root>/backbone/`` (both
cached: a second call does nothing), as ``python -m ampt.demo`` does.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .expand import DEMO_BACKBONE
from .spec import Sweep
from .state import SWEEP_DIR, FileLock

logger = logging.getLogger(__name__)


def prepare(sweep: Sweep) -> None:
    """Run the sweep's ``prepare`` step once, under a lock shared by concurrent sweep processes."""
    if sweep.prepare != "digits-demo":
        return
    from ..demo.digits_data import prepare_digits
    from ..demo.pretrain import pretrain_tiny_clip

    with FileLock(Path(sweep.output_root) / SWEEP_DIR / "prepare.lock", blocking=True):
        prepare_digits(sweep.data_root)
        backbone = Path(sweep.output_root) / DEMO_BACKBONE
        pretrain_tiny_clip(sweep.data_root, backbone, adversarial=True)
        logger.info("Digits data in %s, tiny CLIP backbone %s", sweep.data_root, backbone)
