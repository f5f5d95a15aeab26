"""A tiny CLIP image classifier trained for a second on synthetic data (attack and audit tests).

The classifier normalizes [0, 1] pixels with CLIP's mean/std inside its
forward, encodes them with a tiny ``clip`` ViT, and scores them against fixed
text features of four class prompts (logit scale 100), as the project's
wrappers do. Its image encoder is trained briefly so that clean accuracy is
high and the attacks have something to break.
"""
from __future__ import annotations

import clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ampt.models.tiny import build_tiny_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLASSNAMES = ["cat", "dog", "car", "ship"]


class TinyClipClassifier(nn.Module):
    """Pixels in [0, 1] -> logits against fixed, normalized class text features."""

    def __init__(self, clip_model: nn.Module, classnames: list) -> None:
        super().__init__()
        self.clip = clip_model
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        with torch.no_grad():
            text = clip_model.encode_text(clip.tokenize([f"a photo of a {c}." for c in classnames]))
        self.register_buffer("text_features", F.normalize(text, dim=-1))

    def forward(self, x: Tensor) -> Tensor:
        features = F.normalize(self.clip.encode_image((x - self.mean) / self.std), dim=-1)
        return 100.0 * features @ self.text_features.t()


def synthetic(n: int, seed: int, num_classes: int = 4) -> tuple:
    """Smooth per-class colour patterns (fixed) plus per-image noise (seeded)."""
    patterns = torch.rand(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(123))
    patterns = F.interpolate(patterns, size=32, mode="bilinear", align_corners=False)
    labels = torch.arange(n) % num_classes
    noise = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return (0.5 + 0.3 * (patterns[labels] - 0.5) + 0.1 * noise).clamp(0, 1), labels


def trained_classifier(steps: int = 40, seed: int = 0) -> TinyClipClassifier:
    """The classifier after ``steps`` Adam steps on 64 synthetic images (eval mode)."""
    model = TinyClipClassifier(build_tiny_clip(seed=seed), CLASSNAMES)
    x_train, y_train = synthetic(64, seed=0)
    optimizer = torch.optim.Adam(model.clip.visual.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()
