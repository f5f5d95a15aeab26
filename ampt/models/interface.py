"""The declared interface between a trainer's model and the core.

Every CLIP trainer's ``self.model`` implements :class:`PromptModel`; the core
(``evaluate.py`` / :mod:`ampt.evaluation.evaluate_cli`, the training attack in
:mod:`ampt.trainer_base.adversarial`, :mod:`ampt.interpret`) asks only these methods and
never looks for attributes such as ``prompt_learner`` or ``template``.
:func:`check_prompt_model` runs once, when a trainer sets its model up.

- ``text_features()``: what does not depend on the input image, ``[K, C, D]``
  normalized (the text side of a text-prompt or deep-prompt model, a fixed
  template's features). It is computed once per training step or evaluation
  and passed back as ``forward(x, text_features=...)``, so every attack step
  reuses it.
- ``forward(x, text_features=None)``: pixels in [0, 1] -> logits ``[B, C]``,
  equal to ``combine(encode_image(x), text_features)`` (normalized image
  features, then logits; losses that need the features use the two parts).
- ``prompt_parameters()``: the learnable prompt tensors (what the
  ``perturbed`` training attack pushes); may be empty.
- ``word_prompts()``: learned vectors that live in the token-embedding space,
  by name (what ``ampt.interpret`` decodes); may be empty.
- ``prompt_label()``: how a record names the model's own prompt: ``learned``
  for anything learned, the template for a hand-written prompt.
- ``attack_prompt_modes()``: the ``ADV.TRAIN.PROMPT`` modes the model
  supports; an adversarial trainer refuses any other before training.
- ``template_features(classnames, template)``: ``[K, C, D]`` features of a
  hand-written template on this backbone (``--prompt TEMPLATE`` and the
  ``constant`` attack prompt).
- ``model_features()``: what the model offers the loss terms of
  :mod:`ampt.objectives` beyond logits and features (:data:`MODEL_FEATURES`);
  a term that needs something the model does not declare is refused in one
  line before training.
- ``router_weights()``: the mixture weights ``[B, K]`` of the latest forward
  (with gradient), for a model that declares ``router_weights``; else None.
- ``frozen_image_features(x)``: normalized features of the frozen image
  tower without any learned prompt (the zero-shot model's), for a model that
  declares ``frozen_zero_shot``.
- ``image_blocks()``: the image tower's transformer blocks and the batch
  dimension of their input (test-time methods read per-layer token
  statistics there).
- ``latest_outputs()``: the side tensors of the latest forward, by name
  (DEFEAT's ``shield``, the mixture-of-experts ``image_gates`` /
  ``text_gates``), with gradient; the training step keeps those of its
  adversarial forward, so a loss term reads them whatever other forwards
  the other terms run.
- ``exportable_state()``: what ``python -m ampt.export`` writes and
  :func:`ampt.load_classifier` rebuilds the model from without a trainer
  (:class:`~ampt.models.exported.ExportState`); the default refuses in one line.
"""
from __future__ import annotations

import abc
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UserError
from .exported import ExportRefused, ExportState

LEARNED = "learned"
ATTACK_PROMPT_MODES = ("onfly", "constant", "perturbed", "perturbed_rms")
REQUIRED = ("text_features", "encode_image", "combine", "forward", "prompt_parameters", "word_prompts", "prompt_label",
            "attack_prompt_modes", "template_features", "n_prompts", "model_features", "router_weights",
            "frozen_image_features", "latest_outputs", "image_blocks")
# What model_features() may declare:
MODEL_FEATURES = {
    "frozen_zero_shot": "frozen_image_features(x) and template_features give the zero-shot CLIP without prompts",
    "learned_image_features": "encode_image depends on learned parameters (deep or visual prompts)",
    "router_weights": "router_weights() returns the mixture weights of the latest forward",
    "perturb_shield": "shield_outputs(features) gives DEFEAT's PerturbShield tensors (patch map, VQ-VAE "
                      "reconstruction, encodings, codes) of the latest encode_image call, which returned features",
    "prompt_experts": "latest_outputs() holds the gate weights [N, K] of each gated block ('image_gates' of the "
                      "latest encode_image, 'text_gates' of the latest text_features) and expert_banks() the "
                      "expert prompts [K, n, d] of each block",
}


