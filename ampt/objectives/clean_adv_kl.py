"""``clean_adv_kl``: KL between the clean and the adversarial prediction of the prompted model.

PMG-AFT's second term (Wang et al., CVPR 2024), and AMPT's
``TRADES_KL_WEIGHT`` term. The attack may maximise the same KL from the
fixed clean prediction (TRADES' inner loss).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import InnerLoss, Objective, register_objective
from .divergences import batchmean_kl, kl_from_fixed


@register_objective
class CleanAdvKL(Objective):
    name = "clean_adv_kl"
    paper = "Wang et al., CVPR 2024 (PMG-AFT, second term)"
    formula = "mean_i KL(p_clean_i || p_adv_i) (KLDivLoss batchmean); attack: KL from the fixed clean prediction"
    has_inner = True
    inner_needs_clean = True

    def value(self, step: Any) -> Tensor:
        return batchmean_kl(step.adv_logits, step.clean_logits())

    def inner(self, step: Any) -> InnerLoss:
        return kl_from_fixed(step.attack_clean_logits())
