"""``renyi``: Renyi divergence of order alpha between the clean and the adversarial prediction (CoAPT).

CoAPT (NeurIPS 2025; no public code) aligns the clean and adversarial
image-text similarity distributions with a Renyi divergence of order 2.5.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from ..errors import UserError
from .base import Objective, register_objective


def renyi_divergence(p_logits: Tensor, q_logits: Tensor, order: float) -> Tensor:
    """``[B]``: D_alpha(p || q) = log(sum_c p_c^alpha q_c^(1 - alpha)) / (alpha - 1), from logits (log-sum-exp)."""
    log_p, log_q = F.log_softmax(p_logits, dim=1), F.log_softmax(q_logits, dim=1)
    return torch.logsumexp(order * log_p + (1 - order) * log_q, dim=1) / (order - 1)


@register_objective
class Renyi(Objective):
    name = "renyi"
    paper = "CoAPT, NeurIPS 2025 (order 2.5)"
    formula = "mean_i D_alpha(p_clean_i || p_adv_i), D_alpha = log(sum_c p^alpha q^(1-alpha)) / (alpha - 1)"

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.OBJECTIVE.RENYI = CN()
        cfg.ADV.OBJECTIVE.RENYI.ORDER = 2.5  # alpha of the Renyi divergence (> 0, != 1; CoAPT: 2.5)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.order = float(cfg.ADV.OBJECTIVE.RENYI.ORDER)
        if self.order <= 0 or self.order == 1:
            raise UserError(f"ADV.OBJECTIVE.RENYI.ORDER must be > 0 and != 1 (got {cfg.ADV.OBJECTIVE.RENYI.ORDER}); "
                            "order 1 is the KL: use the term clean_adv_kl")

    def settings(self) -> Dict[str, Any]:
        return {"renyi_order": self.order}

    def value(self, step: Any) -> Tensor:
        return renyi_divergence(step.clean_logits(), step.adv_logits, self.order).mean()
