"""The VQ-VAE loss of DEFEAT's PerturbShield, as three terms (Chen et al., ICLR 2026).

DEFEAT (``trainers/defeat.py`` of cheny02/DEFEAT-ICLR2026) adds to its loss
``W3 * reconstruction + W4 * codebook + 0.25 * W4 * commitment``, each an
``nn.MSELoss()`` (mean over every element) on the adversarial images' forward:

- ``vq_reconstruction``: the patch-feature map ``x`` against the decoder's ``x_hat``;
- ``vq_codebook``: ``sg(ze)`` against the codes ``zq`` (moves the codebook);
- ``vq_commitment``: ``ze`` against ``sg(zq)`` (moves the encoder).

The weights are the DEFEAT trainer's (``TRAINER.DEFEAT.W3``, ``W4``,
``COMMITMENT``); the terms read the tensors of the step's adversarial forward (the model's
``latest_outputs()["shield"]``, kept by the step) and so need a model that
declares ``perturb_shield``.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .base import Objective, register_objective

PAPER = "Chen et al., ICLR 2026 (DEFEAT)"


def shield(step: Any):
    """The PerturbShield tensors of the step's adversarial forward."""
    return step.adv_outputs["shield"]


@register_objective
class VQReconstruction(Objective):
    name = "vq_reconstruction"
    paper = PAPER
    formula = "mean (x - x_hat)^2 over the patch-feature map of the adversarial images"
    model_features = ("perturb_shield",)

    def value(self, step: Any) -> Tensor:
        out = shield(step)
        return F.mse_loss(out.patches, out.reconstruction)


@register_objective
class VQCodebook(Objective):
    name = "vq_codebook"
    paper = PAPER
    formula = "mean (sg(z_e) - z_q)^2 (codebook loss)"
    model_features = ("perturb_shield",)

    def value(self, step: Any) -> Tensor:
        out = shield(step)
        return F.mse_loss(out.ze.detach(), out.zq)


@register_objective
class VQCommitment(Objective):
    name = "vq_commitment"
    paper = PAPER
    formula = "mean (z_e - sg(z_q))^2 (commitment loss)"
    model_features = ("perturb_shield",)

    def value(self, step: Any) -> Tensor:
        out = shield(step)
        return F.mse_loss(out.ze, out.zq.detach())
