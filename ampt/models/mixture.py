"""AMPT's model: a bank of K prompts mixed per image by a router.

Text features ``t[k, c]`` (K prompts x C classes, L2-normalized) come from one
batched text pass. Per image ``x`` with normalized feature ``f``, the router
gives weights ``w(x)`` and the class text feature is
``t_c(x) = normalize(sum_k w_k(x) t[k, c])``; the logits are
``exp(logit_scale) * <f, t_c(x)>``.

The mixture is computed without building the ``[B, C, D]`` tensor of mixed
features: ``<f, sum_k w_k t_kc> = sum_k w_k <f, t_kc>`` and
``|sum_k w_k t_kc|^2 = w^T G_c w`` with the per-class Gram matrix
``G_c[k, l] = <t_kc, t_lc>``, so the image-dependent part costs
``O(B K C (D + K))``. With cached text features only the router and this sum
depend on the image, and attacks differentiate through both.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, FrozenSet, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from ..registry import unknown_name_message
from .prompt_learner import PromptLearner
from .exported import load_learned_tensors
from .prompted_clip import FixedTextFeatures, PromptedCLIP
from .router import Router

MIX_MODES = ("features", "logits")
ROUTE_MODES = ("learned", "uniform", "detached")


class MixturePromptedCLIP(PromptedCLIP):
    """:class:`PromptedCLIP` whose ``combine`` mixes K prompts with router weights.

    ``mix="features"`` mixes normalized text features (the default);
    ``mix="logits"`` mixes the K per-prompt logits instead. ``route`` selects
    where the weights come from: ``learned`` (the router, differentiable),
    ``uniform`` (``1/K``), or ``detached`` (the router's weights as constants:
    no gradient flows through the router to the image). ``routed_weights`` are
    the weights of the latest ``combine`` call, in the autograd graph when
    gradients were on (for loss terms on the router, such as AMPT's balance
    term; the reference is replaced at the next call); ``last_weights`` is
    the same tensor detached, for logging.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        prompt_learner: PromptLearner,
        router: Router,
        mix: str = "features",
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(clip_model, prompt_learner, dtype=dtype)
        if mix not in MIX_MODES:
            raise ValueError(unknown_name_message("mixture mode", mix, list(MIX_MODES)))
        n_prompts = prompt_learner.n_prompts
        if router.n_prompts != n_prompts:
            raise ValueError(f"The router predicts {router.n_prompts} weights for {n_prompts} prompts")
        self.router = router
        self.mix = mix
        self.route = "learned"
        self.routed_weights: Optional[torch.Tensor] = None
        self._router_input: Optional[torch.Tensor] = None

    def model_features(self) -> FrozenSet[str]:
        return super().model_features() | {"router_weights"}

    def router_weights(self) -> Optional[torch.Tensor]:
        """Weights ``[B, K]`` of the latest ``combine`` call, with gradient (None before the first)."""
        return self.routed_weights

    @property
    def last_weights(self) -> Optional[torch.Tensor]:
        """Weights ``[B, K]`` of the latest ``combine`` call, detached (None before the first)."""
        return None if self.routed_weights is None else self.routed_weights.detach()

    @contextmanager
    def routing(self, mode: str) -> Iterator["MixturePromptedCLIP"]:
        """Temporarily take the weights from ``mode`` (one of :data:`ROUTE_MODES`)."""
        if mode not in ROUTE_MODES:
            raise ValueError(unknown_name_message("route mode", mode, list(ROUTE_MODES)))
        previous, self.route = self.route, mode
        try:
            yield self
        finally:
            self.route = previous

    @contextmanager
    def router_reads(self, image_features: torch.Tensor) -> Iterator["MixturePromptedCLIP"]:
        """Temporarily route on ``image_features [B, D]`` (e.g. the clean images') instead of the input's.

        Every forward inside must have batch size ``B``; the router's weights
        then do not depend on the input pixels (no gradient reaches them).
        """
        previous, self._router_input = self._router_input, image_features.detach()
        try:
            yield self
        finally:
            self._router_input = previous

    def mixture_weights(self, image_features: torch.Tensor) -> torch.Tensor:
        """Weights ``[B, K]`` for normalized image features, under the current route mode."""
        if self._router_input is not None:
            if self._router_input.shape[0] != image_features.shape[0]:
                raise ValueError(f"router_reads got {self._router_input.shape[0]} features for a batch of "
                                 f"{image_features.shape[0]} images")
            image_features = self._router_input
        if self.route == "uniform":
            n = self.router.n_prompts
            return image_features.new_full((image_features.shape[0], n), 1.0 / n)
        if self.route == "detached":
            with torch.no_grad():
                return self.router(image_features.detach())
        return self.router(image_features)

    def combine(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` from image features ``[B, D]`` and text features ``[K, C, D]``."""
        weights = self.mixture_weights(image_features)
        self.routed_weights = weights
        return self.logit_scale.exp() * mix_similarities(image_features, text_features, weights, self.mix)

    export_modules = ("prompt_learner", "router")

    def export_settings(self) -> Dict[str, Any]:
        return {"prompt": self.prompt_learner.settings(), "router": self.router.settings(), "mix": self.mix}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "MixturePromptedCLIP":
        learner = PromptLearner(clip_model, classnames, **settings["prompt"])
        model = cls(clip_model, learner, Router(**settings["router"]), mix=settings["mix"])
        load_learned_tensors(model, cls.export_modules, tensors)
        return model


class FixedRouting(FixedTextFeatures):
    """:class:`FixedTextFeatures` whose forward takes the weights from ``route`` (e.g. "uniform").

    What ``evaluate.py --prompt uniform`` attacks: the learned prompts with
    weights ``1/K`` for every image.
    """

    def __init__(self, model: MixturePromptedCLIP, text_features: torch.Tensor, route: str) -> None:
        if route not in ROUTE_MODES:
            raise ValueError(unknown_name_message("route mode", route, list(ROUTE_MODES)))
        super().__init__(model, text_features)
        self.route = route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.model.routing(self.route):
            return super().forward(x)

    def extra_repr(self) -> str:
        return f"route={self.route}"


def mix_similarities(
    image_features: torch.Tensor, text_features: torch.Tensor, weights: torch.Tensor, mix: str = "features"
) -> torch.Tensor:
    """Cosine similarities ``[B, C]`` of ``f [B, D]`` with the router mixture of ``t [K, C, D]``.

    ``mix="features"``: ``<f, normalize(sum_k w_k t_kc)>``; ``mix="logits"``:
    ``sum_k w_k <f, t_kc>``. ``weights`` is ``[B, K]``.
    """
    text_features = text_features.to(image_features.dtype)
    weights = weights.to(image_features.dtype)
    per_prompt = torch.einsum("bd,kcd->bkc", image_features, text_features)
    mixed = torch.einsum("bk,bkc->bc", weights, per_prompt)
    if mix == "logits":
        return mixed
    gram = torch.einsum("kcd,lcd->ckl", text_features, text_features)
    sq_norm = torch.einsum("bk,ckl,bl->bc", weights, gram, weights)
    return mixed / sq_norm.clamp_min(1e-24).sqrt()  # F.normalize's eps, squared
