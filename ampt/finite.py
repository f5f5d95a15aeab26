"""Refuse NaN / Inf weights and logits, so a diverged run never scores as chance-level "robust" accuracy.

A NaN logit row has ``argmax`` 0, so a model whose prompt became NaN still
"classifies" every image as class 0 and gets 1/C accuracy, clean and under
attack alike. These checks turn that into an error naming what is broken.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn

from .errors import NonFiniteError


def non_finite_parameters(module: nn.Module) -> List[str]:
    """Names of the parameters and buffers of ``module`` that hold a NaN or an Inf."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_weights(module: nn.Module, source: str) -> None:
    """Raise :class:`NonFiniteError` when any weight of ``module`` (loaded from ``source``) is NaN or Inf."""
    bad = non_finite_parameters(module)
    if bad:
        raise NonFiniteError(
            f"The weights loaded from {source} hold NaN or Inf values ({', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}): the run diverged or the file is damaged; "
            "evaluating it would report chance-level accuracy. Retrain it (e.g. with a lower OPTIM.LR)"
        )


def check_finite_logits(logits: Tensor, where: str) -> None:
    """Raise :class:`NonFiniteError` when ``logits`` hold a NaN or an Inf."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(
            f"The model produced NaN or Inf logits ({where}): its weights or inputs are not finite, "
            "so no accuracy is reported"
        )
