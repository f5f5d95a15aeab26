"""The loaded classifier: images in [0, 1] -> logits, with its class names, preprocessing and router weights.

It evaluates exactly the module ``evaluate.py`` attacks for the run's
learned prompt (the prompt model with its text features fixed), rebuilt
from the artifact by the model class's own ``from_exported``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..models.deep_prompt_models import FrameUnderAttackOnly
from ..models.exported import rebuild_model
from ..models.prompted_clip import FixedTextFeatures


def evaluated_module(model: nn.Module, text_features: torch.Tensor, wrapper: str) -> nn.Module:
    """The module evaluate.py attacks: ``model`` with ``text_features`` fixed, as the artifact's ``wrapper`` says."""
    if wrapper == "frame_under_attack_only":
        return FrameUnderAttackOnly(model, text_features)
    return FixedTextFeatures(model, text_features)


class Classifier(nn.Module):
    """``forward(images [B, 3, S, S] in [0, 1]) -> logits [B, C]`` of an exported model.

    ``classnames``, ``metadata`` (the artifact's ``ampt_model.json``),
    :meth:`preprocess` (a PIL image -> the ``[3, S, S]`` tensor the run was
    tested on), :meth:`router_weights` (AMPT's mixture weights of the latest
    forward) and :meth:`set_classes` (new class names for class-agnostic prompts).
    """

    def __init__(self, model: nn.Module, text_features: torch.Tensor, backbone: nn.Module,
                 metadata: Dict[str, Any], learned: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.metadata = metadata
        self.classnames: List[str] = list(metadata["classes"])
        self.evaluated = evaluated_module(model, text_features, metadata["method"]["wrapper"])
        # kept out of the module tree: the backbone's modules are the model's own, the tensors are loaded in it
        self.__dict__["_backbone"] = backbone
        self.__dict__["_learned"] = learned

    @property
    def model(self) -> nn.Module:
        """The prompt model (:class:`~ampt.models.interface.PromptModel`) inside."""
        return self.evaluated.model

    @property
    def text_features(self) -> torch.Tensor:
        return self.evaluated.text_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluated(images)

    def router_weights(self) -> Optional[torch.Tensor]:
        """The mixture weights ``[B, K]`` of the latest forward, detached; None for a model without a router."""
        if "router_weights" not in self.model.model_features():
            return None
        weights = self.model.router_weights()
        return None if weights is None else weights.detach()

    def set_classes(self, classnames: Sequence[str]) -> None:
        """Re-encode the learned prompts for ``classnames`` (refused for prompts learned per class)."""
        method = self.metadata["method"]
        if method["class_specific"]:
            raise UserError(f"{method['trainer']} learned class-specific prompts (one context per class of "
                            f"{self.metadata['training']['dataset']}): they have no context for other class names; "
                            "only unified prompts (CSC False) take new classes")
        names = [str(name) for name in classnames]
        if not names or any(not name.strip() for name in names):
            raise UserError(f"set_classes needs one or more non-empty class names (got {list(classnames)!r})")
        device = self.text_features.device
        backbone = self._backbone.to(device)
        model = rebuild_model(backbone, names, method["model"], method["settings"], self._learned).to(device)
        with torch.no_grad():
            text_features = model.text_features().detach()
        self.evaluated = evaluated_module(model, text_features, method["wrapper"]).to(device).train(self.training)
        self.classnames = names

    def preprocess(self, image: Any) -> torch.Tensor:
        """A PIL image -> ``[3, S, S]`` pixels in [0, 1]: the run's test transform (short side resized, centre crop)."""
        import torchvision.transforms as T

        spec = self.metadata["preprocess"]
        modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                 "nearest": T.InterpolationMode.NEAREST}
        size = int(spec["size"])
        transform = T.Compose([T.Resize(size, interpolation=modes[spec["interpolation"]]), T.CenterCrop(size),
                               T.ToTensor()])
        return transform(image.convert("RGB"))

    def extra_repr(self) -> str:
        method = self.metadata["method"]
        return f"method={method['trainer']}, classes={len(self.classnames)}"
