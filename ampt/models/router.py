"""The AMPT router: image feature -> mixture weights over a bank of K prompts.

Input: the L2-normalized (frozen) CLIP image feature of the current input,
the adversarial image during training. Output: weights ``[B, K]``, each row
non-negative and summing to 1. The router's design (linear by default, MLP
option, softmax temperature, top-k sparsity, uniform weights) is ours: the
AMPT paper (arXiv 2505.17509) states only that a conditional router reads the
adversarial image and predicts the mixture weights.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import unknown_name_message
from .parts import RouterPart

ROUTER_KINDS = ("linear", "mlp", "uniform")


class Router(RouterPart):
    """``forward(image_features [B, D]) -> weights [B, K]`` (rows on the simplex).

    - ``linear``: ``softmax(Linear(D, K)(f) / temperature)``.
    - ``mlp``: ``Linear(D, hidden) -> ReLU -> Linear(hidden, K)`` before the softmax.
    - ``uniform``: no parameters, every weight is ``1 / K`` (the "no router" ablation).

    ``input_scale`` multiplies the (unit-norm) input before the network: a
    default-initialised ``Linear`` on a unit vector gives logits of order
    ``1/sqrt(D)``, so the weights start (and, at small learning rates, stay)
    uniform; a scale like CLIP's logit scale (100) gives the router logits of
    order 1 from the start.

    ``top_k > 0`` keeps the ``top_k`` largest logits per sample and renormalizes
    over them, so exactly ``top_k`` weights are non-zero; 0 means dense.
    """

    def __init__(
        self,
        in_dim: int,
        n_prompts: int,
        kind: str = "linear",
        hidden: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in ROUTER_KINDS:
            raise ValueError(unknown_name_message("router kind", kind, list(ROUTER_KINDS)))
        if n_prompts < 1:
            raise ValueError(f"The router needs at least one prompt (got n_prompts={n_prompts})")
        if temperature <= 0:
            raise ValueError(f"The router temperature must be > 0 (got {temperature})")
        if input_scale <= 0:
            raise ValueError(f"The router input scale must be > 0 (got {input_scale})")
        if not 0 <= top_k <= n_prompts:
            raise ValueError(f"top_k must be in [0, {n_prompts}] (0 = dense), got {top_k}")
        if kind == "uniform" and top_k:
            raise ValueError("top_k selects among router logits; the uniform router has none")
        if kind != "mlp" and hidden:
            raise ValueError(f"hidden={hidden} is used only by the mlp router (kind={kind!r})")
        self.kind = kind
        self.in_dim = int(in_dim)
        self.n_prompts = int(n_prompts)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.input_scale = float(input_scale)
        self.net: Optional[nn.Module]
        if kind == "linear":
            self.net = nn.Linear(in_dim, n_prompts)
        elif kind == "mlp":
            width = hidden or in_dim
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Linear(width, n_prompts))
        else:
            self.net = None
        if self.net is not None:
            # zero output bias: the weights start near uniform and differ between images only
            # through the input (PyTorch's default bias would favour some prompts for every image)
            output = self.net if kind == "linear" else self.net[-1]
            nn.init.zeros_(output.bias)

    def settings(self) -> Dict[str, object]:
        """The constructor arguments that rebuild this router (its weights aside)."""
        hidden = self.net[0].out_features if self.kind == "mlp" else 0
        return {"in_dim": self.in_dim, "n_prompts": self.n_prompts, "kind": self.kind, "hidden": hidden,
                "temperature": self.temperature, "top_k": self.top_k, "input_scale": self.input_scale}

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Router logits ``[B, K]`` before temperature and top-k (not for the uniform router)."""
        if self.net is None:
            raise RuntimeError("The uniform router has no logits")
        if self.input_scale != 1.0:  # 1: today's logits, bit for bit
            image_features = image_features * self.input_scale
        return self.net(image_features)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        batch = image_features.shape[0]
        if self.net is None:
            return image_features.new_full((batch, self.n_prompts), 1.0 / self.n_prompts)
        logits = self.logits(image_features) / self.temperature
        if self.top_k and self.top_k < self.n_prompts:
            keep = logits.topk(self.top_k, dim=-1).indices
            mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, keep, True)
            logits = logits.masked_fill(~mask, float("-inf"))
        return F.softmax(logits, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, in_dim={self.in_dim}, n_prompts={self.n_prompts}, "
            f"temperature={self.temperature}, top_k={self.top_k}, input_scale={self.input_scale:g}"
        )


def weight_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of weight rows ``[B, K]``; 0 * log 0 counts as 0."""
    return -(weights * weights.clamp_min(1e-12).log()).sum(dim=-1)
