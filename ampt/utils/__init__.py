"""Dassl's ``dassl.utils`` names used by trainers and datasets.

``load_checkpoint``/``save_checkpoint``/``load_pretrained_weights`` live in
:mod:`ampt.engine.checkpoint` and are resolved lazily here, so importing
``ampt.utils`` never pulls in the engine.
"""
from __future__ import annotations

from typing import Any

from .env import collect_env_info
from .io import listdir_nohidden, mkdir_if_missing, read_json, write_json
from .logger import setup_logger
from .seed import set_random_seed

_CHECKPOINT_NAMES = ("load_checkpoint", "save_checkpoint", "load_pretrained_weights")

__all__ = [
    "collect_env_info",
    "listdir_nohidden",
    "mkdir_if_missing",
    "read_json",
    "write_json",
    "setup_logger",
    "set_random_seed",
    *_CHECKPOINT_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _CHECKPOINT_NAMES:
        from ..engine import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'ampt.utils' has no attribute {name!r}")
