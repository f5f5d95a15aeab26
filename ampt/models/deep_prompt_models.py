"""The prompt models of deep prompts (:mod:`ampt.models.deep_prompt_learner`) and of a visual prompt.

- :class:`DeepPromptCLIP`: learned tokens in the first J blocks of one or
  both towers (AdvVLP, AdvMaPLe, AdvMaPLeOrig, FAP). ``text_features()`` runs the text
  tower with its deep prompts (no image needed: computed once per step or
  evaluation, reused by every attack step); ``encode_image`` builds the image
  tokens from the learner (a few small matrix products) and runs the image
  tower with them.
- :class:`VisualPromptCLIP`: a hand-written, frozen text prompt and a learned
  visual prompt (AdvVP, TeCoA's visual prompting as FAP ships it): a padding
  of learned pixels around the normalized image and learned tokens appended
  to the image tokens at the input of the first block.
- :class:`FrameUnderAttackOnly`: a :class:`VisualPromptCLIP` evaluated as
  FAP's code evaluates AdvVP (the attack sees the frame, the scored logits
  do not; ``TRAINER.ADVVP.EVAL_FRAME False``).
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Union

import torch
from torch import nn

from .exported import ExportState, load_learned_tensors
from .interface import LEARNED
from .deep_prompt_learner import DeepPromptLearner, DeepTextLayout, encode_image_with_prompts
from .prompted_clip import FixedPromptCLIP, PromptedCLIP, l2_normalize
from ..errors import UserError


class DeepPromptCLIP(PromptedCLIP):
    """A :class:`PromptedCLIP` whose ``prompt_learner`` is a :class:`DeepPromptLearner` (one prompt, K = 1)."""

    def __init__(self, clip_model: nn.Module, learner: DeepPromptLearner, layout: DeepTextLayout,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(clip_model, prompt_learner=None, dtype=dtype)
        self.prompt_learner = learner
        self.text_layout = layout

    def text_features(self) -> torch.Tensor:
        """Normalized ``[1, C, D]`` features of the class prompts with the text tower's deep prompts."""
        tokens = self.prompt_learner.text_tokens()
        embeddings, token_ids = self.text_layout.embeddings(tokens[0] if tokens else None)
        features = self.text_encoder(embeddings, token_ids, deep_prompts=tokens[1:]).float()
        return l2_normalize(features).unsqueeze(0)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        pixels = self.normalizer(x).type(self.dtype)
        features = encode_image_with_prompts(self.image_encoder, pixels, self.prompt_learner.vision_tokens())
        return l2_normalize(features.float())

    def model_features(self) -> FrozenSet[str]:
        learned = bool(self.prompt_learner.vision_tokens())
        return super().model_features() | ({"learned_image_features"} if learned else set())

    def word_prompts(self) -> Dict[str, torch.Tensor]:
        """The text prompt's first-block tokens (deeper tokens are not word embeddings)."""
        ctx = self.prompt_learner.ctx
        return {"ctx": ctx.unsqueeze(0)} if ctx is not None else {}

    export_graph_note = ("its image tower runs learned tokens through the blocks one by one (deep prompts); the "
                         "ONNX export covers the fixed-prompt and AMPT heads on the backbone's own image tower")

    def export_settings(self) -> Dict[str, Any]:
        return {"learner": self.prompt_learner.settings(), "layout": self.text_layout.settings()}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "DeepPromptCLIP":
        layout = DeepTextLayout(clip_model, classnames, **settings["layout"])
        learner = DeepPromptLearner(clip_model.ln_final.weight.shape[0], clip_model.visual.conv1.weight.shape[0],
                                    **settings["learner"])
        model = cls(clip_model, learner, layout)
        load_learned_tensors(model, cls.export_modules, tensors)
        return model


