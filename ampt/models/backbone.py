"""What the toolkit needs to know about a loaded CLIP beyond its modules.

A backbone is the ``clip`` package's ``CLIP`` or an open_clip model. Both
are plain ``nn.Module`` objects; what differs (pixel mean/std, input
resolution, tokenizer) is described by a :class:`BackboneInfo`, which the
loader attaches to the model (:func:`attach_info`) and every consumer reads
with :func:`backbone_info`. A ``clip`` model built directly (the tests' and
the demo's tiny CLIP) is described by OpenAI's defaults.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import UserError
from .normalizer import CLIP_MEAN, CLIP_STD

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # the clip package imports pkg_resources
    import clip
    import clip.model

INFO_ATTR = "ampt_backbone"  # the one attribute the loader sets on a model


class BackboneError(UserError):
    """A backbone the toolkit cannot use, with the reason and the supported choices (one line)."""


class BackboneWeightsError(BackboneError, RuntimeError):
    """Backbone weights that cannot be loaded or downloaded (also a RuntimeError, as they were raised before)."""


class Tokenizer:
    """CLIP's byte-pair tokenizer: ``tokenize(texts) -> [N, context_length]`` ids, ``encode(text)``.

    Ids are CLIP's: SOS, the text's tokens, EOT (the largest id), zeros.
    Wraps the ``clip`` package's tokenizer or open_clip's ``SimpleTokenizer``.
    """

    def __init__(self, bpe, context_length: int, source: str) -> None:
        self.bpe = bpe
        self.context_length = context_length
        self.source = source

    def encode(self, text: str) -> List[int]:
        """The text's token ids, without SOS/EOT."""
        return self.bpe.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.bpe.decode(list(ids))

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.source == "clip":
            return clip.tokenize(texts, context_length=self.context_length)
        too_long = [t for t in texts if len(self.encode(t)) + 2 > self.context_length]
        if too_long:  # open_clip would cut silently; the clip package refuses, and so do we
            raise ValueError(f'Text "{too_long[0]}" is longer than the context length {self.context_length}')
        return self.bpe(texts, context_length=self.context_length)

    def __repr__(self) -> str:
        return f"Tokenizer({self.source}, context_length={self.context_length})"


@dataclass(frozen=True)
class BackboneInfo:
    """``kind``: "clip" or "open_clip"; ``name``: what ``MODEL.BACKBONE.NAME`` (+ PRETRAINED) said."""

    kind: str
    name: str
    input_resolution: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    tokenizer: Tokenizer

    def describe(self) -> str:
        return (f"{self.kind} backbone {self.name} ({self.input_resolution} px, mean {list(self.mean)}, "
                f"std {list(self.std)}, {self.tokenizer})")


def pretrained_setting(backbone_cfg) -> str:
    """``MODEL.BACKBONE.PRETRAINED`` as a tag or file; "" for Dassl's old boolean (saved run configs)."""
    value = backbone_cfg.get("PRETRAINED", "")
    return value if isinstance(value, str) else ""


def backbone_label(backbone_cfg) -> str:
    """``MODEL.BACKBONE.NAME``, with the open_clip pretrained tag or file when one is set."""
    pretrained = pretrained_setting(backbone_cfg)
    return f"{backbone_cfg.NAME} ({pretrained})" if pretrained else backbone_cfg.NAME


def clip_info(model: nn.Module, name: str = "") -> BackboneInfo:
    """OpenAI's normalization and tokenizer for a ``clip`` package model."""
    tokenizer = Tokenizer(clip.clip._tokenizer, model.positional_embedding.shape[0], "clip")
    return BackboneInfo("clip", name or type(model).__name__, model.visual.input_resolution,
                        CLIP_MEAN, CLIP_STD, tokenizer)


def attach_info(model: nn.Module, info: BackboneInfo) -> nn.Module:
    object.__setattr__(model, INFO_ATTR, info)  # a plain attribute, not a submodule or buffer
    return model


def backbone_info(model: nn.Module) -> BackboneInfo:
    """The model's :class:`BackboneInfo`: attached by the loader, or OpenAI's for a ``clip`` model."""
    info = model.__dict__.get(INFO_ATTR)
    if info is not None:
        return info
    if isinstance(model, clip.model.CLIP):
        return clip_info(model)
    raise BackboneError(
        f"A {type(model).__module__}.{type(model).__name__} carries no backbone description: "
        "load it with ampt.models.load_clip (OpenAI names, open_clip:<arch>, hf-hub:<org>/<name>, "
        "an open_clip folder, or a checkpoint file)"
    )
