"""Initial contexts that start a bank of K prompts apart (AMPT's ``INIT orthogonal | templates``).

With independent N(0, 0.02) contexts the K prompts' text features start
almost identical (the class name dominates a short random context), so the
router has nothing to choose between. Two ways to start them apart:

- :func:`orthogonal_contexts`: random contexts whose K flattened vectors are
  mutually orthogonal, each with the norm of an N(0, 0.02) draw;
- :func:`template_contexts`: prompt k starts from the k-th of K hand-written
  phrases (its token embeddings, placed right before the class name), the
  context tokens in front of a shorter phrase drawn N(0, 0.02).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .backbone import backbone_info
from .prompt_learner import _word_embeddings
from .text_tower import text_tower
from ..errors import UserError

TEMPLATE_SEPARATOR = "|"


def split_templates(text: str) -> List[str]:
    """The phrases of a ``|``-separated ``CTX_INIT`` (empty phrases dropped)."""
    return [p.strip() for p in text.split(TEMPLATE_SEPARATOR) if p.strip()]


def orthogonal_contexts(shape: torch.Size, std: float = 0.02) -> torch.Tensor:
    """``[K, ...]`` random contexts, rows (flattened) mutually orthogonal, each with an N(0, std) draw's norm."""
    k = shape[0]
    draw = torch.empty(shape).normal_(std=std).reshape(k, -1)
    if k > draw.shape[1]:
        raise ValueError(f"{k} orthogonal contexts need at least {k} numbers each (got {draw.shape[1]})")
    q, _ = torch.linalg.qr(draw.t())  # [n, K], orthonormal columns spanning the draws
    rows = q.t() * draw.norm(dim=1, keepdim=True)
    return rows.reshape(shape)


def template_contexts(clip_model: nn.Module, text: str, n_prompts: int, n_ctx: int, std: float = 0.02) -> torch.Tensor:
    """``[K, n_ctx, d]`` contexts from K ``|``-separated phrases, each at the end of its context."""
    phrases = split_templates(text)
    if len(phrases) != n_prompts:
        raise UserError(f'CTX_INIT "{text}" has {len(phrases)} "|"-separated phrases for {n_prompts} prompts')
    tower, tokenizer = text_tower(clip_model), backbone_info(clip_model).tokenizer
    ctx = torch.empty(n_prompts, n_ctx, tower.width).normal_(std=std)
    for k, phrase in enumerate(phrases):
        words = _word_embeddings(tower.token_embedding, tokenizer, phrase)
        if words.shape[0] > n_ctx:
            raise UserError(f'CTX_INIT phrase "{phrase}" has {words.shape[0]} tokens, more than N_CTX {n_ctx}')
        ctx[k, n_ctx - words.shape[0]:] = words
    return ctx
