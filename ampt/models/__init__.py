"""CLIP loading and the shared prompt-learning modules (see docs/architecture.md)."""
from .clip_loader import load_clip, load_robust_visual_weights
from .deep_prompt_learner import COUPLINGS, DeepPromptLearner, DeepTextLayout, encode_image_with_prompts
from .deep_prompt_models import DeepPromptCLIP, FrameUnderAttackOnly, VisualPrompt, VisualPromptCLIP
from .interface import LEARNED, PromptModel, check_prompt_model
from .normalizer import CLIP_MEAN, CLIP_STD, ImageNormalizer
from .prompt_learner import CLASS_TOKEN_POSITIONS, PromptLearner
from .prompted_clip import (
    FixedPromptCLIP,
    FixedTextFeatures,
    PromptedCLIP,
    l2_normalize,
    template_text_features,
)
from .templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE, get_template
from .text_encoder import TextEncoder
from .tiny import build_tiny_clip, save_clip_state_dict

__all__ = [
    "COUPLINGS",
    "DeepPromptCLIP",
    "DeepPromptLearner",
    "DeepTextLayout",
    "FrameUnderAttackOnly",
    "LEARNED",
    "PromptModel",
    "VisualPrompt",
    "VisualPromptCLIP",
    "check_prompt_model",
    "encode_image_with_prompts",
    "CLASS_TOKEN_POSITIONS",
    "CLIP_MEAN",
    "CLIP_STD",
    "CUSTOM_TEMPLATES",
    "DEFAULT_TEMPLATE",
    "FixedPromptCLIP",
    "FixedTextFeatures",
    "ImageNormalizer",
    "PromptLearner",
    "PromptedCLIP",
    "TextEncoder",
    "build_tiny_clip",
    "get_template",
    "l2_normalize",
    "load_clip",
    "load_robust_visual_weights",
    "save_clip_state_dict",
    "template_text_features",
]
