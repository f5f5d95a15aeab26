"""Divergences between predictions shared by the loss terms.

"KL" here is ``F.kl_div(log_softmax(adv), softmax(target))``, i.e.
``sum_c p_target log(p_target / p_adv)``: the term TRADES, FAP and PMG-AFT
write as KL(adv || target) after the order of ``kl_div``'s arguments.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def per_sample_kl(adv_logits: Tensor, target_logits: Tensor) -> Tensor:
    """``[B]``: sum_c p_target log(p_target / p_adv), with gradient through both."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(target_logits, dim=1), reduction="none").sum(dim=1)


def batchmean_kl(adv_logits: Tensor, target_logits: Tensor) -> Tensor:
    """The batch mean of :func:`per_sample_kl`, as ``KLDivLoss(reduction="batchmean")`` sums it."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(target_logits, dim=1), reduction="batchmean")


def kl_from_fixed(target_logits: Tensor):
    """An attack loss: the KL of the attacked prediction from fixed (detached) target logits, summed.

    A sum keeps each image's gradient its own (the sign step equals that of
    the batch mean the papers write); labels are not used.
    """
    target = target_logits.detach()
    return lambda adv_logits, _labels: per_sample_kl(adv_logits, target).sum()
