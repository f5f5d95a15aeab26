"""CLIP with learned or hand-written prompts, as one ``nn.Module`` that maps pixels to logits.

``forward(x)`` takes pixels in [0, 1] (CLIP's normalization is inside) and
always returns logits, which is what attacks need. Text features that do not
depend on the image can be computed once and passed in
(``forward(x, text_features=...)``, or :class:`FixedTextFeatures`), so an
attack does not re-run the text encoder at every step.
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .exported import ExportState, check_rebuildable, learned_tensors, load_learned_tensors
from .interface import PromptModel
from .normalizer import ImageNormalizer
from .prompt_learner import PromptLearner
from .text_encoder import TextEncoder


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` along the last axis (CLIP's own formula, no epsilon)."""
    return x / x.norm(dim=-1, keepdim=True)


class PromptedCLIP(PromptModel, nn.Module):
    """CLIP's image encoder, text encoder and logit scale around a :class:`PromptLearner`.

    ``dtype``: what inputs of the encoders are cast to; None = the weights'
    dtype (fp16 after ``convert_weights``). Features are returned in fp32.
    Subclasses change how image and text features meet by overriding
    :meth:`combine` (AMPT's router does).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        prompt_learner: Optional[PromptLearner],
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.image_encoder = clip_model.visual
        self.normalizer = ImageNormalizer.for_backbone(clip_model)
        self.text_encoder = TextEncoder(clip_model)
        self.prompt_learner = prompt_learner
        self.logit_scale = clip_model.logit_scale
        self._dtype = dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype or self.image_encoder.conv1.weight.dtype

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized image features ``[B, D]`` of pixels ``x`` in [0, 1]."""
        features = self.image_encoder(self.normalizer(x).type(self.dtype))
        return l2_normalize(features.float())

    def text_features(self) -> torch.Tensor:
        """L2-normalized ``[K, C, D]`` features of all K x C prompts, from one batched text pass."""
        if self.prompt_learner is None:
            raise RuntimeError(f"{type(self).__name__} has no prompt learner")
        features = self.encode_prompts().float()
        k, c = self.prompt_learner.n_prompts, self.prompt_learner.n_cls
        return l2_normalize(features).view(k, c, -1)

    def encode_prompts(self) -> torch.Tensor:
        """Unnormalized ``[K*C, D]`` features of the learner's prompts (prompt-major rows).

        When the prompts of each k share their first tokens (unified context,
        class token at the end) and the text encoder's options allow it, the
        shared prefixes are encoded once (exact); otherwise every prompt whole.
        """
        learner = self.prompt_learner
        split = learner.shared_prefix() if self.text_encoder.can_share_prefix else None
        if split is not None:
            prefixes, suffixes, suffix_ids = split
            return self.text_encoder(suffixes, suffix_ids, prefix=prefixes)
        return self.text_encoder(*learner())

    # ------------------------------------------------------------ the PromptModel interface
    def image_blocks(self) -> Tuple[List[nn.Module], int]:
        """The ViT tower's blocks: the ``clip`` package's take ``[L, N, D]``, open_clip's ``[N, L, D]``."""
        transformer = getattr(self.image_encoder, "transformer", None)
        if transformer is None or not hasattr(transformer, "resblocks"):
            return [], 0
        batch_first = bool(getattr(transformer, "batch_first", False))
        return list(transformer.resblocks), 0 if batch_first else 1

    @property
    def n_prompts(self) -> int:
        return self.prompt_learner.n_prompts if self.prompt_learner is not None else 1

    def prompt_parameters(self) -> List[nn.Parameter]:
        return list(self.prompt_learner.parameters()) if self.prompt_learner is not None else []

    def word_prompts(self) -> Dict[str, torch.Tensor]:
        return {"ctx": self.prompt_learner.ctx} if self.prompt_learner is not None else {}

    def template_features(self, classnames: Sequence[str], template: str) -> torch.Tensor:
        return template_text_features(self.text_encoder, classnames, template).expand(self.n_prompts, -1, -1)

    def model_features(self) -> FrozenSet[str]:
        return frozenset({"frozen_zero_shot"})

    def frozen_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The image tower without prompts: :meth:`encode_image` of this class, whatever a subclass adds."""
        return PromptedCLIP.encode_image(self, x)

    def combine(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``: CLIP's scaled cosine with the single prompt's features ``[1, C, D]``."""
        if text_features.dim() != 3 or text_features.shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__}.combine expects text features [1, C, D] (one prompt), "
                f"got {list(text_features.shape)}; a model for K > 1 prompts must override combine"
            )
        text = text_features[0].to(image_features.dtype)
        return self.logit_scale.exp() * image_features @ text.t()

    def forward(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, C]``; ``text_features`` (from :meth:`text_features`) skips the text pass."""
        image_features = self.encode_image(x)
        if text_features is None:
            text_features = self.text_features()
        return self.combine(image_features, text_features)

    # ------------------------------------------------------------ export (ampt.export, ampt.load_classifier)
    export_modules = ("prompt_learner",)  # the learned modules, in the order the trainer registers them
    # Why the test-time graph is not exported to ONNX ("": it is the image tower and a head on fixed text features)
    export_graph_note = ""

    def export_settings(self) -> Dict[str, Any]:
        """What :meth:`from_exported` needs besides the backbone, the class names and the learned tensors."""
        return {"prompt": self.prompt_learner.settings()}

    def exportable_state(self) -> ExportState:
        check_rebuildable(self)
        csc = bool(getattr(self.prompt_learner, "csc", False))
        return ExportState(type(self).__name__, self.export_settings(), list(self.export_modules),
                           learned_tensors(self, self.export_modules), class_specific=csc,
                           graph_note=self.export_graph_note)

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "PromptedCLIP":
        model = cls(clip_model, PromptLearner(clip_model, classnames, **settings["prompt"]))
        load_learned_tensors(model, cls.export_modules, tensors)
        return model


class FixedTextFeatures(nn.Module):
    """``forward(x) = model(x, text_features=text_features)``: a model for attacks.

    The text features are held as a detached, non-persistent buffer; the
    wrapped model's train/eval mode follows this module's.
    """

    def __init__(self, model: PromptedCLIP, text_features: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, text_features=self.text_features)

    def exportable_state(self) -> ExportState:
        """The model's exportable state with the text features this module evaluates with."""
        state = self.model.exportable_state()
        state.text_features = self.text_features.detach().cpu()
        return state


