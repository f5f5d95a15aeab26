"""R-TPT: reliable test-time prompt tuning (Sheng et al., CVPR 2025), re-implemented from its description.

Per test image, from the run's prompts: 64 views (the image and 63 random
resized crops with flips), the 10% of lowest entropy kept, one AdamW step
(lr 5e-3, weight decay 0.01) minimising the mean of the kept views' own
entropies (point-wise, not the entropy of their mean). The prediction
ensembles all views' logits under the adapted prompts, each weighted by its
reliability: ``w = softmax(r / tau)``, ``r_i`` the mean of view i's ``topk``
largest cosine similarities to the other views' image features (tau 0.01,
topk 20). R-TPT's protocol rounds the adversarial images to 8 bits before
adapting (``quantize``, on by default).

Not from the paper: its AugMix operations on non-ImageNet sets are left out
(crops and flips only, differentiable for the adaptive attack); for a model
whose image features depend on learned prompts the reliabilities use the
run's (un-adapted) image features.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import Tensor

from .base import TestTimeMethod, register_test_time
from .entropy import confident_views, pointwise_entropy


@register_test_time
class RTPT(TestTimeMethod):
    name = "rtpt"
    paper = "Sheng et al., CVPR 2025 (R-TPT)"
    defaults = {"views": 64, "steps": 1, "lr": 5e-3, "weight_decay": 0.01, "crop_scale_min": 0.08,
                "quantize": True, "select": 0.1, "topk": 20, "temperature": 0.01}

    def loss(self, view_logits: Tensor, view_tokens: List[Tensor]) -> Tensor:
        return pointwise_entropy(view_logits[confident_views(view_logits, float(self.settings["select"]))])

    def reliability_weights(self, features: Tensor) -> Tensor:
        """``[V]``: softmax over views of their mean top-k cosine similarity to the other views."""
        n = features.shape[0]
        if n == 1:
            return features.new_ones(1)
        similarity = features @ features.T
        similarity = similarity.masked_fill(torch.eye(n, dtype=torch.bool, device=features.device), float("-inf"))
        k = min(int(self.settings["topk"]), n - 1)
        reliability = similarity.topk(k, dim=1).values.mean(dim=1)
        return torch.softmax(reliability / float(self.settings["temperature"]), dim=0)

    def predict(self, params: Dict[str, Tensor], batch: Any) -> Tensor:
        weights = self.reliability_weights(batch.view_features())
        return (weights.unsqueeze(1) * batch.logits(params, "views")).sum(dim=0, keepdim=True)
