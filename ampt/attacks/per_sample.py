"""Random starts drawn per image, so an image's start does not depend on its batch.

A start drawn for a whole batch from one generator gives an image noise
that depends on its position in the batch; drawn here, each image has its
own generator seeded by a caller-chosen integer (e.g. a hash of the run's
seed, the epoch and the image's dataset index), so splitting a batch across
processes changes nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def uniform_noise(images: Tensor, eps: float, seeds: Sequence[int]) -> Tensor:
    """Uniform noise in [-eps, eps] (pixel units) shaped like ``images``; one seed per image."""
    if len(seeds) != images.shape[0]:
        raise ValueError(f"need one seed per image (got {len(seeds)} seeds for {images.shape[0]} images)")
    noise = torch.empty_like(images)
    for row, seed in zip(noise, seeds):
        generator = torch.Generator(device=images.device).manual_seed(int(seed))
        row.uniform_(-eps, eps, generator=generator)
    return noise


def uniform_start(images: Tensor, eps: float, seeds: Sequence[int]) -> Tensor:
    """``images`` plus uniform noise in [-eps, eps] (pixel units), clamped to [0, 1]; one seed per image."""
    return torch.clamp(images + uniform_noise(images, eps, seeds), 0, 1)
