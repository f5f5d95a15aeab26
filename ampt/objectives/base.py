"""The ``Objective`` interface: one registered loss term of adversarial prompt tuning.

A term computes its value from a :class:`~ampt.objectives.step.TrainingStep`
(what the step has computed, and what it can compute on demand) and may
declare an inner loss for the training attack. Terms are combined by
``ADV.TRAIN.LOSS`` (a weighted sum, :mod:`ampt.objectives.expression`).

A new term is one file (a built-in one in ``ampt/objectives/``, or a
plug-in in ``<plug-in folder>/objectives/``)::

    @register_objective
    class MyTerm(Objective):
        name = "my_term"
        paper = "Author et al., Venue Year"
        formula = "mean_i ..."

        @staticmethod
        def add_config(cfg):          # its own keys, under ADV.OBJECTIVE.<NAME>
            cfg.ADV.OBJECTIVE.MY_TERM = CN()
            cfg.ADV.OBJECTIVE.MY_TERM.SCALE = 1.0  # ... (unit, range)

        def value(self, step):        # -> scalar tensor; step.note("part", t) logs a component
            return ...
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

from torch import Tensor

from ..registry import Registry

InnerLoss = Callable[[Tensor, Tensor], Tensor]  # (adversarial logits, labels) -> scalar the attack maximises

OBJECTIVE_REGISTRY = Registry("objective")


class Objective:
    """One loss term. Subclasses set the class attributes and implement :meth:`value`.

    - ``name``: the term's name in ``ADV.TRAIN.LOSS`` (registry key);
    - ``paper`` / ``formula``: citation and formula (``docs/method.md`` lists them);
    - ``model_features``: what the prompt model must declare in
      ``model_features()`` (e.g. ``router_weights``, ``learned_image_features``);
    - ``has_inner``: whether :meth:`inner` defines an attack loss (``ADV.TRAIN.ATTACK_LOSS``);
    - ``inner_needs_clean``: whether that attack loss reads the clean images' prediction.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    model_features: ClassVar[Tuple[str, ...]] = ()
    has_inner: ClassVar[bool] = False
    inner_needs_clean: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @staticmethod
    def add_config(cfg: Any) -> None:
        """Add the term's own keys (default: none)."""

    def settings(self) -> Dict[str, Any]:
        """The term's settings as ``results.json``'s run block records them (default: none)."""
        return {}

    def value(self, step: Any) -> Tensor:
        """The term's scalar value on this training step (with gradient to the learned parameters)."""
        raise NotImplementedError

    def inner(self, step: Any) -> Optional[InnerLoss]:
        """The training attack's loss for this step, or None when the term declares none."""
        return None


def register_objective(cls: type) -> type:
    """Class decorator: register ``cls`` under its ``name`` (a duplicate name is an error)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} sets no name: give the class a name = \"...\" for ADV.TRAIN.LOSS")
    return OBJECTIVE_REGISTRY.register(cls, name=cls.name)
