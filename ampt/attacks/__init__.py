"""Adversarial attacks behind one registry and one contract (see :mod:`ampt.attacks.base`).

``build_attack("pgd", model, eps=4)`` gives the evaluation defaults of the
protocol (docs/method.md section 5): 100 steps, ``alpha = eps / 4``, random start.
eps and alpha are in 1/255 units; pixels are in [0, 1] in and out.
Adversarial trainers use APT's training update, :func:`apt_pgd` (pixel units);
:func:`pgd_linf` is the evaluation attacks' loop (torchattacks' semantics).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .apt_pgd import apt_pgd
from .autoattack import (APGDCE, APGDDLR, APGDT, FABT, AutoAttack, AutoAttackCustom, AutoAttackPlus,
                         AutoAttackRand, Square)
from .base import Attack, attack_mode, check_eps, check_pixels
from .cw import CW
from .pgd import PGD, ce_loss, margin_loss, pgd_linf
from .tpgd import TPGD, trades_kl_loss

ATTACK_REGISTRY = Registry("attack")
for _name, _cls in (("pgd", PGD), ("cw", CW), ("tpgd", TPGD), ("aa", AutoAttack), ("aa-plus", AutoAttackPlus),
                    ("aa-rand", AutoAttackRand), ("aa-custom", AutoAttackCustom), ("apgd-ce", APGDCE),
                    ("apgd-dlr", APGDDLR), ("apgd-t", APGDT), ("fab-t", FABT), ("square", Square)):
    ATTACK_REGISTRY.register(_cls, name=_name)

# Evaluation default (docs/method.md section 5): PGD-100, CW-100, TPGD-100.
DEFAULT_STEPS = 100


def check_attack_settings(name: str, alpha: Optional[float] = None, steps: Optional[int] = None,
                          restarts: int = 1, eot_iter: int = 1, options: str = "") -> None:
    """Refuse, in one line, a setting the attack ``name`` does not take (e.g. restarts of "aa")."""
    cls = ATTACK_REGISTRY.get(name)
    refused = []
    if alpha is not None and not cls.takes_alpha:
        refused.append("alpha")
    if steps is not None and cls.default_steps is None:
        refused.append("steps")
    if int(restarts) != 1 and not cls.takes_restarts:
        refused.append("restarts")
    if int(eot_iter) != 1 and not cls.takes_eot:
        refused.append("EOT")
    if options and not cls.takes_options:
        refused.append("an attack list")
    if refused:
        raise UserError(f"attack {name} takes no {' or '.join(refused)}: its settings are fixed by its definition; "
                        f"attacks that take them: {', '.join(_takers(refused))}")
    if int(restarts) < 1 or int(eot_iter) < 1 or (steps is not None and int(steps) < 0):
        raise UserError(f"attack {name}: restarts and EOT iterations must be >= 1 and steps >= 0 "
                        f"(got restarts={restarts}, eot_iter={eot_iter}, steps={steps})")
    if cls.takes_options and not options:
        raise UserError(f"attack {name} needs its attack list, e.g. apgd-ce,apgd-t (--aa-attacks in evaluate.py)")


def _takers(refused: List[str]) -> List[str]:
    flag = {"alpha": "takes_alpha", "restarts": "takes_restarts", "EOT": "takes_eot", "an attack list": "takes_options"}
    names = []
    for name in ATTACK_REGISTRY.registered_names():
        cls = ATTACK_REGISTRY.get(name)
        ok = all(getattr(cls, flag[r]) if r in flag else cls.default_steps is not None for r in refused)
        if ok:
            names.append(name)
    return names or ["none"]


def build_attack(name: str, model: nn.Module, eps: float, alpha: Optional[float] = None,
                 steps: Optional[int] = None, num_classes: Optional[int] = None,
                 seed: int = 0, restarts: int = 1, eot_iter: int = 1, options: str = "",
                 bpda: bool = False, **kwargs: Any) -> Attack:
    """Build a registered attack; an unknown name lists the valid ones.

    ``steps=None`` means the attack's default (100; Square: 5,000 queries)
    and ``alpha=None`` eps / 4. AutoAttack's versions take no alpha or steps.
    A setting the attack does not take is refused (:func:`check_attack_settings`).
    ``num_classes`` goes to the attacks that need it (the AutoAttack family,
    where it is required). Extra keyword arguments go to the attack's
    constructor (e.g. ``batch_size``, ``state_path`` for "aa").
    """
    cls = ATTACK_REGISTRY.get(name)
    check_attack_settings(name, alpha, steps, restarts, eot_iter, options)
    settings: Dict[str, Any] = {"seed": seed, "bpda": bpda}
    if cls.takes_restarts:
        settings["restarts"] = restarts
    if cls.takes_eot:
        settings["eot_iter"] = eot_iter
    if cls.takes_options:
        settings["options"] = options
    if issubclass(cls, AutoAttack):
        steps_kw = {} if cls.default_steps is None else {"steps": cls.default_steps if steps is None else steps}
        return cls(model, eps, num_classes=num_classes, **steps_kw, **settings, **kwargs)
    return cls(model, eps, alpha=alpha, steps=cls.default_steps if steps is None else steps, **settings, **kwargs)


__all__ = [
    "ATTACK_REGISTRY",
    "DEFAULT_STEPS",
    "Attack",
    "apt_pgd",
    "AutoAttack",
    "check_attack_settings",
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
