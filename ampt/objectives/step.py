"""What one training step has computed, and what a loss term may ask it to compute once.

:class:`TrainingStep` is built by the adversarial trainer for every batch.
It holds the images, labels, adversarial images, the step's text features
(with gradient), and the adversarial images' features and logits. On demand,
each at most once per step:

- ``clean_features()`` / ``clean_logits()``: the clean images through the
  prompted model, with gradient (TRADES, FAP, MART, ...);
- ``attack_clean_logits()``: the clean images' logits as the training
  attack sees them (its text features, no gradient), the fixed target of
  KL-type attack losses;
- ``frozen_image_features(which)``, ``frozen_logits(which)`` (``which``:
  ``adversarial`` or ``clean``): the frozen CLIP without prompts (zero-shot),
  no gradient; its text features come from :class:`FrozenZeroShot`, computed
  once per run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..models.templates import check_template, get_template


class FrozenZeroShot:
    """The frozen backbone's zero-shot classifier for the run's classes, built once and kept.

    Text features come from the model's ``template_features`` (the frozen
    text tower, no learned prompt); images go through ``frozen_image_features``.
    """

    def __init__(self, model: nn.Module, classnames: Sequence[str], template: str) -> None:
        self.model = model
        self.classnames = list(classnames)
        self.template = template
        self._text: Optional[Tensor] = None

    @classmethod
    def from_cfg(cls, model: nn.Module, classnames: Sequence[str], cfg: Any) -> "FrozenZeroShot":
        """The template of ``ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE``, or the dataset's hand-written one."""
        template = cfg.ADV.OBJECTIVE.ZERO_SHOT_TEMPLATE or get_template(cfg.DATASET.NAME)
        return cls(model, classnames, check_template(template))

    def text_features(self) -> Tensor:
        """``[C, D]`` normalized features of ``template`` for every class (no gradient; cached)."""
        if self._text is None:
            with torch.no_grad():
                self._text = self.model.template_features(self.classnames, self.template)[0].detach()
        return self._text

    def logits(self, image_features: Tensor) -> Tensor:
        """CLIP's scaled cosine of frozen image features ``[B, D]`` with the template's text features."""
        text = self.text_features().to(image_features.dtype)
        return self.model.logit_scale.exp().detach() * image_features @ text.t()


@dataclass
class TrainingStep:
    """One training step's tensors; see the module docstring."""

    model: nn.Module
    images: Tensor
    labels: Tensor
    text_features: Optional[Tensor] = None
    adv_images: Optional[Tensor] = None
    adv_features: Optional[Tensor] = None
    adv_logits: Optional[Tensor] = None
    adv_router_weights: Optional[Tensor] = None
    adv_outputs: Dict[str, Any] = field(default_factory=dict)
    attack_forward: Optional[Callable[[Tensor], Tensor]] = None
    zero_shot: Optional[FrozenZeroShot] = None
    notes: Dict[str, float] = field(default_factory=dict)
    _cache: Dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def on_clean_images(cls, model: nn.Module, images: Tensor, labels: Tensor, text_features: Tensor,
                        zero_shot: Optional[FrozenZeroShot] = None) -> "TrainingStep":
        """A step of clean training (CoOp): the "adversarial" images are the clean ones, computed once."""
        step = cls(model, images, labels, text_features=text_features, adv_images=images, zero_shot=zero_shot)
        step.adv_features = step._cache["clean_features"] = model.encode_image(images)
        step.adv_logits = step._cache["clean_logits"] = model.combine(step.adv_features, text_features)
        step.adv_router_weights = model.router_weights()
        step.adv_outputs = model.latest_outputs()
        return step

    def note(self, name: str, value: Tensor) -> None:
        """Log a term's component (a scalar) in the training log's line of this step."""
        self.notes[name] = float(value.detach())

    def _once(self, key: str, compute: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def clean_features(self) -> Tensor:
        """Normalized features of the clean images through the prompted model, with gradient."""
        return self._once("clean_features", lambda: self.model.encode_image(self.images))

    def clean_logits(self) -> Tensor:
        """Logits of the clean images with the step's text features, with gradient."""
        return self._once("clean_logits", lambda: self.model.combine(self.clean_features(), self.text_features))

    def attack_clean_logits(self) -> Tensor:
        """The clean images' logits through the training attack's forward, detached."""
        if self.attack_forward is None:
            raise RuntimeError("attack_clean_logits is only defined while the training attack runs")

        def compute() -> Tensor:
            with torch.no_grad():
                return self.attack_forward(self.images).detach()
        return self._once("attack_clean_logits", compute)

    def _frozen(self) -> FrozenZeroShot:
        if self.zero_shot is None:
            raise RuntimeError("this step has no frozen zero-shot model (TrainingStep.zero_shot)")
        return self.zero_shot

    def frozen_image_features(self, which: str) -> Tensor:
        """The frozen image tower's normalized features of the ``adversarial`` or ``clean`` images, no gradient.

        A model whose image features are not learned (text prompts) already
        computed them for the adversarial images: they are reused.
        """
        if which not in ("adversarial", "clean"):
            raise ValueError(f'which must be "adversarial" or "clean", got {which!r}')

        def compute() -> Tensor:
            if which == "adversarial" and "learned_image_features" not in model_features(self.model):
                return self.adv_features.detach()
            with torch.no_grad():
                return self.model.frozen_image_features(self.adv_images if which == "adversarial" else self.images)
        return self._once(f"frozen_{which}_features", compute)

    def frozen_logits(self, which: str) -> Tensor:
        """The frozen zero-shot model's logits of the ``adversarial`` or ``clean`` images, no gradient."""
        return self._once(f"frozen_{which}_logits", lambda: self._frozen().logits(self.frozen_image_features(which)))


def model_features(model: nn.Module) -> frozenset:
    """What ``model`` declares it offers the objectives (``PromptModel.model_features()``)."""
    return frozenset(model.model_features())
