"""``router_balance``: log K minus the entropy of the batch-mean router weights (AMPT's ``BALANCE_WEIGHT`` term).

Zero when the batch uses the K prompts equally; needs a model that declares
``router_weights`` (the weights of the adversarial forward of the step).
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..models.router import weight_entropy
from .base import Objective, register_objective


@register_objective
class RouterBalance(Objective):
    name = "router_balance"
    paper = "load balancing of mixtures of experts (Shazeer et al., ICLR 2017, in entropy form); ours for AMPT"
    formula = "log K - H(mean_i w(x_adv_i))"
    model_features = ("router_weights",)

    def value(self, step: Any) -> Tensor:
        weights = step.adv_router_weights
        imbalance = math.log(weights.shape[1]) - weight_entropy(weights.mean(dim=0, keepdim=True))[0]
        step.note("imbalance", imbalance)
        return imbalance
