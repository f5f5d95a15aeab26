"""``mart``: MART (Wang et al., ICLR 2020): boosted CE on the adversarial images + (1 - p_y)-weighted KL."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor
from yacs.config import CfgNode as CN

from ..errors import UserError
from .base import InnerLoss, Objective, register_objective


@register_objective
class Mart(Objective):
    name = "mart"
    paper = "Wang et al., ICLR 2020 (MART)"
    formula = ("CE(adv, y) - mean_i log(1.0001 - max_{k != y} p_adv_ik + 1e-12) + beta * mean_i "
               "KL(p_clean_i || p_adv_i) * (1.0000001 - p_clean_iy); attack: CE")
    has_inner = True

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.OBJECTIVE.MART = CN()
        cfg.ADV.OBJECTIVE.MART.BETA = 6.0  # weight (>= 0) of MART's misclassification-weighted KL (MART's beta)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.beta = float(cfg.ADV.OBJECTIVE.MART.BETA)
        if self.beta < 0:
            raise UserError(f"ADV.OBJECTIVE.MART.BETA must be >= 0 (got {cfg.ADV.OBJECTIVE.MART.BETA})")

    def settings(self) -> Dict[str, Any]:
        return {"mart_beta": self.beta}

    def value(self, step: Any) -> Tensor:
        adv, labels = step.adv_logits, step.labels
        adv_probs = F.softmax(adv, dim=1)
        runner_up = adv_probs.scatter(1, labels[:, None], float("-inf")).argmax(dim=1)
        boosted = F.cross_entropy(adv, labels) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), runner_up)
        clean_probs = F.softmax(step.clean_logits(), dim=1)
        true_probs = clean_probs.gather(1, labels[:, None]).squeeze(1)
        kl = (clean_probs * (torch.log(clean_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(dim=1)
        weighted_kl = (kl * (1.0000001 - true_probs)).mean()
        step.note("mart_bce", boosted)
        step.note("mart_kl", weighted_kl)
        return boosted + self.beta * weighted_kl

    def inner(self, step: Any) -> InnerLoss:
        return lambda logits, labels: F.cross_entropy(logits, labels)
