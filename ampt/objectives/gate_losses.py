"""The mixture-of-experts prompts' auxiliary terms (xinwong/MMoP, ``ResidualAttentionBlock_IVLP_MoE``).

- ``gate_balance``: per gated block, the squared distance of the batch-mean
  gate weights from uniform, ``mean_k (mean_n w_nk - 1/K)^2`` (MMoP's
  ``load_balance_loss``: ``F.mse_loss`` against ``1/K``), summed over the
  blocks of both towers. Image gates: the step's adversarial forward; text
  gates: the step's class prompts.
- ``expert_diversity``: per gated block, the mean over expert pairs of
  ``max(0, cos(E_i, E_j))`` on the flattened experts (MMoP's
  ``expert_diversity_loss``), summed over the blocks of both towers.

Both need a model that declares ``prompt_experts`` (MoEAdvVLP). MMoP ramps
their weights up over ``AUX_WARMUP_EPOCHS``; here the weight is the one
written in ``ADV.TRAIN.LOSS`` from the first step.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register_objective

PAPER = "xinwong/MMoP (mixture-of-experts adversarial prompts), clip/model.py"


@register_objective
class GateBalance(Objective):
    name = "gate_balance"
    paper = PAPER
    formula = "sum over gated blocks of mean_k (mean_n w_nk - 1/K)^2"
    model_features = ("prompt_experts",)

    def value(self, step: Any) -> Tensor:
        gates = [*step.adv_outputs["image_gates"], *step.adv_outputs["text_gates"]]
        total = step.adv_logits.new_zeros(())
        for weights in gates:
            mean = weights.float().mean(dim=0)
            total = total + F.mse_loss(mean, torch.full_like(mean, 1.0 / mean.shape[0]))
        return total


@register_objective
class ExpertDiversity(Objective):
    name = "expert_diversity"
    paper = PAPER
    formula = "sum over gated blocks of mean_{i<j} max(0, cos(E_i, E_j))"
    model_features = ("prompt_experts",)

    def value(self, step: Any) -> Tensor:
        total = step.adv_logits.new_zeros(())
        for experts in step.model.expert_banks():
            k = experts.shape[0]
            if k < 2:
                continue
            flat = F.normalize(experts.float().reshape(k, -1), dim=-1)
            pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=flat.device), diagonal=1)
            total = total + (flat @ flat.T)[pairs].clamp(min=0).mean()
        return total
