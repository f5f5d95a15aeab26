"""``trades``: CE on the clean images + ``ADV.TRAIN.TRADES_BETA`` x KL(adv || clean) (Zhang et al., ICML 2019)."""
from __future__ import annotations

from typing import Any, Dict

import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .base import InnerLoss, Objective, register_objective
from .divergences import kl_from_fixed, per_sample_kl


@register_objective
class Trades(Objective):
    name = "trades"
    paper = "Zhang et al., ICML 2019 (TRADES)"
    formula = "CE(clean logits, y) + beta * mean_i KL(p_clean_i || p_adv_i); attack: KL from the fixed clean prediction"
    has_inner = True
    inner_needs_clean = True

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.TRAIN.TRADES_BETA = 6.0  # LOSS term trades: weight (>= 0) of its KL part (TRADES' beta)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.beta = float(cfg.ADV.TRAIN.TRADES_BETA)
        if self.beta < 0:
            raise UserError(f"ADV.TRAIN.TRADES_BETA must be >= 0 (got {cfg.ADV.TRAIN.TRADES_BETA})")

    def settings(self) -> Dict[str, Any]:
        return {"trades_beta": self.beta}

    def value(self, step: Any) -> Tensor:
        clean = step.clean_logits()
        ce = F.cross_entropy(clean, step.labels)
        kl = per_sample_kl(step.adv_logits, clean).mean()
        step.note("clean_ce", ce)
        step.note("kl", kl)
        return ce + self.beta * kl

    def inner(self, step: Any) -> InnerLoss:
        return kl_from_fixed(step.attack_clean_logits())
