"""Load a CLIP model from an OpenAI name, a checkpoint file or an open_clip name, in fp32.

OpenAI names and files give the ``clip`` package's own ``CLIP`` class, built
by ``clip.model.build_model`` from a state dict (the architecture is inferred
from the weights), so the same path serves OpenAI's downloads, converted or
fine-tuned checkpoints and the project's tiny CLIP. ``open_clip:<arch>``,
``hf-hub:<org>/<name>`` and open_clip folders go to
:mod:`ampt.models.open_clip_backend`. Either way the model carries a
:class:`~ampt.models.backbone.BackboneInfo` (mean/std, input size, tokenizer).
"""
from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from torch import nn
from ..errors import UserFileNotFoundError

with warnings.catch_warnings():
    # the clip package imports pkg_resources, which warns on import
    warnings.simplefilter("ignore", UserWarning)
    import clip
    from clip.model import build_model

from ..utils.torchfile import check_torch_file, load_error

logger = logging.getLogger(__name__)

_NESTING_KEYS = ("state_dict", "model", "model_state_dict")
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

Device = Union[str, torch.device]


def load_clip(
    name_or_path: str, robust_weights: str = "", download_root: str = "", device: Device = "cpu",
    pretrained: str = "",
) -> nn.Module:
    """A CLIP model in fp32 and eval mode on ``device``, its backbone description attached.

    ``name_or_path``: an OpenAI model name (``clip.available_models()``,
    downloaded by the ``clip`` package into ``download_root`` or
    ``~/.cache/clip``), or a file: an OpenAI TorchScript archive or a state
    dict (possibly nested under "state_dict"/"model", possibly with a
    "module." prefix); or an open_clip model: ``open_clip:<arch>`` with
    ``pretrained`` (a tag or a weights file), ``hf-hub:<org>/<name>``, or a
    folder with ``open_clip_config.json`` (``download_root``: their cache,
    "" = open_clip's). ``robust_weights``: optional file of visual weights
    loaded into ``model.visual`` with strict key matching
    (:mod:`ampt.models.robust_weights`).
    """
    from .open_clip_backend import is_open_clip_name, load_open_clip

    if is_open_clip_name(name_or_path):
        model = load_open_clip(name_or_path, pretrained, download_root)
        if robust_weights:
            load_robust_visual_weights(model, robust_weights)
        return model.to(device)
    if pretrained:
        raise BackboneError(
            f'MODEL.BACKBONE.PRETRAINED "{pretrained}" is only read with MODEL.BACKBONE.NAME open_clip:<arch>; '
            f'"{name_or_path}" names its own weights: set MODEL.BACKBONE.PRETRAINED ""')
    path = _resolve_checkpoint(name_or_path, download_root)
    state_dict = _read_clip_state_dict(path)
    try:
        model = build_model(state_dict)
    except (KeyError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:600]
        raise BackboneWeightsError(f'"{path}" does not hold the weights of a CLIP model: {reason}') from err
    # build_model loads into fp16 layers; reload so fp32 checkpoints keep full precision
    model = model.float()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    model.eval()
    attach_info(model, clip_info(model, name_or_path))
    if robust_weights:
        load_robust_visual_weights(model, robust_weights)
    logger.info(
        "Loaded CLIP from %s (input resolution %d px)%s",
        path, model.visual.input_resolution,
        f", visual weights from {robust_weights}" if robust_weights else "",
    )
    return model.to(device)


def _resolve_checkpoint(name_or_path: str, download_root: str) -> str:
    if name_or_path in clip.available_models():
        return _download_openai(name_or_path, download_root or os.path.expanduser("~/.cache/clip"))
    if os.path.isfile(name_or_path):
        return name_or_path
    if os.path.isdir(name_or_path):
        raise UserFileNotFoundError(
            f'MODEL.BACKBONE.NAME "{name_or_path}" is a folder without open_clip_config.json: an open_clip '
            "folder needs its config next to its weights (an incomplete download?); a clip package model is a file")
    raise UserFileNotFoundError(
        f'Unknown CLIP backbone "{name_or_path}": it is neither an OpenAI model name '
        f'({", ".join(clip.available_models())}) nor an existing file. MODEL.BACKBONE.NAME '
        "may also be a path to a checkpoint file (OpenAI JIT archive or state dict), "
        "open_clip:<arch> (with MODEL.BACKBONE.PRETRAINED <tag or file>), hf-hub:<org>/<name>, "
        "or a folder holding an open_clip_config.json."
    )


def _download_openai(name: str, root: str) -> str:
    """The clip package's download (its SHA256 checked); a failed or corrupt download is one line."""
    try:
        return clip.clip._download(clip.clip._MODELS[name], root)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a checksum mismatch a RuntimeError
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise BackboneWeightsError(
            f'Could not get the weights of "{name}" into {root} ({reason}): check your connection, or put '
            f"the file there (or pass its path as MODEL.BACKBONE.NAME)") from err


def is_torchscript_archive(path: Union[str, Path]) -> bool:
    """True for a TorchScript zip (it holds compiled code), False for ``torch.save`` files."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _read_clip_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if is_torchscript_archive(path):
        with warnings.catch_warnings():
            # OpenAI's checkpoints are TorchScript archives: jit.load is the only reader
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        state_dict = _torch_load_weights(path)
    state_dict = _unwrap_state_dict(state_dict, path)
    for key in _JIT_EXTRA_KEYS:
        state_dict.pop(key, None)
    return state_dict


def _torch_load_weights(path: Union[str, Path]) -> object:
    """``torch.load(weights_only=True)``: a file that needs to run code is refused; a broken one is named."""
    check_torch_file(path, what="weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, KeyError, IndexError) as err:
        raise load_error(path, err, what="weights file") from None
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise load_error(path, err, what="weights file") from None
        raise BackboneWeightsError(
            f'"{path}" is not a plain weights file: loading it would need to unpickle '
            f"arbitrary Python objects, which is refused. Re-save it as a state dict of tensors. ({err})"
        ) from err


def _unwrap_state_dict(obj: object, path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Find the tensor dict under the usual nesting keys and drop a "module." prefix."""
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((k for k in _NESTING_KEYS if k in obj), None)
        if inner is None:
            raise BackboneWeightsError(
                f'"{path}" holds no state dict: top-level keys {sorted(map(str, obj))[:10]}; '
                f"expected tensors or one of {_NESTING_KEYS}"
            )
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise BackboneWeightsError(f'"{path}" holds a {type(obj).__name__}, not a state dict')
    return strip_prefix(dict(obj), "module.")


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Remove ``prefix`` from the keys when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


# imported last: these modules use the helpers above
from .backbone import BackboneError, BackboneWeightsError, attach_info, clip_info  # noqa: E402
from .robust_weights import load_robust_visual_weights  # noqa: E402,F401
