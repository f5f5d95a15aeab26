"""A CLIP backbone's pixel normalization as a module, so data pipelines yield [0, 1] pixels.

OpenAI's mean/std are the default; an open_clip model brings its own
(e.g. 0.5/0.5 for some LAION and SigLIP checkpoints): use
:meth:`ImageNormalizer.for_backbone`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageNormalizer(nn.Module):
    """``(x - mean) / std`` per channel; ``x`` is ``[B, 3, H, W]`` with pixels in [0, 1].

    Keeping this inside the model lets attacks work in pixel space, where eps
    is measured in 1/255 units.
    """

    def __init__(self, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    @classmethod
    def for_backbone(cls, clip_model: nn.Module) -> "ImageNormalizer":
        """The normalization the loaded backbone was trained with (its :class:`BackboneInfo`)."""
        from .backbone import backbone_info  # backbone imports this module's constants

        info = backbone_info(clip_model)
        return cls(info.mean, info.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
