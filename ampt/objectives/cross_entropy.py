"""``ce`` / ``tecoa``: cross-entropy on the adversarial images (APT, TeCoA); the attack maximises it too."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import InnerLoss, Objective, register_objective


@register_objective
class AdversarialCE(Objective):
    name = "ce"
    paper = "Mao et al., ICLR 2023 (TeCoA); Li et al., CVPR 2024 (APT)"
    formula = "CE(adv logits, y), batch mean; attack: the same CE"
    has_inner = True

    def value(self, step: Any) -> Tensor:
        return F.cross_entropy(step.adv_logits, step.labels)

    def inner(self, step: Any) -> InnerLoss:
        return lambda logits, labels: F.cross_entropy(logits, labels)


@register_objective
class TeCoA(AdversarialCE):
    """The same term under the name TeCoA's users know it by."""

    name = "tecoa"
