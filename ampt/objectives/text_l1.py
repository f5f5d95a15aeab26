"""``text_l1``: L1 between the learned prompt's text features and the frozen hand-written ones.

DEFEAT's text consistency term (``loss_scl_text``, weight ``W2`` = 20):
``F.l1_loss(text_features, ori_embedding)``, the learned prompt's
unit-normalised class features against those of the dataset's hand-written
template (CoOp's per-dataset templates; ``ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE``
overrides) through the frozen text tower, mean over classes and dimensions
(and over the K prompts of a model that has several).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register_objective


@register_objective
class TextFeatureL1(Objective):
    name = "text_l1"
    paper = "Chen et al., ICLR 2026 (DEFEAT, text term)"
    formula = "mean |t_learned - t_template| (unit-normalised class text features, mean over C x D)"
    model_features = ("frozen_zero_shot",)

    def value(self, step: Any) -> Tensor:
        text = step.text_features  # [K, C, D]; DEFEAT's K = 1
        if step.zero_shot is None:
            raise RuntimeError("text_l1 needs the step's frozen zero-shot model (TrainingStep.zero_shot)")
        target = step.zero_shot.text_features().to(text.dtype)
        if text.shape[0] == 1:
            return F.l1_loss(text[0], target, reduction="mean")
        return F.l1_loss(text, target.expand_as(text), reduction="mean")  # K prompts: the mean over all of them
