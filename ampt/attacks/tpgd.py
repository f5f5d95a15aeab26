"""TPGD: the KL attack of TRADES."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .pgd import IterativeAttack


def trades_kl_loss(clean_logits: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``KL(p_clean || p_adv)`` summed over the batch, as a :func:`pgd_linf` loss (labels unused)."""
    p_clean = F.softmax(clean_logits.detach(), dim=1)

    def loss(adv_logits: Tensor, _labels: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(adv_logits, dim=1), p_clean, reduction="sum")

    loss.restrict = lambda index: trades_kl_loss(clean_logits[index])  # type: ignore[attr-defined]
    return loss


class TPGD(IterativeAttack):
    """The inner maximisation of TRADES: Zhang et al., "Theoretically Principled
    Trade-off between Robustness and Accuracy" (ICML 2019). Threat model:
    white-box, untargeted, L-inf ball of radius ``eps``/255 in pixel space.

    Starts from the clean images plus 0.001 * N(0, 1) noise (as TRADES) and
    takes ``steps`` sign-gradient steps of size ``alpha``/255 (default eps / 4)
    on ``KL(p_clean || p_adv)``, projecting each step. Labels are not used: the
    attack pushes the prediction away from the clean one, right or wrong.
    Same algorithm as ``torchattacks.TPGD``.
    """

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            clean_logits = self.get_logits(images)
        return self._run(images, labels, loss=trades_kl_loss(clean_logits), random_start="normal")
