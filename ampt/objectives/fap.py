"""``fap``: FAP's objective (Zhou et al., NeurIPS 2024): clean CE + lambda x cosine-weighted KL."""
from __future__ import annotations

from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .base import InnerLoss, Objective, register_objective
from .divergences import kl_from_fixed, per_sample_kl


@register_objective
class Fap(Objective):
    name = "fap"
    paper = "Zhou et al., NeurIPS 2024 (FAP), code lionel-w2/FAP"
    formula = ("CE(clean logits, y) + lambda * mean_i KL(p_clean_i || p_adv_i) * (cos(f_clean_i, f_adv_i) + 1); "
               "attack: KL from the fixed clean prediction (no cosine)")
    has_inner = True
    inner_needs_clean = True

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.TRAIN.FAP_LAMBDA = 1.5  # LOSS term fap: weight (>= 0) of its cosine-weighted KL part (FAP's lambda)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.lam = float(cfg.ADV.TRAIN.FAP_LAMBDA)
        if self.lam < 0:
            raise UserError(f"ADV.TRAIN.FAP_LAMBDA must be >= 0 (got {cfg.ADV.TRAIN.FAP_LAMBDA})")

    def settings(self) -> Dict[str, Any]:
        return {"fap_lambda": self.lam}

    def value(self, step: Any) -> Tensor:
        clean = step.clean_logits()
        ce = F.cross_entropy(clean, step.labels)
        weights = F.cosine_similarity(step.clean_features(), step.adv_features, dim=-1) + 1
        term = (per_sample_kl(step.adv_logits, clean) * weights).mean()
        step.note("clean_ce", ce)
        step.note("fap_term", term)
        return ce + self.lam * term

    def inner(self, step: Any) -> InnerLoss:
        return kl_from_fixed(step.attack_clean_logits())
