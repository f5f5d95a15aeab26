"""A tiny CLIP built with the ``clip`` package's own model class, or with open_clip's.

Used by the tests and the embedded Digits demo. The ``clip`` one is saved as
a plain state dict and loaded through the same path as real CLIP weights
(``clip.model.build_model`` infers the architecture from the state dict); the
open_clip one as a folder laid out like a hub repository, loaded by open_clip
from its config as a user's ``hf-hub:`` or local model is.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from clip.model import CLIP
from torch import nn


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


TINY_OPEN_CLIP_CFG = {  # the same tower sizes as build_tiny_clip's defaults, in open_clip's config format
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def build_tiny_open_clip(model_cfg: Optional[dict] = None, seed: int = 0) -> nn.Module:
    """A randomly initialised fp32 open_clip model of ``model_cfg`` (default :data:`TINY_OPEN_CLIP_CFG`)."""
    import open_clip

    cfg = copy.deepcopy(model_cfg or TINY_OPEN_CLIP_CFG)
    torch.manual_seed(seed)
    model_class = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    return model_class(**cfg).float().eval()


def save_open_clip_folder(
    model: nn.Module, folder: Union[str, Path], model_cfg: Optional[dict] = None,
    mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
    std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
) -> Path:
    """Save ``model`` as a Hugging Face hub repository of open_clip holds it: ``open_clip_config.json``
    (model and preprocess config) next to ``open_clip_pytorch_model.bin`` (a state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = (model_cfg or TINY_OPEN_CLIP_CFG)["vision_cfg"]["image_size"]
    config = {"model_cfg": model_cfg or TINY_OPEN_CLIP_CFG,
              "preprocess_cfg": {"size": size, "mean": list(mean), "std": list(std)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "open_clip_pytorch_model.bin")
    return folder
