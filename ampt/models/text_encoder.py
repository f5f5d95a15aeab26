"""CLIP's text encoder over given token embeddings, trimmed to the longest real sequence.

Prompt learners replace some token embeddings by learned vectors, so the
encoder takes embeddings rather than token ids. Under CLIP's causal mask the
output at the end-of-text (EOT) token depends only on the tokens before it,
so every sequence can be cut after the batch's last EOT: the features are the
same as with all 77 positions, at a fraction of the cost. The ``clip``
package's residual blocks hold a fixed 77x77 mask, so the blocks' layers are
called here with the mask sliced to the trimmed length (the ``clip`` modules
are used as they are, not modified).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .clip_loader import clip


class TextEncoder(nn.Module):
    """``forward(embeddings[N, L, d], token_ids[N, L]) -> [N, D]`` unnormalized text features.

    ``token_ids`` only locate the EOT token (the largest id of each row, as in
    CLIP). Shares its parameters with ``clip_model``.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("causal_mask", clip_model.build_attention_mask(), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (fp16 after ``convert_weights``), which inputs are cast to."""
        return self.text_projection.dtype

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype
        eot = token_ids.argmax(dim=-1)
        n = int(eot.max()) + 1
        x = embeddings[:, :n].type(dtype) + self.positional_embedding[:n].type(dtype)
        mask = self.causal_mask[:n, :n].to(dtype)
        x = x.permute(1, 0, 2)  # NLD -> LND, as the clip package's attention expects
        *blocks, last = self.transformer.resblocks
        for block in blocks:
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = self._last_block_at_eot(last, x, eot)
        return self.ln_final(x).type(dtype) @ self.text_projection

    @staticmethod
    def _last_block_at_eot(block: nn.Module, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """The last block's output at the EOT position only ``[N, d]``: nothing else is read.

        The EOT query attends to the keys up to itself (the causal mask's row
        ``eot``), expressed as a key padding mask; the MLP runs on one row per
        sequence instead of ``n``.
        """
        rows = torch.arange(x.shape[1], device=x.device)
        x_eot = x[eot, rows]  # [N, d]
        h = block.ln_1(x)
        after_eot = torch.arange(x.shape[0], device=x.device)[None, :] > eot[:, None]  # [N, n]
        attended = block.attn(h[eot, rows][None], h, h, need_weights=False,
                              key_padding_mask=after_eot)[0][0]
        x_eot = x_eot + attended
        return x_eot + block.mlp(block.ln_2(x_eot))

    def encode_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Features of hand-written prompts given as ``clip.tokenize`` ids ``[N, 77]``."""
        return self(self.token_embedding(token_ids), token_ids)

    def encode_texts(self, texts: List[str]) -> torch.Tensor:
        """Features of the given strings, ``[len(texts), D]``."""
        token_ids = clip.tokenize(texts).to(self.positional_embedding.device)
        return self.encode_token_ids(token_ids)
