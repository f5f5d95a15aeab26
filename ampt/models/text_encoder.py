"""CLIP's text encoder over given token embeddings, trimmed, with an exact shared-prefix pass.

Prompt learners replace some token embeddings by learned vectors, so the
encoder takes embeddings rather than token ids. Under CLIP's causal mask the
output at the end-of-text (EOT) token depends only on the tokens before it,
so every sequence can be cut after the batch's last EOT: the features are the
same as with all 77 positions, at a fraction of the cost. The residual blocks
are run through the tower's per-block hooks (:mod:`ampt.models.text_tower`)
with the mask sliced to the trimmed length (the ``clip`` and open_clip
modules are used as they are, not modified); the tower also says which
position is pooled and how far a sequence may be cut.

**Shared prefix.** The same causal mask means that the tokens of a prefix
that G x C sequences share (``[SOS, ctx_k]`` of a unified-context prompt with
the class token at the end) have the same hidden states in every one of them.
``forward(suffixes, ids, prefix=...)`` encodes each of the G prefixes once,
keeps its keys and values at every layer, and runs only the sequences' own
tokens (class name, ".", EOS), which attend to the cached prefix keys. Exact
(the same sums, in another order), and with CoOp's 16 context tokens it
removes about four fifths of the token rows.

**Memory** (:class:`TextPassOptions`, from ``MODEL.TEXT_ENCODER``):
``checkpoint`` recomputes each block's activations during backward instead
of keeping them (``torch.utils.checkpoint``, one extra forward); ``chunk_rows``
runs the sequences in chunks of that many rows. Both exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .backbone import backbone_info
from .prefix_attention import attend, attend_with_prefix, causal_mask, in_projection, in_projections, out_projection
from .text_tower import text_tower
from ..errors import UserError


@dataclass(frozen=True)
class TextPassOptions:
    """How the text pass trades speed for memory; every setting gives the same features."""

    shared_prefix: bool = True  # encode a prefix shared by many prompts once, when the prompt learner has one
    checkpoint: bool = False  # recompute block activations in backward (saves memory, costs a forward)
    chunk_rows: int = 0  # sequences per chunk (0 = all at once)

    def __post_init__(self) -> None:
        if self.chunk_rows < 0:
            raise UserError(f"MODEL.TEXT_ENCODER.CHUNK_SIZE must be >= 0 (0 = no chunks), got {self.chunk_rows}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> "TextPassOptions":
        """The options of ``cfg.MODEL.TEXT_ENCODER``."""
        node = cfg.MODEL.TEXT_ENCODER
        return cls(bool(node.SHARED_PREFIX), bool(node.CHECKPOINT), int(node.CHUNK_SIZE))


def configure_text_encoders(model: nn.Module, options: TextPassOptions) -> None:
    """Set ``options`` on every :class:`TextEncoder` inside ``model``."""
    for module in model.modules():
        if isinstance(module, TextEncoder):
            module.options = options


class TextEncoder(nn.Module):
    """``forward(embeddings[N, L, d], token_ids[N, L], prefix=None) -> [N, D]`` unnormalized text features.

    ``token_ids`` only locate the pooled token (the EOT, the largest id of
    each row, for CLIP). With ``prefix [G, P, d]``, row ``r`` of
    ``embeddings`` (and of ``token_ids``) holds the tokens that follow
    ``prefix[r // (N / G)]``: the sequences are the prefixes followed by their
    rows (only where :attr:`can_share_prefix`). Shares its parameters with
    ``clip_model``.
    """

    def __init__(self, clip_model: nn.Module, options: TextPassOptions = TextPassOptions()) -> None:
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
        self.options = options

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (fp16 after ``convert_weights``), which inputs are cast to."""
        return self.tower.dtype

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def can_share_prefix(self) -> bool:
        """The options allow a shared prefix, and the tower is causal and pools a token of each
        row's own part (CLIP's EOT), so a prefix never depends on what follows it."""
        return (self.options.shared_prefix and self.causal_mask is not None
                and self.tower.pool_type in ("argmax", "eos"))

    def forward(self, embeddings: Tensor, token_ids: Tensor, prefix: Optional[Tensor] = None,
                deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        """Features of ``embeddings``; ``prefix`` selects the shared-prefix pass, and
        ``deep_prompts[j - 1]`` (``[n, d]``) replaces positions 1..n at the input of block j >= 1 (MaPLe)."""
        if prefix is not None:
            if len(deep_prompts):
                raise ValueError("deep prompts change every block's input: they cannot share a cached prefix")
            return self._encode_after_prefix(prefix, embeddings, token_ids)
        rows = self.options.chunk_rows or embeddings.shape[0]
        return torch.cat([self._encode(embeddings[i:i + rows], token_ids[i:i + rows], deep_prompts)
                          for i in range(0, embeddings.shape[0], rows)])

    def _run(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        """``fn(*args)``, with its activations recomputed in backward when checkpointing."""
        if self.options.checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # ------------------------------------------------------------ plain (trimmed) pass
    def _encode(self, embeddings: Tensor, token_ids: Tensor, deep_prompts: Sequence[Tensor] = ()) -> Tensor:
        dtype = self.dtype
        pooled = self.tower.pool_index(token_ids)
        n = self.tower.kept_length(token_ids)
        x = embeddings[:, :n].type(dtype) + self.positional_embedding[:n].type(dtype)
        mask = None if self.causal_mask is None else self.causal_mask[:n, :n].to(dtype)
        *blocks, last = self.transformer.resblocks
        for index, block in enumerate(blocks):
            x = self._insert_deep_prompt(x, deep_prompts, index)
            x = self._run(self.tower.run_block, block, x, mask)
        x = self._insert_deep_prompt(x, deep_prompts, len(blocks))
        return self.tower.project(self._run(self.tower.run_block_at, last, x, pooled))

    @staticmethod
    def _insert_deep_prompt(x: Tensor, deep_prompts: Sequence[Tensor], index: int) -> Tensor:
        """``x`` ``[N, L, d]`` with positions 1..n replaced by ``deep_prompts[index - 1]`` (block 0: unchanged)."""
        if index == 0 or index > len(deep_prompts):
            return x
        prompt = deep_prompts[index - 1].to(x.dtype)
        tokens = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], tokens, x[:, 1 + prompt.shape[0]:]], dim=1)

    # ------------------------------------------------------------ shared-prefix pass
    def finish_block(self, block: nn.Module, x: Tensor, attended: Tensor) -> Tensor:
        """The rest of a block on batch-first ``x [N, L, d]`` after attention gave ``attended [N, H, L, hd]``."""
        ls_1, ls_2 = self.tower.layer_scales(block)
        x = x + ls_1(out_projection(block.attn, attended))
        return x + ls_2(block.mlp(block.ln_2(x)))

    def _encode_after_prefix(self, prefix: Tensor, suffixes: Tensor, suffix_ids: Tensor) -> Tensor:
        groups, prefix_len = prefix.shape[:2]
        if suffixes.shape[0] % groups:
            raise ValueError(f"{suffixes.shape[0]} suffix rows do not split into {groups} prefix groups")
        per_group = suffixes.shape[0] // groups
        dtype = self.dtype
        eot = self.tower.pool_index(suffix_ids)
        n = int(eot.max()) + 1
        if prefix_len + n > self.context_length:
            raise ValueError(f"prefix ({prefix_len}) + suffix ({n}) tokens exceed the context length {self.context_length}")
        cached = self._prefix_keys_values(prefix)
        x = suffixes[:, :n].type(dtype) + self.positional_embedding[prefix_len:prefix_len + n].type(dtype)
        step = self.options.chunk_rows or per_group
        features = []
        for g in range(groups):
            group_cache = [(k[g], v[g]) for k, v in cached]
            for start in range(g * per_group, (g + 1) * per_group, step):
                stop = min(start + step, (g + 1) * per_group)
                features.append(self._encode_suffixes(x[start:stop], eot[start:stop], group_cache))
        return torch.cat(features)

    def _prefix_keys_values(self, prefix: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Every block's keys and values ``[G, H, P, hd]`` of the prefixes ``[G, P, d]`` (causal among themselves)."""
        dtype = self.dtype
        length = prefix.shape[1]
        x = prefix.type(dtype) + self.positional_embedding[:length].type(dtype)
        mask = causal_mask(length, dtype, x.device)
        *blocks, last = self.transformer.resblocks
        cached = []
        for block in blocks:
            q, k, v = in_projections(block.attn, block.ln_1(x))
            cached.append((k, v))
            x = self.finish_block(block, x, attend(q, k, v, mask))
        h = last.ln_1(x)  # the last block's prefix outputs are never read: only its keys and values
        cached.append((in_projection(last.attn, h, "k"), in_projection(last.attn, h, "v")))
        return cached

    def _encode_suffixes(self, x: Tensor, eot: Tensor, cached: List[Tuple[Tensor, Tensor]]) -> Tensor:
        """Features ``[n, D]`` of suffix rows ``x [n, S, d]`` of one prefix whose per-block keys/values are ``cached``."""
        mask = causal_mask(x.shape[1], x.dtype, x.device)
        *blocks, last = self.transformer.resblocks
        for block, (prefix_k, prefix_v) in zip(blocks, cached):
            x = self._run(self._suffix_block, block, x, prefix_k, prefix_v, mask)
        return self.tower.project(self._run(self._suffix_last_block_at_eot, last, x, eot, *cached[-1]))

    def _suffix_block(self, block: nn.Module, x: Tensor, prefix_k: Tensor, prefix_v: Tensor, mask: Tensor) -> Tensor:
        """One block on suffix rows ``x [n, S, d]``: causal among themselves, the whole prefix visible."""
        q, k, v = in_projections(block.attn, block.ln_1(x))
        return self.finish_block(block, x, attend_with_prefix(q, k, v, prefix_k, prefix_v, mask))

    def _suffix_last_block_at_eot(self, block: nn.Module, x: Tensor, eot: Tensor,
                                  prefix_k: Tensor, prefix_v: Tensor) -> Tensor:
        """The last block at each row's EOT only ``[n, d]``: one query per row, the MLP on one row."""
        rows = torch.arange(x.shape[0], device=x.device)
        h = block.ln_1(x)
        k, v = in_projection(block.attn, h, "k"), in_projection(block.attn, h, "v")
        q = in_projection(block.attn, h[rows, eot][:, None], "q")  # [n, H, 1, hd]
        after_eot = torch.arange(x.shape[1], device=x.device)[None, :] > eot[:, None]  # [n, S]
        mask = torch.zeros(after_eot.shape, dtype=x.dtype, device=x.device).masked_fill_(after_eot, float("-inf"))
        attended = attend_with_prefix(q, k, v, prefix_k, prefix_v, mask[:, None, None, :])
        return self.finish_block(block, x[rows, eot][:, None], attended)[:, 0]

    # ------------------------------------------------------------ hand-written prompts
    def encode_token_ids(self, token_ids: Tensor) -> Tensor:
        """Features of hand-written prompts given as tokenizer ids ``[N, context_length]``."""
        return self(self.token_embedding(token_ids), token_ids)

    def encode_texts(self, texts: List[str]) -> Tensor:
        """Features of the given strings, ``[len(texts), D]``, tokenized by the backbone's tokenizer."""
        token_ids = self.tokenizer.tokenize(texts).to(self.positional_embedding.device)
        return self.encode_token_ids(token_ids)
