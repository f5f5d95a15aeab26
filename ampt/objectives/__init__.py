"""Training objectives: registered, composable loss terms (``ADV.TRAIN.LOSS``, e.g. ``fap+0.5*zs_kl``).

- :mod:`.base`: the :class:`Objective` interface and ``OBJECTIVE_REGISTRY``;
- :mod:`.step`: :class:`TrainingStep`, what a step has computed and computes once on demand;
- :mod:`.expression`: the weighted-sum syntax;
- :mod:`.objective`: :class:`TrainingObjective`, the run's sum and the attack's loss;
- one file per term: ``ce``/``tecoa``, ``trades``, ``fap``, ``clean_ce``, ``clean_adv_kl``,
  ``router_balance``, ``zs_kl``, ``mart``, ``renyi``, ``feature_l2``; DEFEAT's ``vq_*``, ``shield_l1``,
  ``text_l1``; the mixture-of-experts prompts' ``gate_balance``, ``expert_diversity``.

Plug-in folders add terms in ``<folder>/objectives/*.py`` (``ampt.plugins``).
"""
from .base import OBJECTIVE_REGISTRY, InnerLoss, Objective, register_objective
from .objective import TrainingObjective, add_objective_configs, check_inner_differentiable
from .step import FrozenZeroShot, TrainingStep, model_features
from . import (  # noqa: F401  (each file registers its term)
    clean_adv_kl, clean_ce, cross_entropy, fap, feature_l2, mart, renyi, router_balance, trades, zs_kl,
)
from . import feature_l1, text_l1, vq_loss  # noqa: F401,E402  (DEFEAT's terms)
from . import gate_losses  # noqa: F401,E402  (the mixture-of-experts prompts' terms)

__all__ = ["FrozenZeroShot", "InnerLoss", "OBJECTIVE_REGISTRY", "Objective", "TrainingObjective", "TrainingStep",
           "add_objective_configs", "check_inner_differentiable", "model_features", "register_objective"]
