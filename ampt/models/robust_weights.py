"""Robust visual weights (``MODEL.BACKBONE.ROBUST_WEIGHTS``) in the formats users meet.

Recognised, in this order (all read with ``torch.load(weights_only=True)``):

1. APT/TeCoA files: ``{"vision_encoder_state_dict": {...}}``;
2. a state dict nested under "state_dict", "model" or "model_state_dict",
   possibly with a "module." prefix (DataParallel);
3. a whole CLIP checkpoint (``visual.*`` next to text keys): its ``visual.*`` part;
4. a visual state dict with or without a "visual." prefix, in the ``clip``
   package's naming or open_clip's (RobustVLM's TeCoA/FARE files are
   open_clip's ``VisionTransformer`` state dicts).

The two namings coincide key for key for the towers both packages build
(``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.<i>.{ln_1, attn, ln_2, mlp}``, ``ln_post``,
``proj``; ResNets' ``attnpool``); open_clip adds ``ls_1``/``ls_2``
LayerScale gammas when a model has LayerScale, and ``attn_pool``/no
``ln_pre`` in some configs. Weights go into ``model.visual`` of either
backbone with strict matching after :func:`to_target_naming`; a mismatch
names the file, the missing and unexpected keys and the differing shapes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from torch import nn

from ..errors import UserFileNotFoundError
from .backbone import BackboneError

logger = logging.getLogger(__name__)

ROBUST_KEY = "vision_encoder_state_dict"  # APT/TeCoA robust visual checkpoints
LAYER_SCALE = (".ls_1.gamma", ".ls_2.gamma")
HF_TRANSFORMERS_PREFIXES = ("vision_model.", "visual_projection.")

StateDict = Dict[str, torch.Tensor]


def load_robust_visual_weights(model: nn.Module, path: Union[str, Path]) -> None:
    """Load robust visual weights into ``model.visual`` (``clip`` or open_clip backbone), strictly."""
    from .clip_loader import _torch_load_weights, _unwrap_state_dict

    if not os.path.isfile(path):
        raise UserFileNotFoundError(
            f'Robust visual weights file "{path}" (MODEL.BACKBONE.ROBUST_WEIGHTS) not found')
    obj = _torch_load_weights(path)
    fmt = "APT/TeCoA (vision_encoder_state_dict)" if isinstance(obj, Mapping) and ROBUST_KEY in obj else ""
    if fmt:
        obj = obj[ROBUST_KEY]
    state_dict = _unwrap_state_dict(obj, path)
    if any(k.startswith(HF_TRANSFORMERS_PREFIXES) for k in state_dict):
        raise BackboneError(
            f'Robust visual weights "{path}" are in Hugging Face transformers naming (vision_model.*): '
            "not supported; use the open_clip or clip-package state dict of the same weights")
    state_dict, part = _visual_part(state_dict)
    expected = model.visual.state_dict()
    state_dict = to_target_naming(state_dict, expected, path)
    _check_match(state_dict, expected, path)
    dtype = next(model.visual.parameters()).dtype
    model.visual.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
    naming = "open_clip" if type(model).__module__.startswith("open_clip") else "clip"
    logger.info("Robust visual weights from %s: %s%s, %d tensors, into the %s backbone's image encoder",
                path, fmt or "plain state dict", part, len(state_dict), naming)


def _visual_part(state_dict: StateDict) -> tuple:
    """The image encoder's keys: a "visual." prefix stripped, other towers' keys dropped."""
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not visual:
        return state_dict, ""
    dropped = len(state_dict) - len(visual)
    return visual, (f" (the visual.* part of a whole checkpoint, {dropped} other keys ignored)"
                    if dropped else ' (keys prefixed "visual.")')


def to_target_naming(state_dict: StateDict, expected: Mapping[str, torch.Tensor], path) -> StateDict:
    """Map open_clip's naming onto the ``clip`` package's and back.

    The names coincide except LayerScale: gammas of ones (a no-op) are
    dropped for a tower without LayerScale; others cannot be represented
    there and are refused.
    """
    out = dict(state_dict)
    extra_scales = [k for k in out if k.endswith(LAYER_SCALE) and k not in expected]
    not_identity = [k for k in extra_scales if not torch.all(out[k] == 1)]
    if not_identity:
        raise BackboneError(
            f'Robust visual weights "{path}" have LayerScale gammas ({_short(not_identity)}) that the '
            "backbone's image encoder has no place for: load them into an open_clip model whose "
            "vision tower has LayerScale (ls_init_value)")
    for key in extra_scales:
        del out[key]
    return out


def _check_match(state_dict: StateDict, expected: Mapping[str, torch.Tensor], path) -> None:
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f"{k} {list(state_dict[k].shape)} (backbone {list(expected[k].shape)})"
              for k in sorted(set(expected) & set(state_dict)) if expected[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        raise BackboneError(
            f'Robust visual weights "{path}" do not match the backbone\'s image encoder (another '
            f"architecture?): missing keys {_short(missing)}, unexpected keys {_short(unexpected)}, "
            f"shape mismatches {_short(shapes)}")


def _short(keys: list, limit: int = 8) -> str:
    if not keys:
        return "[]"
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more
