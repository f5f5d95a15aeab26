"""``zs_kl``: KL from the frozen zero-shot CLIP's prediction to the prompted model's adversarial one.

PMG-AFT's first term (Wang et al., CVPR 2024): the adversarial prediction is
pulled toward what the pre-trained model predicts (by default on the same
adversarial images), which keeps the prompts close to CLIP's generalisation.
The frozen model is the backbone without any learned prompt, classifying
with a hand-written template (``ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE``, default
the dataset's); its text features are computed once per run.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import Tensor
from yacs.config import CfgNode as CN

from ..errors import UserError
from .base import Objective, register_objective
from .divergences import batchmean_kl

INPUTS = ("adversarial", "clean")


@register_objective
class ZeroShotKL(Objective):
    name = "zs_kl"
    paper = "Wang et al., CVPR 2024 (PMG-AFT, first term)"
    formula = "mean_i KL(p_frozen(x_i) || p_adv_i) (KLDivLoss batchmean), x_i the adversarial (or clean) image"
    model_features = ("frozen_zero_shot",)

    @staticmethod
    def add_config(cfg: Any) -> None:
        cfg.ADV.OBJECTIVE.ZS_KL = CN()
        # images the frozen model predicts: adversarial (PMG-AFT) | clean
        cfg.ADV.OBJECTIVE.ZS_KL.INPUT = "adversarial"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        node = cfg.ADV.OBJECTIVE.ZS_KL
        if node.INPUT not in INPUTS:
            raise UserError(f'ADV.OBJECTIVE.ZS_KL.INPUT "{node.INPUT}" is not one of {", ".join(INPUTS)}')
        self.input = node.INPUT

    def settings(self) -> Dict[str, Any]:
        return {"zs_kl_input": self.input}

    def value(self, step: Any) -> Tensor:
        return batchmean_kl(step.adv_logits, step.frozen_logits(self.input))
