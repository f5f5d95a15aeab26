"""The training objective of a run: ``ADV.TRAIN.LOSS`` (a weighted sum of terms) and the attack's loss.

:class:`TrainingObjective` is what :class:`~ampt.trainer_base.adversarial.AdversarialClipTrainer`
asks: ``loss(step)`` (the outer loss the learned parameters minimise, and
scalars to log), ``inner(step)`` (what the training attack maximises:
``ADV.TRAIN.ATTACK_LOSS``, default the first term's), ``check_model``
(every term's declared model features are offered), ``metadata()`` (the run
block of ``results.json``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..registry import unknown_name_message
from .base import OBJECTIVE_REGISTRY, InnerLoss, Objective
from .expression import format_expression, parse_expression
from .step import TrainingStep, model_features


def add_objective_configs(cfg: Any) -> None:
    """Every registered term's own keys (``Objective.add_config``), added once to ``cfg``."""
    for name in OBJECTIVE_REGISTRY.registered_names():
        OBJECTIVE_REGISTRY.get(name).add_config(cfg)


class TrainingObjective:
    """A weighted sum of registered :class:`~ampt.objectives.base.Objective` terms and the attack's term.

    ``extra`` terms (``(name, weight)``) follow the expression's: a trainer's
    own weight keys (AMPT's ``CLEAN_CE_WEIGHT`` ...) become terms this way.
    """

    def __init__(self, cfg: Any, extra: Sequence[Tuple[str, float]] = (), attack: bool = True) -> None:
        valid = OBJECTIVE_REGISTRY.registered_names()
        written = parse_expression(str(cfg.ADV.TRAIN.LOSS), valid)
        names = [name for name, _ in written]
        duplicated = [name for name, weight in extra if weight > 0 and name in names]
        if duplicated:
            raise UserError(f'ADV.TRAIN.LOSS "{cfg.ADV.TRAIN.LOSS}" names {duplicated}, which the trainer\'s own '
                            "weight keys add too: set the weight in one place")
        self.weights: List[Tuple[str, float]] = written + [(name, float(w)) for name, w in extra if w > 0]
        self.terms: Dict[str, Objective] = {name: OBJECTIVE_REGISTRY.get(name)(cfg) for name, _ in self.weights}
        self.attack_name, self.attack_term = "", None
        if attack:  # a clean trainer (CoOp) has no training attack
            self._set_attack_term(cfg, written[0][0], valid)

    def _set_attack_term(self, cfg: Any, first: str, valid: Sequence[str]) -> None:
        self.attack_name = str(cfg.ADV.TRAIN.ATTACK_LOSS) or first
        if self.attack_name not in valid:
            raise UserError("ADV.TRAIN.ATTACK_LOSS: " + unknown_name_message("loss term", self.attack_name, valid))
        self.attack_term = self.terms.get(self.attack_name) or OBJECTIVE_REGISTRY.get(self.attack_name)(cfg)
        if not self.attack_term.has_inner:
            with_inner = [n for n in valid if OBJECTIVE_REGISTRY.get(n).has_inner]
            source = "ADV.TRAIN.ATTACK_LOSS" if cfg.ADV.TRAIN.ATTACK_LOSS else "the first term of ADV.TRAIN.LOSS"
            raise UserError(f'{source} "{self.attack_name}" declares no attack loss: set ADV.TRAIN.ATTACK_LOSS to '
                            f'one of {", ".join(with_inner)}')

    @property
    def expression(self) -> str:
        """The effective sum, the trainer's extra terms included (``ce+0.5*clean_ce``)."""
        return format_expression(self.weights)

    @property
    def attack_needs_clean(self) -> bool:
        """Whether the attack's loss reads the clean images' prediction (refused with APT's ``perturbed`` modes)."""
        return self.attack_term is not None and self.attack_term.inner_needs_clean

    def check_model(self, model: nn.Module) -> None:
        """One line naming a term whose declared model features ``model`` does not offer."""
        offered = model_features(model)
        attack = [(self.attack_name, self.attack_term)] if self.attack_term is not None else []
        for name, term in list(self.terms.items()) + attack:
            missing = [f for f in term.model_features if f not in offered]
            if missing:
                raise UserError(f'loss term "{name}" needs {", ".join(missing)}, which {type(model).__name__} does '
                                f'not offer (it offers {", ".join(sorted(offered)) or "nothing"}): remove the term '
                                "from ADV.TRAIN.LOSS or use a prompt model that learns it")

    def loss(self, step: TrainingStep) -> Tuple[Tensor, Dict[str, float]]:
        """The weighted sum, added in the written order, and the scalars to log."""
        total = None
        logs: Dict[str, float] = {}
        for name, weight in self.weights:
            if weight == 0:
                continue
            term = self.terms[name]
            value = term.value(step)
            if len(self.weights) > 1:
                logs.setdefault(name, float(value.detach()))
            weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
        if total is None:
            raise UserError(f'ADV.TRAIN.LOSS "{self.expression}" has every weight 0: nothing to train')
        return total, {**step.notes, **logs}

    def inner(self, step: TrainingStep) -> InnerLoss:
        """The attack's loss on this step (see ``Objective.inner``)."""
        return self.attack_term.inner(step)

    def metadata(self) -> Dict[str, Any]:
        """``results.json`` run block: the sum, each term's weight and settings, the attack's term."""
        meta: Dict[str, Any] = {"train_loss": self.expression}
        terms = []
        for name, weight in self.weights:
            settings = self.terms[name].settings()
            meta.update(settings)
            terms.append({"name": name, "weight": weight, **settings})
        meta["objective"] = {"terms": terms}
        if self.attack_term is not None:
            meta["objective"]["attack_loss"] = self.attack_name
            settings = self.attack_term.settings()
            if self.attack_name not in self.terms and settings:
                meta["objective"]["attack_loss_settings"] = settings
        return meta


def check_inner_differentiable(objective: TrainingObjective, step: TrainingStep) -> None:
    """Refuse an attack loss whose gradient w.r.t. the image is missing, zero or not finite on ``step``.

    ``step.images`` are random probe images and ``step.attack_forward`` the
    model; the probe starts the attack from a small random perturbation, as
    the training attack does.
    """
    with torch.enable_grad():
        adv = (step.images + 0.01 * torch.rand_like(step.images)).clamp(0, 1).requires_grad_(True)
        value = objective.inner(step)(step.attack_forward(adv), step.labels)
        grad = torch.autograd.grad(value, adv, allow_unused=True)[0] if value.requires_grad else None
    if grad is None:
        reason = "no gradient"
    elif not torch.isfinite(grad).all():
        reason = "a non-finite gradient"
    elif not grad.abs().sum() > 0:
        reason = "a zero gradient"
    else:
        return
    raise UserError(f'the training attack\'s loss "{objective.attack_name}" gives {reason} w.r.t. the image, so '
                    "PGD cannot move the pixels: set ADV.TRAIN.ATTACK_LOSS to a differentiable term (e.g. ce)")
