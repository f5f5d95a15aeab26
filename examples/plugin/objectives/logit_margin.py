"""``logit_margin``: a hinge on the adversarial logit margin (multiclass hinge; the attack maximises CW's margin).

With ``z`` the adversarial logits of image ``i`` and ``y`` its label, the
margin is ``m_i = z_iy - max_{j != y} z_ij`` (positive: classified right).
The term is the Crammer-Singer multiclass hinge on it,

    logit_margin = mean_i max(0, kappa - m_i)

which pushes every adversarial image's margin above ``kappa`` and is zero
once it is (cross-entropy never stops pulling). Its attack loss is the
Carlini-Wagner margin ``mean_i (max_{j != y} z_ij - z_iy)``, the loss of the
``cw`` attack, so ``ADV.TRAIN.ATTACK_LOSS logit_margin`` trains against CW
PGD. Use it alone or next to cross-entropy: ``ADV.TRAIN.LOSS ce+logit_margin``.

``kappa`` is in logit units (CLIP's logits are 100 x cosine): the default 5
asks for a 0.05 cosine gap between the true class and the runner-up.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor
from yacs.config import CfgNode as CN

from ampt.errors import UserError
from ampt.objectives import InnerLoss, Objective, register_objective


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``z_iy - max_{j != y} z_ij`` per row ``[B]``."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


@register_objective
class LogitMargin(Objective):
    name = "logit_margin"
    paper = "Crammer & Singer, JMLR 2001 (multiclass hinge); Carlini & Wagner, S&P 2017 (margin attack loss)"
    formula = "mean_i max(0, kappa - (z_iy - max_{j != y} z_ij)), z the adversarial logits; attack: CW margin"
    has_inner = True

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.OBJECTIVE.LOGIT_MARGIN = CN()
        cfg.ADV.OBJECTIVE.LOGIT_MARGIN.KAPPA = 5.0  # target margin in logit units (>= 0; CLIP: 100 x cosine)

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.kappa = float(cfg.ADV.OBJECTIVE.LOGIT_MARGIN.KAPPA)
        if self.kappa < 0:
            raise UserError(f"ADV.OBJECTIVE.LOGIT_MARGIN.KAPPA must be >= 0 (got {self.kappa:g})")

    def settings(self) -> Dict[str, Any]:
        return {"logit_margin_kappa": self.kappa}

    def value(self, step: Any) -> Tensor:
        m = margin(step.adv_logits, step.labels)
        step.note("adv_margin", m.mean())
        return torch.clamp(self.kappa - m, min=0).mean()

    def inner(self, step: Any) -> InnerLoss:
        return lambda logits, labels: -margin(logits, labels).mean()
