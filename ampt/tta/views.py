"""Random augmented views of one image, differentiable in the image (so an attack can go through them).

View 0 is the image itself; the others are random resized crops (area
``scale``, aspect ratio in ``[3/4, 4/3]``) resampled bilinearly to the
image's size, each flipped horizontally with probability 1/2: the
``RandomResizedCrop`` + ``RandomHorizontalFlip`` of TPT's pre-augmentation,
written with ``affine_grid`` / ``grid_sample`` so that the views are a
differentiable function of the pixels. The draws come from the caller's
generator.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_parameters(n: int, generator: torch.Generator, scale: Tuple[float, float] = (0.08, 1.0),
                    ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """``[n, 5]``: per view the crop's width and height (fractions of the image), centre (in [-1, 1]) and flip sign."""
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    return torch.stack([width, height, cx, cy, flip], dim=1)


def augmented_views(image: Tensor, n_views: int, generator: torch.Generator,
                    scale: Tuple[float, float] = (0.08, 1.0)) -> Tensor:
    """``[n_views, C, H, W]`` from one ``[C, H, W]`` image in [0, 1]: the image, then ``n_views - 1`` random views."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1 (got {n_views})")
    if n_views == 1:
        return image.unsqueeze(0)
    p = crop_parameters(n_views - 1, generator, scale).to(device=image.device, dtype=image.dtype)
    theta = torch.zeros(n_views - 1, 2, 3, device=image.device, dtype=image.dtype)
    theta[:, 0, 0] = p[:, 0] * p[:, 4]
    theta[:, 0, 2] = p[:, 2]
    theta[:, 1, 1] = p[:, 1]
    theta[:, 1, 2] = p[:, 3]
    batch = image.unsqueeze(0).expand(n_views - 1, -1, -1, -1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    crops = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.cat([image.unsqueeze(0), crops], dim=0)
