"""Adversarial attacks behind one registry and one contract (see :mod:`ampt.attacks.base`).

``build_attack("pgd", model, eps=4)`` gives the evaluation defaults of the
protocol (docs/method.md section 5): 100 steps, ``alpha = eps / 4``, random start.
eps and alpha are in 1/255 units; pixels are in [0, 1] in and out.
Adversarial trainers use APT's training update, :func:`apt_pgd` (pixel units);
:func:`pgd_linf` is the evaluation attacks' loop (torchattacks' semantics).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..registry import Registry
from .apt_pgd import apt_pgd
from .autoattack import AutoAttack
from .base import Attack, attack_mode, check_eps, check_pixels
from .cw import CW
from .pgd import PGD, ce_loss, margin_loss, pgd_linf
from .tpgd import TPGD, trades_kl_loss

ATTACK_REGISTRY = Registry("attack")
ATTACK_REGISTRY.register(PGD, name="pgd")
ATTACK_REGISTRY.register(CW, name="cw")
ATTACK_REGISTRY.register(TPGD, name="tpgd")
ATTACK_REGISTRY.register(AutoAttack, name="aa")

# Evaluation default (docs/method.md section 5): PGD-100, CW-100, TPGD-100.
DEFAULT_STEPS = 100


def build_attack(name: str, model: nn.Module, eps: float, alpha: Optional[float] = None,
                 steps: Optional[int] = None, num_classes: Optional[int] = None,
                 seed: int = 0, **kwargs: Any) -> Attack:
    """Build a registered attack; an unknown name lists the valid ones.

    ``steps=None`` means 100 and ``alpha=None`` means eps / 4. Parameter-free
    attacks (AutoAttack) take no alpha or steps: those two are not passed to
    them and are not part of their result. ``num_classes`` goes to the attacks
    that need it (AutoAttack, where it is required). Extra keyword arguments
    go to the attack's constructor (e.g. ``batch_size``, ``state_path`` for "aa").
    """
    cls = ATTACK_REGISTRY.get(name)
    if getattr(cls, "parameter_free", False):
        return cls(model, eps, num_classes=num_classes, seed=seed, **kwargs)
    return cls(model, eps, alpha=alpha, steps=DEFAULT_STEPS if steps is None else steps,
               seed=seed, **kwargs)


__all__ = [
    "ATTACK_REGISTRY",
    "DEFAULT_STEPS",
    "Attack",
    "apt_pgd",
    "AutoAttack",
    "CW",
    "PGD",
    "TPGD",
    "attack_mode",
    "build_attack",
    "ce_loss",
    "check_eps",
    "check_pixels",
    "margin_loss",
    "pgd_linf",
    "trades_kl_loss",
]
