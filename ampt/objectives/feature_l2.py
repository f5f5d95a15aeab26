"""``feature_l2``: pull the adversarial image features toward the frozen model's clean ones (FARE; CoAPT).

FARE (Schlarmann et al., ICML 2024) fine-tunes the image encoder so that the
embedding of an attacked image stays where the original encoder puts the
clean image; CoAPT pulls prompted features toward the frozen model's.
Here the features are the model's unit-normalised ones (FARE uses the
unnormalised embedding). Only models whose image features are learned
(deep or visual prompts) get a gradient from it, so it needs a model that
declares ``learned_image_features``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Objective, register_objective


@register_objective
class FeatureL2(Objective):
    name = "feature_l2"
    paper = "Schlarmann et al., ICML 2024 (FARE); CoAPT, NeurIPS 2025"
    formula = "mean_i ||f_adv_i - f_frozen(x_clean_i)||_2^2 (unit-normalised features)"
    model_features = ("learned_image_features",)

    def value(self, step: Any) -> Tensor:
        target = step.frozen_image_features("clean")
        return (step.adv_features - target).pow(2).sum(dim=1).mean()
