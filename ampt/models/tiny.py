"""A tiny CLIP built with the ``clip`` package's own model class.

Used by the tests and the embedded Digits demo. It is saved as a plain state
dict and loaded through the same path as real CLIP weights
(``clip.model.build_model`` infers the architecture from the state dict).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from clip.model import CLIP


def build_tiny_clip(
    image_resolution: int = 32,
    vision_width: int = 64,
    vision_layers: int = 2,
    vision_patch_size: int = 8,
    text_width: int = 64,
    text_layers: int = 2,
    embed_dim: int = 32,
    seed: int = 0,
) -> CLIP:
    """A randomly initialised fp32 ViT CLIP; heads = width // 64 as in ``build_model``."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=embed_dim,
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=77,
        vocab_size=49408,
        transformer_width=text_width,
        transformer_heads=max(1, text_width // 64),
        transformer_layers=text_layers,
    )
    return model.float().eval()


def save_clip_state_dict(model: CLIP, path: Union[str, Path]) -> Path:
    """Save ``model`` the way real weights are stored: a flat state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path
