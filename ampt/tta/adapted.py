"""The test-time loop around a run's model: per image, adapt a fresh copy of the prompts, predict, discard.

``TestTimeAdapted(model, method)`` maps pixels in [0, 1] to logits like the
model does. For each image it draws the method's views (view 0 is the image
itself), takes ``steps`` AdamW steps from a fresh optimizer state on a copy
of the model's prompt parameters (the method's loss on the views' logits),
predicts with the adapted copy and drops it: the next image starts again
from the run's prompts. The model's own parameters are never changed.

When the input requires grad (an attack through the whole procedure), the
adaptation is unrolled: the steps are taken with ``create_graph``, so the
gradient w.r.t. the pixels goes through the views, the adaptation step and
the prediction. The module declares itself a test-time part, its views a
random part (attack with EOT) and, with ``quantize``, the 8-bit rounding
of the input a non-differentiable part with an identity backward (BPDA).
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import UserError
from ..models.parts import NonDifferentiable, RandomPart, TestTimePart
from .adamw import AdamW
from .base import TestTimeMethod
from .token_stats import block_inputs
from .views import augmented_views


def quantize_8bit(x: Tensor) -> Tensor:
    """``floor(255 x) / 255``: what saving to an 8-bit image keeps (``ToPILImage``'s ``mul(255).byte()``)."""
    return torch.floor(x.clamp(0, 1) * 255) / 255


def prompt_items(model: nn.Module) -> Dict[str, nn.Parameter]:
    """The model's declared prompt parameters by their names in ``model`` (what a test-time method tunes)."""
    wanted = {id(p) for p in model.prompt_parameters()}
    items = {name: p for name, p in model.named_parameters() if id(p) in wanted}
    if not items:
        raise UserError(f"Test-time prompt tuning needs learned prompts; {type(model).__name__} declares none "
                        "(a zero-shot or hand-written-prompt run): evaluate a run that learned prompts")
    return items


class _TextFeatures(nn.Module):
    """``forward() = model.text_features()``: lets ``functional_call`` substitute the prompts for the text side only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self) -> Tensor:
        return self.model.text_features()


class ViewBatch:
    """One image and its views through the model with given prompts; image features computed once when the
    image tower learns nothing (text-prompt models: CoOp, APT, AMPT), else a full forward per call."""

    def __init__(self, adapted: "TestTimeAdapted", image: Tensor, views: Tensor) -> None:
        self.adapted, self.image, self.views = adapted, image, views
        self._features: Optional[Tensor] = None

    def view_features(self) -> Tensor:
        if self._features is None:
            self._features = self.adapted.model.encode_image(self.views)
        return self._features

    def logits(self, params: Dict[str, Tensor], which: str = "views") -> Tensor:
        """``[V, C]`` logits of the views (``which="views"``) or ``[1, C]`` of the image alone, with ``params``."""
        adapted = self.adapted
        if adapted.image_tower_fixed:
            features = self.view_features() if which == "views" else self.view_features()[:1]
            return adapted.model.combine(features, adapted.text_features_with(params))
        batch = self.views if which == "views" else self.image.unsqueeze(0)
        return functional_call(adapted.model, params, (batch,))


class TestTimeAdapted(TestTimePart):
    """``forward(x) -> logits`` through the per-image test-time loop (see the module docstring)."""

    __test__ = False  # not a pytest class

    def __init__(self, model: nn.Module, method: TestTimeMethod, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self.prompts = prompt_items(model)  # name -> the run's parameter (never modified)
        self.image_tower_fixed = "learned_image_features" not in model.model_features()
        self._text = _TextFeatures(model)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.views = RandomPart(self._draw_views, name=f"{method.name} views")
        self.quantizer = (NonDifferentiable(quantize_8bit, backward="identity", name="8-bit rounding")
                          if method.settings.get("quantize") else None)
        self.last_prompts: Dict[str, Tensor] = {}
        self.seconds, self.images = 0.0, 0

    def _draw_views(self, image: Tensor) -> Tensor:
        s = self.method.settings
        return augmented_views(image, int(s["views"]), self.generator, (float(s["crop_scale_min"]), 1.0))

    def describe(self) -> Dict[str, str]:
        return {**super().describe(), "method": self.method.name}

    def text_features_with(self, params: Dict[str, Tensor]) -> Tensor:
        return functional_call(self._text, {f"model.{n}": p for n, p in params.items()}, ())

    def adapted_prompts(self, batch: ViewBatch) -> Dict[str, Tensor]:
        """The prompt parameters after the method's steps on the views (with a graph to the image if it needs one)."""
        s, method = self.method.settings, self.method
        unroll = batch.image.requires_grad
        params = {n: p.detach().clone().requires_grad_(True) for n, p in self.prompts.items()}
        optimizer = AdamW(lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))
        for _ in range(int(s["steps"])):
            capture = block_inputs(self.model, method.token_layers) if method.token_layers else contextlib.nullcontext([])
            with capture as tokens:
                view_logits = batch.logits(params)
            loss = method.loss(view_logits, tokens)
            leaves = list(params.values())
            grads = torch.autograd.grad(loss, leaves, create_graph=unroll, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]
            params = optimizer.step(params, grads)
            if not unroll:
                params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        return params

    def adapt_and_predict(self, image: Tensor) -> Tensor:
        batch = ViewBatch(self, image, self.views(image))
        params = self.adapted_prompts(batch)
        self.last_prompts = {n: p.detach() for n, p in params.items()}
        context = contextlib.nullcontext() if image.requires_grad else torch.no_grad()
        with context:
            return self.method.predict(params, batch)

    def forward(self, x: Tensor) -> Tensor:
        start = time.perf_counter()
        if self.quantizer is not None:
            x = self.quantizer(x)
        # unrolled steps differentiate twice through attention: only the math kernel has that derivative
        kernels = sdpa_kernel([SDPBackend.MATH]) if x.requires_grad else contextlib.nullcontext()
        with torch.enable_grad(), kernels:
            out = torch.cat([self.adapt_and_predict(image) for image in x])
        self.seconds += time.perf_counter() - start
        self.images += x.shape[0]
        return out if x.requires_grad else out.detach()
