"""AdvCLIPAdapter: CLIP-Adapter's image-side residual adapter (Gao et al., IJCV 2024, arXiv 2110.04544),
trained on adversarial images.

The text side is the dataset's hand-written template, frozen (its features
computed once). The image side adds a learned bottleneck MLP to CLIP's frozen
image features ``f`` and blends it in with a fixed residual ratio ``a``:

    f' = normalize(a * relu(W2 relu(W1 f)) + (1 - a) * f)

(``W1``: D -> D / REDUCTION, ``W2``: back to D, no biases; CLIP-Adapter's
image adapter, ``a`` = 0.2). Only the adapter learns; its loss is the run's
objective (``ADV.TRAIN.LOSS``, default ``ce``) and the attack maximises that
objective's attack loss. Nothing in the adapter depends on the classes, so a
trained adapter transfers to another dataset (``evaluate.py --dataset``).

A worked example of a plug-in method: one ``PromptModel`` (what the core and
the attacks call) and one trainer whose ``build_model`` installs it.
"""
from __future__ import annotations

from typing import FrozenSet, List, Sequence, Tuple

import torch
from torch import nn
from yacs.config import CfgNode as CN

from ampt.trainer_base.adversarial import AdversarialClipTrainer
from ampt.api import TRAINER_REGISTRY
from ampt.errors import UserError
from ampt.models.interface import LEARNED
from ampt.models.prompted_clip import FixedPromptCLIP, PromptedCLIP, l2_normalize
from ampt.models.templates import check_template, get_template
from ampt.precision import add_precision_key


class ImageAdapter(nn.Module):
    """CLIP-Adapter's bottleneck: Linear(D, D/r) - ReLU - Linear(D/r, D) - ReLU, no biases."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class AdapterCLIP(FixedPromptCLIP):
    """Frozen template text features; image features through the residual :class:`ImageAdapter`."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], template: str, reduction: int,
                 ratio: float) -> None:
        super().__init__(clip_model, classnames, template)
        self.adapter = ImageAdapter(self.fixed_text_features.shape[-1], reduction)
        self.ratio = ratio

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        features = PromptedCLIP.encode_image(self, x)  # frozen CLIP, normalized, fp32
        return l2_normalize(self.ratio * self.adapter(features) + (1 - self.ratio) * features)

    def prompt_parameters(self) -> List[nn.Parameter]:
        return list(self.adapter.parameters())

    def model_features(self) -> FrozenSet[str]:
        return super().model_features() | {"learned_image_features"}

    def prompt_label(self) -> str:
        return LEARNED  # the template is not what was trained

    def attack_prompt_modes(self) -> Tuple[str, ...]:
        return ("onfly", "perturbed")  # "constant" would only swap one frozen template for another


@TRAINER_REGISTRY.register()
class AdvCLIPAdapter(AdversarialClipTrainer):
    """Adversarial CLIP-Adapter: a residual MLP on the frozen image features, frozen text template."""

    cfg_node = "ADVCLIPADAPTER"

    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.ADVCLIPADAPTER = CN()
        cfg.TRAINER.ADVCLIPADAPTER.REDUCTION = 4  # bottleneck width = feature width / REDUCTION (>= 1)
        cfg.TRAINER.ADVCLIPADAPTER.RATIO = 0.2  # residual ratio a in [0, 1]: share of the adapted features
        cfg.TRAINER.ADVCLIPADAPTER.TEMPLATE = ""  # text prompt with one "{}"; "" = the dataset's CoOp template
        add_precision_key(cfg.TRAINER.ADVCLIPADAPTER)

    def build_model(self) -> None:
        node = self.cfg.TRAINER.ADVCLIPADAPTER
        if node.REDUCTION < 1 or not 0.0 <= node.RATIO <= 1.0:
            raise UserError(f"TRAINER.ADVCLIPADAPTER: REDUCTION must be >= 1 and RATIO in [0, 1] "
                            f"(got {node.REDUCTION}, {node.RATIO})")
        template = check_template(node.TEMPLATE or get_template(self.cfg.DATASET.NAME))
        model = AdapterCLIP(self.load_clip_model(), self.classnames, template, node.REDUCTION, node.RATIO)
        self.install_model(model, trainable=["adapter"], learned="adapter")
