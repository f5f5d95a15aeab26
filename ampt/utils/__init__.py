"""Ground-floor helpers every layer may use (io, logging, seeds, locks, torchrun); nothing here imports the rest of ampt.

Dassl's ``dassl.utils`` names used by trainers and datasets are here, except
``load_checkpoint``/``save_checkpoint``/``load_pretrained_weights``: import
them from :mod:`ampt.engine.checkpoint`.
"""
from __future__ import annotations

from .env import collect_env_info
from .io import listdir_nohidden, mkdir_if_missing, read_json, write_json
from .logger import setup_logger
from .seed import set_random_seed

__all__ = [
    "collect_env_info",
    "listdir_nohidden",
    "mkdir_if_missing",
    "read_json",
    "write_json",
    "setup_logger",
    "set_random_seed",
]
