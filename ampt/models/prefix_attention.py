"""Multi-head attention with the weights of an ``nn.MultiheadAttention``, for prefix caching.

The shared-prefix text pass (:class:`~ampt.models.text_encoder.TextEncoder`)
encodes a prefix that many sequences share once, and lets every sequence's
own tokens (its suffix) attend to the prefix's cached keys and values. These
functions compute the projections with the module's own weights (the split of
``in_proj_weight`` and the head layout are ``nn.MultiheadAttention``'s) and
the attention of suffix queries over ``[prefix keys, suffix keys]`` without
copying the prefix's keys for every suffix: the scores against the prefix are
one matmul per head over all suffix rows, and the softmax runs over both parts
together, so the result is the attention over the concatenated sequence.
Tensors are batch-first: ``[N, L, d]`` in, ``[N, H, L, d / H]`` per head.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[N, L, d] -> [N, H, L, d / H]`` (head ``h`` reads channels ``h*d/H .. (h+1)*d/H``)."""
    n, length, width = x.shape
    return x.view(n, length, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``[N, H, L, d / H] -> [N, L, d]``, the inverse of :func:`split_heads`."""
    n, n_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(n, length, n_heads * head_dim)


def in_projection(attn: nn.MultiheadAttention, h: Tensor, which: str) -> Tensor:
    """The query, key or value projection (``which`` in "q", "k", "v") of ``h [N, L, d]``, split into heads."""
    width = attn.embed_dim
    index = "qkv".index(which)
    weight = attn.in_proj_weight[index * width:(index + 1) * width]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[index * width:(index + 1) * width]
    return split_heads(F.linear(h, weight, bias), attn.num_heads)


def in_projections(attn: nn.MultiheadAttention, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values ``[N, H, L, d / H]`` of ``h [N, L, d]`` in one matmul."""
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(split_heads(t, attn.num_heads) for t in (q, k, v))  # type: ignore[return-value]


def out_projection(attn: nn.MultiheadAttention, heads: Tensor) -> Tensor:
    """``out_proj`` of the attended values ``[N, H, L, d / H] -> [N, L, d]``."""
    return attn.out_proj(merge_heads(heads))


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive ``[length, length]`` mask: 0 on and below the diagonal, -inf above (CLIP's)."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu_(1)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Scaled dot-product attention ``[N, H, Lq, hd]``; ``mask`` is additive, broadcast to the scores."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1) @ v


def attend_with_prefix(q: Tensor, k: Tensor, v: Tensor, prefix_k: Tensor, prefix_v: Tensor,
                       mask: Optional[Tensor]) -> Tensor:
    """Queries ``q [N, H, Lq, hd]`` over one shared prefix's keys ``[H, P, hd]`` and their own ``k [N, H, L, hd]``.

    Equal to :func:`attend` over the keys ``[prefix_k, k]`` (and values) of
    every row, with ``mask`` (additive, broadcast to ``[N, H, Lq, L]``)
    applied to the row's own keys only: every query sees the whole prefix.
    """
    n, n_heads, n_queries, head_dim = q.shape
    prefix_len = prefix_k.shape[-2]
    q = q * head_dim ** -0.5
    rows = q.transpose(0, 1).reshape(n_heads, n * n_queries, head_dim)  # all rows' queries, per head
    prefix_scores = (rows @ prefix_k.transpose(-1, -2)).view(n_heads, n, n_queries, prefix_len).transpose(0, 1)
    own_scores = q @ k.transpose(-1, -2)
    if mask is not None:
        own_scores = own_scores + mask
    probs = torch.cat([prefix_scores, own_scores], dim=-1).softmax(dim=-1)
    prefix_probs, own_probs = probs.split([prefix_len, k.shape[-2]], dim=-1)
    prefix_probs = prefix_probs.transpose(0, 1).reshape(n_heads, n * n_queries, prefix_len)
    from_prefix = (prefix_probs @ prefix_v).view(n_heads, n, n_queries, head_dim).transpose(0, 1)
    return from_prefix + own_probs @ v
