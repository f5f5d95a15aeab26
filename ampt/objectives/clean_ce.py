"""``clean_ce``: cross-entropy on the clean images (AMPT's ``CLEAN_CE_WEIGHT`` term)."""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register_objective


@register_objective
class CleanCE(Objective):
    name = "clean_ce"
    paper = "standard; the clean-accuracy term of mixed clean/adversarial training"
    formula = "CE(clean logits, y), batch mean"

    def value(self, step: Any) -> Tensor:
        return F.cross_entropy(step.clean_logits(), step.labels)
