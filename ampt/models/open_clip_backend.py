"""open_clip backbones: ``open_clip:<arch>`` + a pretrained tag or file, ``hf-hub:<org>/<name>``,
or a local open_clip folder (``open_clip_config.json`` + weights, the layout of a hub repository).

Models are built by open_clip itself (``open_clip.create_model``), so the
hub and tag downloads, the caches (``~/.cache/huggingface`` for the hub,
``~/.cache/clip`` for tags with a URL, or ``MODEL.BACKBONE.DOWNLOAD_ROOT``)
and the checkpoint conversions are open_clip's. The model's own pixel
mean/std and input size (its preprocess config) and its tokenizer
(``open_clip.get_tokenizer``) are recorded in its :class:`BackboneInfo`.
Only CLIP's byte-pair tokenizer is supported: the prompt learners lay out
``[SOS][context][class][.][EOT]`` in its ids.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import UserFileNotFoundError
from ..utils.torchfile import check_torch_file
from .backbone import BackboneError, BackboneInfo, Tokenizer, attach_info
from .text_tower import SUPPORTED, text_tower

logger = logging.getLogger(__name__)

ARCH_PREFIX = "open_clip:"
HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
INSTALL_HINT = 'open_clip is not installed: pip install -e ".[openclip]" (or pip install open_clip_torch)'
# the weights files open_clip looks for in a folder, in its order of preference (open_clip.factory)
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                  "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                  "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
NO_WEIGHTS = "Required pretrained weights"  # open_clip's RuntimeError under require_pretrained=True


def is_open_clip_name(name: str) -> bool:
    """True for names this backend loads (the prefixes above, or a folder holding an open_clip config)."""
    if name.startswith((ARCH_PREFIX, HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return True
    return Path(name).is_dir() and (Path(name) / CONFIG_FILE).is_file()


def import_open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise BackboneError(f"{INSTALL_HINT} ({err})") from err
    return open_clip


def load_open_clip(name: str, pretrained: str = "", download_root: str = "",
                   device: torch.device | str = "cpu") -> nn.Module:
    """An open_clip model in fp32 and eval mode, with its :class:`BackboneInfo` attached."""
    open_clip = import_open_clip()
    model_name, tag = _open_clip_arguments(open_clip, name, pretrained)
    display = _display_name(name, tag)
    _refuse_hf_text(open_clip.get_model_config(model_name) or {}, display)
    weights = _weights_source(name, tag)
    model = _create_model(open_clip, model_name, tag, download_root or None, display, weights)
    text_tower(model)  # refuses unsupported text towers before anything else runs
    tokenizer = _tokenizer(open_clip, model_name, model, download_root or None)
    info = _info(open_clip, model, display, tokenizer)
    model = attach_info(model.float().eval(), info)
    logger.info("Loaded %s", info.describe())
    return model.to(device)


def _create_model(open_clip, model_name: str, tag: Optional[str], cache_dir: Optional[str], display: str,
                  weights: str) -> nn.Module:
    """``open_clip.create_model`` with its pretrained weights, or a one-line refusal: never a random model."""
    quick_gelu = _tag_needs_quick_gelu(open_clip, model_name, tag)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        try:
            return open_clip.create_model(model_name, pretrained=tag, cache_dir=cache_dir, force_quick_gelu=quick_gelu,
                                          weights_only=True, require_pretrained=True)
        except _load_errors() as err:
            raise _load_error(display, weights, err) from err


def _load_errors() -> Tuple[type, ...]:
    """What open_clip raises for weights it cannot load (AssertionError: another architecture's weights)."""
    errors: Tuple[type, ...] = (RuntimeError, OSError, ValueError, KeyError, EOFError, AssertionError)
    try:
        from safetensors import SafetensorError
    except ImportError:
        return errors
    return errors + (SafetensorError,)


def _load_error(display: str, weights: str, err: BaseException) -> BackboneError:
    reason = " ".join(str(err).split())[:600] or type(err).__name__
    if NO_WEIGHTS in str(err):
        return BackboneError(
            f'open_clip found no weights for "{display}" ({weights}): it would be a randomly initialised '
            "CLIP, which is refused. Check the name, your connection and MODEL.BACKBONE.DOWNLOAD_ROOT")
    if isinstance(err, AssertionError) or "Error(s) in loading state_dict" in str(err):
        return BackboneError(
            f'open_clip could not load "{display}": {weights} holds the weights of another architecture '
            f"({reason}); use the weights of that architecture, or the architecture (config) the weights were "
            "saved from")
    return BackboneError(f'open_clip could not load "{display}" ({weights}): {reason}')


def _weights_source(name: str, tag: Optional[str]) -> str:
    """Where the weights come from, in words; a folder's weights file is checked before open_clip reads it."""
    if tag:
        return _checked_file(Path(tag)) if Path(tag).is_file() else f'the pretrained tag "{tag}"'
    if name.startswith(HUB_PREFIX):
        return "the hub repository's weights file"
    folder = Path(name[len(LOCAL_DIR_PREFIX):] if name.startswith(LOCAL_DIR_PREFIX) else name)
    if not (folder / CONFIG_FILE).is_file():
        return f'the folder "{folder}"'  # open_clip names what is missing
    return _checked_file(folder_weights(folder))


def _checked_file(weights: Path) -> str:
    """An empty, truncated or foreign PyTorch weights file is named before open_clip reads it."""
    if weights.suffix not in (".safetensors", ".npz", ".npy"):  # those are not torch.save files
        check_torch_file(weights, what="open_clip weights file")
    return f'the weights file "{weights}"'


def folder_weights(folder: Path) -> Path:
    """The weights file open_clip loads from ``folder``; a folder with none (a partial download) is refused."""
    found = sorted((p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()), key=_preference)
    if found:
        return found[0]
    raise UserFileNotFoundError(
        f'open_clip folder "{folder}" holds {CONFIG_FILE} but no weights file ({FOLDER_WEIGHTS[2]} or '
        f"{FOLDER_WEIGHTS[0]}; any *.safetensors, *.bin or *.pth): an incomplete download? Download the "
        "weights into that folder; a model without them would be a randomly initialised CLIP")


def _preference(path: Path) -> Tuple[int, bool, str]:
    rank = FOLDER_WEIGHTS.index(path.name) if path.name in FOLDER_WEIGHTS else len(FOLDER_WEIGHTS)
    return rank, path.suffix != ".safetensors", path.name


def _open_clip_arguments(open_clip, name: str, pretrained: str) -> Tuple[str, Optional[str]]:
    """``(model_name, pretrained)`` for ``open_clip.create_model``."""
    if name.startswith(ARCH_PREFIX):
        arch = name[len(ARCH_PREFIX):].replace("/", "-")
        if open_clip.get_model_config(arch) is None:
            raise BackboneError(_unknown_arch(open_clip, arch))
        if not pretrained:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise BackboneError(
                f'MODEL.BACKBONE.NAME "{name}" needs MODEL.BACKBONE.PRETRAINED: a tag '
                f"({', '.join(tags) or 'none known for this architecture'}) or a weights file")
        if not open_clip.get_pretrained_cfg(arch, pretrained) and not Path(pretrained).is_file():
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise UserFileNotFoundError(
                f'MODEL.BACKBONE.PRETRAINED "{pretrained}" is neither a pretrained tag of {arch} '
                f"({', '.join(tags) or 'none known'}) nor an existing file")
        return arch, pretrained
    _no_pretrained_with(name, pretrained)
    if name.startswith((HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return name, None
    return LOCAL_DIR_PREFIX + name, None


def _refuse_hf_text(model_cfg: dict, name: str) -> None:
    """Refuse a Hugging Face text tower or tokenizer from the config, before any weights download."""
    text_cfg = model_cfg.get("text_cfg", {})
    hf = {k: text_cfg[k] for k in ("hf_model_name", "hf_tokenizer_name") if text_cfg.get(k)}
    if hf:
        raise BackboneError(
            f"Unsupported text tower in {name}: a Hugging Face transformer or tokenizer "
            f"({', '.join(f'{k}={v}' for k, v in hf.items())}). Prompt learning needs CLIP's own text "
            f"transformer and byte-pair tokenizer; supported: {SUPPORTED}")


def _no_pretrained_with(name: str, pretrained: str) -> None:
    if pretrained:
        raise BackboneError(
            f'MODEL.BACKBONE.PRETRAINED "{pretrained}" is only read with MODEL.BACKBONE.NAME open_clip:<arch>; '
            f'"{name}" names its own weights: set MODEL.BACKBONE.PRETRAINED ""')


def _unknown_arch(open_clip, arch: str) -> str:
    import difflib

    close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f'Unknown open_clip architecture "{arch}" (MODEL.BACKBONE.NAME open_clip:<arch>): '
            f"not among open_clip.list_models().{hint}")


def _tag_needs_quick_gelu(open_clip, model_name: str, tag: Optional[str]) -> bool:
    """OpenAI's weights were trained with QuickGELU; open_clip's plain arch configs use GELU and
    only warn. The tag's own record says which activation its weights need."""
    if not tag:
        return False
    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    model_cfg = open_clip.get_model_config(model_name) or {}
    return bool(tag_cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)


def _tokenizer(open_clip, model_name: str, model: nn.Module, cache_dir: Optional[str]) -> Tokenizer:
    context_length = text_tower(model).context_length
    bpe = open_clip.get_tokenizer(model_name, context_length=context_length, cache_dir=cache_dir)
    if type(bpe) is not open_clip.tokenizer.SimpleTokenizer:
        raise BackboneError(
            f"Unsupported tokenizer {type(bpe).__name__} of {model_name}: prompt learning here needs CLIP's "
            "byte-pair tokenizer (open_clip's SimpleTokenizer), as OpenAI's, LAION's and the robust "
            "TeCoA/FARE CLIP models use")
    return Tokenizer(bpe, context_length, "open_clip")


def _info(open_clip, model: nn.Module, name: str, tokenizer: Tokenizer) -> BackboneInfo:
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height != width:
        raise BackboneError(f"{name} takes {height} x {width} px images; only square inputs are supported")
    return BackboneInfo("open_clip", name, int(height), tuple(cfg["mean"]), tuple(cfg["std"]), tokenizer)


def _display_name(name: str, tag: Optional[str]) -> str:
    return f"{name} ({tag})" if tag else name