@torch.no_grad()
def template_text_features(
    text_encoder: TextEncoder, classnames: Sequence[str], templates: Union[str, Sequence[str]]
) -> torch.Tensor:
    """Normalized ``[1, C, D]`` features of hand-written prompts ``template.format(class)``.

    Several templates are ensembled as in CLIP: the mean of the normalized
    per-template features, normalized again. Underscores in class names read
    as spaces (CoOp).
    """
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("At least one template is needed")
    names = [name.replace("_", " ") for name in classnames]
    texts = [template.format(name) for template in templates for name in names]
    features = l2_normalize(text_encoder.encode_texts(texts).float())
    features = features.view(len(templates), len(names), -1).mean(dim=0)
    return l2_normalize(features).unsqueeze(0)


class FixedPromptCLIP(PromptedCLIP):
    """Zero-shot CLIP as a :class:`PromptedCLIP`: hand-written prompts, features computed once.

    The ``[1, C, D]`` text features are a non-persistent buffer (they move
    with ``.to(device)``); attacks and ``forward`` reuse them.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        templates: Union[str, Sequence[str]] = "a photo of a {}.",
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(clip_model, prompt_learner=None, dtype=dtype)
        self.templates = [templates] if isinstance(templates, str) else list(templates)
        features = template_text_features(self.text_encoder, classnames, self.templates)
        self.register_buffer("fixed_text_features", features, persistent=False)

    def text_features(self) -> torch.Tensor:
        return self.fixed_text_features

    def prompt_label(self) -> str:
        """The template (templates joined by " | " when ensembled): nothing here is learned."""
        return " | ".join(self.templates)

    export_modules = ()

    def export_settings(self) -> Dict[str, Any]:
        return {"templates": list(self.templates)}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "FixedPromptCLIP":
        return cls(clip_model, classnames, settings["templates"])