class PromptModel(abc.ABC):
    """Mix-in declaring the interface; subclass it together with ``nn.Module``."""

    @abc.abstractmethod
    def text_features(self) -> torch.Tensor:
        """Input-independent, normalized ``[K, C, D]`` features, computed once and passed to ``forward``."""

    @abc.abstractmethod
    def prompt_parameters(self) -> List[nn.Parameter]:
        """The learnable prompt tensors (empty for a hand-written prompt)."""

    @property
    def n_prompts(self) -> int:
        """K, the number of prompts ``text_features`` stacks."""
        return 1

    def word_prompts(self) -> Dict[str, torch.Tensor]:
        """Learned ``[..., L, d]`` vectors in the token-embedding space, by name (default: none)."""
        return {}

    def prompt_label(self) -> str:
        """The ``prompt`` field of the model's own records."""
        return LEARNED

    def attack_prompt_modes(self) -> Tuple[str, ...]:
        """``ADV.TRAIN.PROMPT`` modes this model supports (``perturbed`` needs prompt parameters)."""
        return ATTACK_PROMPT_MODES if self.prompt_parameters() else ATTACK_PROMPT_MODES[:2]

    @abc.abstractmethod
    def template_features(self, classnames: Sequence[str], template: str) -> torch.Tensor:
        """``[K, C, D]`` features of ``template`` (K identical copies: any mixture of them is the template)."""

    def model_features(self) -> FrozenSet[str]:
        """Names from :data:`MODEL_FEATURES` this model offers the loss terms (default: none)."""
        return frozenset()

    def router_weights(self) -> Optional[torch.Tensor]:
        """Mixture weights ``[B, K]`` of the latest forward, with gradient (default: None, no router)."""
        return None

    def frozen_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``[B, D]`` features of the image tower without learned prompts (``frozen_zero_shot``)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare frozen_zero_shot")

    def latest_outputs(self) -> Dict[str, object]:
        """Side tensors of the latest forward, by name, with gradient (default: none)."""
        return {}

    def image_blocks(self) -> Tuple[List[nn.Module], int]:
        """The image tower's transformer blocks in order, and the batch dimension of their input
        (``[L, N, D]``: 1; ``[N, L, D]``: 0); no blocks for a tower without tokens (default: none)."""
        return [], 0

    def shield_outputs(self, features: torch.Tensor):
        """DEFEAT's PerturbShield tensors of the forward that returned ``features`` (``perturb_shield``)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare perturb_shield")

    def exportable_state(self) -> ExportState:
        """Class, settings and learned tensors an exported artifact rebuilds this model from (default: refused)."""
        raise ExportRefused(
            f"{type(self).__name__} declares no exportable state (PromptModel.exportable_state), so its runs cannot "
            "be exported; implement exportable_state and a from_exported classmethod on the model class")


def check_prompt_model(model: nn.Module) -> None:
    """Raise a one-line ``TypeError`` naming what ``model`` lacks of the interface."""
    missing = [name for name in REQUIRED if not hasattr(model, name)]
    if missing or not isinstance(model, nn.Module):
        raise TypeError(
            f"{type(model).__name__} does not implement the prompt-model interface "
            f"(ampt.models.interface.PromptModel): missing {', '.join(missing) or 'nn.Module'}"
        )


def check_attack_prompt(model: nn.Module, mode: str) -> None:
    """Refuse an ``ADV.TRAIN.PROMPT`` the model does not support, with the valid choices."""
    valid = tuple(model.attack_prompt_modes())
    if mode not in valid:
        raise UserError(
            f'ADV.TRAIN.PROMPT "{mode}" is not supported by {type(model).__name__}; valid: {", ".join(valid)}'
        )
