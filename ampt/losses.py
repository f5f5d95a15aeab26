"""Training objectives of adversarial prompt tuning, selected by ``ADV.TRAIN.LOSS``.

Each objective is an outer loss (what the prompts minimise) and the inner
loss the training attack maximises:

- ``ce`` (APT, TeCoA): outer CE(adv logits, y); the attack maximises CE.
- ``trades`` (Zhang et al. 2019): outer CE(clean logits, y) + ``TRADES_BETA`` *
  KL, batch mean; the attack maximises the KL from a fixed clean prediction.
- ``fap`` (Zhou et al., NeurIPS 2024): outer CE(clean logits, y) + ``FAP_LAMBDA``
  * mean over the batch of KL_i * (cos(f_clean_i, f_adv_i) + 1), f the
  normalized image features; the attack maximises the KL (no cosine term).

"KL" is ``F.kl_div(log_softmax(adv), softmax(clean))`` per sample, i.e.
sum_c p_clean log(p_clean / p_adv), the term TRADES and FAP write as
KL(adv || clean) after the order of ``kl_div``'s arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch.nn.functional as F
from torch import Tensor

from .errors import UserError

LOSSES = ("ce", "trades", "fap")

AttackLoss = Union[str, Callable[[Tensor, Tensor], Tensor]]


def per_sample_kl(adv_logits: Tensor, clean_logits: Tensor) -> Tensor:
    """``[B]``: sum_c p_clean log(p_clean / p_adv), with gradient through both."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="none").sum(dim=1)


def kl_attack_loss(clean_logits: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The inner loss of ``trades``/``fap``: KL from the fixed (detached) clean prediction, summed over the batch.

    A sum keeps each image's gradient its own (the sign step is the same as
    with the batch mean the papers write); labels are not used.
    """
    clean = clean_logits.detach()
    return lambda adv_logits, _labels: per_sample_kl(adv_logits, clean).sum()


def trades_loss(clean_logits: Tensor, adv_logits: Tensor, labels: Tensor, beta: float) -> Tuple[Tensor, Dict[str, float]]:
    """CE(clean) + beta * batch-mean KL."""
    ce = F.cross_entropy(clean_logits, labels)
    kl = per_sample_kl(adv_logits, clean_logits).mean()
    return ce + beta * kl, {"clean_ce": ce.item(), "kl": kl.item()}


def fap_loss(clean_logits: Tensor, adv_logits: Tensor, clean_features: Tensor, adv_features: Tensor,
             labels: Tensor, lam: float) -> Tuple[Tensor, Dict[str, float]]:
    """CE(clean) + lam * mean_i KL_i * (cos(f_clean_i, f_adv_i) + 1)."""
    ce = F.cross_entropy(clean_logits, labels)
    weights = F.cosine_similarity(clean_features, adv_features, dim=-1) + 1
    term = (per_sample_kl(adv_logits, clean_logits) * weights).mean()
    return ce + lam * term, {"clean_ce": ce.item(), "fap_term": term.item()}


@dataclass(frozen=True)
class TrainLoss:
    """``ADV.TRAIN.LOSS`` and its hyper-parameters."""

    name: str = "ce"
    trades_beta: float = 6.0
    fap_lambda: float = 1.5

    @classmethod
    def from_cfg(cls, cfg: Any) -> "TrainLoss":
        node = cfg.ADV.TRAIN
        if node.LOSS not in LOSSES:
            raise UserError(f'ADV.TRAIN.LOSS "{node.LOSS}" is not one of {", ".join(LOSSES)}')
        for key in ("TRADES_BETA", "FAP_LAMBDA"):
            if float(node[key]) < 0:
                raise UserError(f"ADV.TRAIN.{key} must be >= 0 (got {node[key]})")
        return cls(node.LOSS, float(node.TRADES_BETA), float(node.FAP_LAMBDA))

    @property
    def needs_clean(self) -> bool:
        """Whether the attack and the outer loss need the clean images' logits."""
        return self.name != "ce"

    def metadata(self) -> Dict[str, Any]:
        """What ``results.json``'s run block records."""
        meta: Dict[str, Any] = {"train_loss": self.name}
        if self.name == "trades":
            meta["trades_beta"] = self.trades_beta
        if self.name == "fap":
            meta["fap_lambda"] = self.fap_lambda
        return meta

    def attack_loss(self, clean_logits: Optional[Tensor]) -> AttackLoss:
        """What the training attack maximises: "ce", or the KL from ``clean_logits``."""
        if not self.needs_clean:
            return "ce"
        if clean_logits is None:
            raise ValueError(f'ADV.TRAIN.LOSS "{self.name}": the attack needs the clean logits')
        return kl_attack_loss(clean_logits)

    def outer(self, adv_logits: Tensor, labels: Tensor, clean_logits: Optional[Tensor] = None,
              clean_features: Optional[Tensor] = None, adv_features: Optional[Tensor] = None
              ) -> Tuple[Tensor, Dict[str, float]]:
        """The loss the prompts minimise, and scalars to log."""
        if self.name == "ce":
            return F.cross_entropy(adv_logits, labels), {}
        if self.name == "trades":
            return trades_loss(clean_logits, adv_logits, labels, self.trades_beta)
        return fap_loss(clean_logits, adv_logits, clean_features, adv_features, labels, self.fap_lambda)
