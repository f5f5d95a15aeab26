"""Seeding. Seed 0 is a seed: callers test ``seed >= 0`` / ``is not None``, never truthiness."""
from __future__ import annotations

import random

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices), as Dassl does."""
    if seed < 0:
        raise ValueError(f"Seed must be >= 0 (got {seed}); -1 means 'no seed' and is not passed here")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
