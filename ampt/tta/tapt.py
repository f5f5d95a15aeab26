"""TAPT: test-time adversarial prompt tuning (Wang et al., CVPR 2025; code xinwong/TAPT, MIT).

Per test image, from the run's prompts: 64 views (the image and 63 random
resized crops with flips), the 10% of lowest entropy kept (6), one AdamW
step (lr 5e-4, PyTorch's weight decay 0.01) on every prompt parameter of
the model against

    H(mean of the kept views' probabilities)
      + align_weight / align_to * sum_{layers} [0.5 L1(mean, ref mean) + 0.5 L1(var, ref var)]

where mean and var are, per token and channel, over the kept views of the
input of each image block in ``range(align_from, align_to - 1)`` (TAPT's
loop bound), and the references are the same statistics over the run's
training images (mean and sample variance), computed once and cached in
``RUN_DIR/test_time/``. Then the prediction on the image alone, with the
adapted prompts; the next image starts again from the run's prompts.

Differences from TAPT's code (docs/test_time.md): its reference statistics
are ImageNet's, from the adversarially trained checkpoint ("adv") and a
cleanly trained one ("clean", weight 1 - gamma); here both are the run's own
training images through the run's model, so the two terms are one. For
models whose image tower learns nothing (CoOp, APT, AMPT: text prompts
only) the alignment has no gradient to the prompts and is not computed.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch
from torch import Tensor

from .base import TestTimeContext, TestTimeMethod, register_test_time
from .entropy import confident_views, marginal_entropy
from .token_stats import alignment_distance, batch_statistics, load_statistics, reference_statistics, save_statistics

logger = logging.getLogger(__name__)


@register_test_time
class TAPT(TestTimeMethod):
    name = "tapt"
    paper = "Wang et al., CVPR 2025 (TAPT), xinwong/TAPT"
    defaults = {"views": 64, "steps": 1, "lr": 5e-4, "weight_decay": 0.01, "crop_scale_min": 0.08,
                "quantize": False, "select": 0.1, "align_weight": 100.0, "align_from": 0, "align_to": 9}

    reference = None  # the reference statistics, set by prepare() when the alignment is active
    scale = 0.0

    def prepare(self, model: torch.nn.Module, context: TestTimeContext) -> Dict[str, Any]:
        s = self.settings
        blocks, _ = model.image_blocks()
        self.reference = None
        self.token_layers = None
        if float(s["align_weight"]) <= 0:
            return {"alignment": "off (align_weight 0)"}
        if "learned_image_features" not in model.model_features() or not blocks:
            return {"alignment": "inactive: the image tower has no learned prompts, so the alignment term has "
                                 "no gradient to the prompts"}
        top = min(int(s["align_to"]), len(blocks))
        self.token_layers = range(int(s["align_from"]), max(top - 1, int(s["align_from"])))
        self.scale = float(s["align_weight"]) / max(top - int(s["align_from"]), 1)
        path = context.run_dir / "test_time" / (f"tapt-stats-{context.weights[:16]}-layers"
                                                f"{self.token_layers.start}-{self.token_layers.stop}.pt")
        if path.is_file():
            self.reference = load_statistics(path, context.device)
        else:
            logger.info("TAPT: token statistics of the run's training images (once; cached in %s)", path)
            self.reference = reference_statistics(model, context.train_batches, self.token_layers)
            save_statistics(self.reference, path)
        return {"alignment": f"image blocks {self.token_layers.start}..{self.token_layers.stop - 1}, "
                             "reference: the run's training images", "reference_statistics": str(path)}

    def loss(self, view_logits: Tensor, view_tokens: List[Tensor]) -> Tensor:
        kept = confident_views(view_logits, float(self.settings["select"]))
        loss = marginal_entropy(view_logits[kept])
        if self.reference is not None:
            stats = batch_statistics([t[kept] for t in view_tokens])
            loss = loss + self.scale * alignment_distance(stats, self.reference)
        return loss
