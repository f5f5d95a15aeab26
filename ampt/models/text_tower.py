"""The text transformer of a CLIP backbone, described for :class:`~ampt.models.TextEncoder`.

A :class:`TextTower` holds references to the tower's modules (token and
positional embedding, residual blocks, final norm, projection) and the rules
the encoder must follow: the sequence layout of the attention modules
(the ``clip`` package's are sequence-first, open_clip's batch-first),
LayerScale (open_clip's ``ls_1``/``ls_2``), the causal mask, and the pooling
rule (which position's output becomes the text feature). It holds no tensors
of its own; the modules stay those of the model.

:func:`text_tower` builds one for the ``clip`` package's ``CLIP``, open_clip's
``CLIP`` and open_clip's ``CustomTextCLIP`` with a ``TextTransformer``; other
text towers (Hugging Face transformers, CoCa's appended class token, custom
attention blocks) are refused with :class:`BackboneError`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .backbone import BackboneError
from .clip_loader import clip

POOL_TYPES = ("argmax", "eos", "first", "last")
SUPPORTED = (
    "the clip package's CLIP, or an open_clip CLIP/CustomTextCLIP whose text tower is open_clip's "
    f"TextTransformer with standard residual blocks and pooling {'/'.join(POOL_TYPES)}"
)


class TextTower:
    """The ``clip`` package's text transformer: sequence-first attention, no LayerScale, EOT argmax."""

    batch_first = False
    pool_type = "argmax"
    eos_id: Optional[int] = None

    def __init__(self, model: nn.Module, text: Optional[nn.Module] = None) -> None:
        text = model if text is None else text
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.causal_mask = self._causal_mask(model, text)

    def _causal_mask(self, model: nn.Module, text: nn.Module) -> Optional[torch.Tensor]:
        return model.build_attention_mask()

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, which inputs are cast to (fp16 after conversion)."""
        return self.transformer.resblocks[0].mlp.c_fc.weight.dtype

    # ------------------------------------------------------------ per-block hooks
    def layer_scales(self, block: nn.Module) -> Tuple[nn.Module, nn.Module]:
        return nn.Identity(), nn.Identity()

    def attend(self, block: nn.Module, query: torch.Tensor, keys: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None,
               key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``block.attn`` on batch-first ``query [N, Lq, d]`` and ``keys [N, Lk, d]`` (already normed)."""
        if not self.batch_first:
            query, keys = query.transpose(0, 1), keys.transpose(0, 1)
        out = block.attn(query, keys, keys, need_weights=False, attn_mask=attn_mask,
                         key_padding_mask=key_padding_mask)[0]
        return out if self.batch_first else out.transpose(0, 1)

    def run_block(self, block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """One residual block on the whole (trimmed) batch-first sequence ``x [N, n, d]``."""
        ls_1, ls_2 = self.layer_scales(block)
        h = block.ln_1(x)
        x = x + ls_1(self.attend(block, h, h, attn_mask=attn_mask))
        return x + ls_2(block.mlp(block.ln_2(x)))

    def run_block_at(self, block: nn.Module, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The block's output at one position per sequence, ``index [N]`` -> ``[N, d]``.

        Nothing else of the last block is read, so only those rows are
        computed: the query attends to the keys the mask allows that row
        (up to itself under a causal mask, all keys otherwise).
        """
        ls_1, ls_2 = self.layer_scales(block)
        rows = torch.arange(x.shape[0], device=x.device)
        h = block.ln_1(x)
        padding = None
        if self.causal_mask is not None:
            padding = torch.arange(x.shape[1], device=x.device)[None, :] > index[:, None]  # [N, n]
        attended = self.attend(block, h[rows, index][:, None], h, key_padding_mask=padding)[:, 0]
        x_out = x[rows, index] + ls_1(attended)
        return x_out + ls_2(block.mlp(block.ln_2(x_out)))

    # ------------------------------------------------------------ pooling and trimming
    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Per row, the position whose output is the text feature ``[N]``."""
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        position = 0 if self.pool_type == "first" else token_ids.shape[1] - 1
        return torch.full(token_ids.shape[:1], position, dtype=torch.long, device=token_ids.device)

    def kept_length(self, token_ids: torch.Tensor) -> int:
        """How many leading positions the features depend on: all of them unless a causal
        mask makes everything after the last pooled position irrelevant."""
        if self.causal_mask is None or self.pool_type == "last":
            return token_ids.shape[1]
        return int(self.pool_index(token_ids).max()) + 1

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """``ln_final`` then the projection (a matrix, a ``Linear``, or none)."""
        x = self.ln_final(pooled).type(self.dtype)
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class OpenClipTextTower(TextTower):
    """open_clip's text transformer: batch-first (as built by open_clip), LayerScale, its pooling rule."""

    def __init__(self, model: nn.Module, text: nn.Module, pool_type: str, eos_id: Optional[int]) -> None:
        super().__init__(model, text)
        self.batch_first = text.transformer.batch_first
        self.pool_type = pool_type
        self.eos_id = eos_id

    def _causal_mask(self, model: nn.Module, text: nn.Module) -> Optional[torch.Tensor]:
        return text.attn_mask  # open_clip's own buffer; None for a bidirectional tower

    def layer_scales(self, block: nn.Module) -> Tuple[nn.Module, nn.Module]:
        return block.ls_1, block.ls_2


def text_tower(model: nn.Module) -> TextTower:
    """The :class:`TextTower` of a ``clip`` or open_clip model; :class:`BackboneError` if unsupported."""
    if isinstance(model, clip.model.CLIP):
        return TextTower(model)
    import open_clip  # only open_clip models get here

    if isinstance(model, open_clip.CLIP):
        tower = OpenClipTextTower(model, model, model.text_pool_type, model.text_eos_id)
    elif isinstance(model, open_clip.CustomTextCLIP) and isinstance(model.text, open_clip.transformer.TextTransformer):
        if model.text.cls_emb is not None:
            raise BackboneError(_refusal(model, "its text tower appends a class token (embed_cls, CoCa-style)"))
        tower = OpenClipTextTower(model, model.text, model.text.pool_type, model.text.eos_id)
    else:
        text = getattr(model, "text", None)
        kind = type(text).__name__ if text is not None else type(model).__name__
        raise BackboneError(_refusal(model, f"its text tower is a {kind}"))
    blocks = {type(b).__name__ for b in tower.transformer.resblocks}
    if blocks != {"ResidualAttentionBlock"}:
        raise BackboneError(_refusal(model, f"its text blocks are {sorted(blocks)}"))
    if tower.pool_type not in POOL_TYPES:
        raise BackboneError(_refusal(model, f'its text pooling is "{tower.pool_type}"'))
    return tower


def _refusal(model: nn.Module, reason: str) -> str:
    return (f"Unsupported text tower in {type(model).__name__}: {reason}. Prompt learning needs "
            f"CLIP's own text transformer; supported: {SUPPORTED}")
