"""CLIP's text encoder over given token embeddings, trimmed to the longest real sequence.

Prompt learners replace some token embeddings by learned vectors, so the
encoder takes embeddings rather than token ids. Under CLIP's causal mask the
output at the end-of-text (EOT) token depends only on the tokens before it,
so every sequence can be cut after the batch's last EOT: the features are the
same as with all 77 positions, at a fraction of the cost. The residual blocks
are run through the tower's per-block hooks (:mod:`ampt.models.text_tower`)
with the mask sliced to the trimmed length (the ``clip`` and open_clip
modules are used as they are, not modified); the tower also says which
position is pooled and how far a sequence may be cut.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .backbone import backbone_info
from .text_tower import text_tower


class TextEncoder(nn.Module):
    """``forward(embeddings[N, L, d], token_ids[N, L]) -> [N, D]`` unnormalized text features.

    ``token_ids`` only locate the pooled token (the EOT, the largest id of
    each row, for CLIP). Shares its parameters with ``clip_model``.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.tower = text_tower(clip_model)
        self.tokenizer = backbone_info(clip_model).tokenizer
        self.token_embedding = self.tower.token_embedding
        self.positional_embedding = self.tower.positional_embedding
        self.transformer = self.tower.transformer
        self.ln_final = self.tower.ln_final
        self.text_projection = self.tower.text_projection
        mask = self.tower.causal_mask
        self.register_buffer("causal_mask", None if mask is None else mask.clone(), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (fp16 after ``convert_weights``), which inputs are cast to."""
        return self.tower.dtype

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                deep_prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """``deep_prompts[j - 1]`` (``[n, d]``) replaces positions 1..n at the input of block j >= 1 (MaPLe)."""
        dtype = self.dtype
        pooled = self.tower.pool_index(token_ids)
        n = self.tower.kept_length(token_ids)
        x = embeddings[:, :n].type(dtype) + self.positional_embedding[:n].type(dtype)
        mask = None if self.causal_mask is None else self.causal_mask[:n, :n].to(dtype)
        *blocks, last = self.transformer.resblocks
        for index, block in enumerate(blocks):
            x = self._insert_deep_prompt(x, deep_prompts, index)
            x = self.tower.run_block(block, x, mask)
        x = self._insert_deep_prompt(x, deep_prompts, len(blocks))
        x = self.tower.run_block_at(last, x, pooled)
        return self.tower.project(x)

    @staticmethod
    def _insert_deep_prompt(x: torch.Tensor, deep_prompts: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        """``x`` ``[N, L, d]`` with positions 1..n replaced by ``deep_prompts[index - 1]`` (block 0: unchanged)."""
        if index == 0 or index > len(deep_prompts):
            return x
        prompt = deep_prompts[index - 1].to(x.dtype)
        tokens = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], tokens, x[:, 1 + prompt.shape[0]:]], dim=1)

    def encode_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Features of hand-written prompts given as tokenizer ids ``[N, context_length]``."""
        return self(self.token_embedding(token_ids), token_ids)

    def encode_texts(self, texts: List[str]) -> torch.Tensor:
        """Features of the given strings, ``[len(texts), D]``, tokenized by the backbone's tokenizer."""
        token_ids = self.tokenizer.tokenize(texts).to(self.positional_embedding.device)
        return self.encode_token_ids(token_ids)
