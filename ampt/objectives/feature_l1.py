"""``shield_l1``: L1 between DEFEAT's projected shield feature and the global image feature.

DEFEAT's image consistency term (``loss_scl_image``, weight ``W1`` = 10):
``F.l1_loss(image_features, shield_features)`` on the adversarial images,
both unit-normalised, mean over batch and dimensions. Neither side is
detached (the global feature has no learned parameter behind it). Needs a
model that declares ``perturb_shield`` (its ``encode_image`` gives both).
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register_objective


@register_objective
class ShieldFeatureL1(Objective):
    name = "shield_l1"
    paper = "Chen et al., ICLR 2026 (DEFEAT, image term)"
    formula = "mean |f_global(x_adv) - f_shield(x_adv)| (unit-normalised features, mean over B x D)"
    model_features = ("perturb_shield",)

    def value(self, step: Any) -> Tensor:
        global_features, shield_features = step.model.split(step.adv_features)
        return F.l1_loss(global_features, shield_features, reduction="mean")
