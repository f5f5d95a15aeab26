"""The entropies test-time prompt tuning minimises, and its confidence selection."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def view_entropies(logits: Tensor) -> Tensor:
    """``[V]``: the entropy of each view's softmax."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def confident_views(logits: Tensor, fraction: float) -> Tensor:
    """Indices of the ``int(V * fraction)`` (at least 1) views of lowest entropy, most confident first (TPT/TAPT)."""
    entropies = view_entropies(logits)
    k = max(1, int(entropies.shape[0] * fraction))
    return torch.argsort(entropies, descending=False)[:k]


def marginal_entropy(logits: Tensor) -> Tensor:
    """The entropy of the views' mean probability (TPT's ``avg_entropy``, used by TAPT)."""
    log_p = logits - logits.logsumexp(dim=-1, keepdim=True)
    avg = log_p.logsumexp(dim=0) - math.log(logits.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def pointwise_entropy(logits: Tensor) -> Tensor:
    """The mean of the views' own entropies (R-TPT)."""
    return view_entropies(logits).mean()