class VisualPrompt(nn.Module):
    """FAP's AdvVP prompt: a learned ``pad``-pixel frame added to the normalized image, and ``n_tokens`` tokens.

    Both start from N(0, 1), as FAP's ``PadPrompter`` and ``TokenPrompter``.
    """

    def __init__(self, image_size: int, pad: int, n_tokens: int, width: int) -> None:
        super().__init__()
        if pad < 0 or 2 * pad >= image_size or n_tokens < 0 or (pad == 0 and n_tokens == 0):
            raise UserError(f"A visual prompt needs 0 <= PAD_SIZE < {image_size / 2:g} and N_TOKENS >= 0, "
                             f"not both 0 (got {pad}, {n_tokens})")
        inner = image_size - 2 * pad
        self.pad = pad
        self.pad_up = nn.Parameter(torch.randn(1, 3, pad, image_size))
        self.pad_down = nn.Parameter(torch.randn(1, 3, pad, image_size))
        self.pad_left = nn.Parameter(torch.randn(1, 3, inner, pad))
        self.pad_right = nn.Parameter(torch.randn(1, 3, inner, pad))
        self.tokens = nn.Parameter(torch.randn(n_tokens, width))

    def settings(self) -> Dict[str, int]:
        """The constructor arguments besides the image size and the token width."""
        return {"pad": self.pad, "n_tokens": int(self.tokens.shape[0])}

    def frame(self) -> torch.Tensor:
        """``[1, 3, S, S]``: the learned border, zeros inside."""
        inner = self.pad_left.shape[2]
        middle = torch.cat([self.pad_left, self.pad_left.new_zeros(1, 3, inner, inner), self.pad_right], dim=3)
        return torch.cat([self.pad_up, middle, self.pad_down], dim=2)

    def token_prompts(self) -> List[torch.Tensor]:
        return [self.tokens] if self.tokens.shape[0] else []


class VisualPromptCLIP(FixedPromptCLIP):
    """Hand-written, frozen text features and a learned :class:`VisualPrompt` on the image side."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], templates: Union[str, Sequence[str]],
                 prompt: VisualPrompt, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(clip_model, classnames, templates, dtype=dtype)
        self.visual_prompt = prompt

    def encode_image(self, x: torch.Tensor, frame: bool = True) -> torch.Tensor:
        """Image features with the learned tokens, and the learned frame unless ``frame`` is False."""
        pixels = self.normalizer(x)
        if frame:
            pixels = pixels + self.visual_prompt.frame().to(x.dtype)
        features = encode_image_with_prompts(self.image_encoder, pixels.type(self.dtype),
                                             self.visual_prompt.token_prompts())
        return l2_normalize(features.float())

    def forward(self, x: torch.Tensor, text_features: Optional[torch.Tensor] = None,
                frame: bool = True) -> torch.Tensor:
        """Logits ``[B, C]``; ``frame=False`` leaves the learned frame out (the tokens stay)."""
        if text_features is None:
            text_features = self.text_features()
        return self.combine(self.encode_image(x, frame=frame), text_features)

    def prompt_parameters(self) -> List[nn.Parameter]:
        return list(self.visual_prompt.parameters())

    def model_features(self) -> FrozenSet[str]:
        return super().model_features() | {"learned_image_features"}

    def prompt_label(self) -> str:
        """"learned": the visual prompt is learned, whatever the text template."""
        return LEARNED

    def attack_prompt_modes(self):
        """``onfly`` (its own template) and ``perturbed`` (the visual prompt pushed); ``constant`` would
        only swap one hand-written template for another."""
        return ("onfly", "perturbed")

    export_modules = ("visual_prompt",)
    export_graph_note = ("its learned frame and image tokens change the image tower's input tokens; the ONNX "
                         "export covers the fixed-prompt and AMPT heads on the backbone's own image tower")

    def export_settings(self) -> Dict[str, Any]:
        return {"templates": list(self.templates), "visual_prompt": self.visual_prompt.settings()}

    @classmethod
    def from_exported(cls, clip_model: nn.Module, classnames: Sequence[str], settings: Dict[str, Any],
                      tensors: Dict[str, torch.Tensor]) -> "VisualPromptCLIP":
        visual = clip_model.visual
        prompt = VisualPrompt(visual.input_resolution, width=visual.conv1.weight.shape[0], **settings["visual_prompt"])
        model = cls(clip_model, classnames, settings["templates"], prompt)
        load_learned_tensors(model, cls.export_modules, tensors)
        return model


class FrameUnderAttackOnly(nn.Module):
    """FAP's evaluation of AdvVP (``TRAINER.ADVVP.EVAL_FRAME False``): the frame only where a gradient is taken.

    FAP's ``trainers/zsrobust.py`` ``test()`` attacks through the framed
    model (``attack_pgd`` gets the ``PadPrompter``) and scores the clean and
    the attacked images without the frame, under ``torch.no_grad()``. Here
    likewise: a forward with gradients enabled (an attack's) adds the frame,
    one without (the scored logits, and any no-gradient forward an attack
    makes, e.g. TPGD's clean target, AutoAttack's checks) leaves it out.
    Text features fixed, as :class:`~ampt.models.FixedTextFeatures`.
    """

    def __init__(self, model: VisualPromptCLIP, text_features: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, text_features=self.text_features, frame=torch.is_grad_enabled())

    def exportable_state(self) -> ExportState:
        """The model's exportable state, evaluated as here (the frame only under a gradient)."""
        state = self.model.exportable_state()
        state.text_features = self.text_features.detach().cpu()
        state.wrapper = "frame_under_attack_only"
        return state
