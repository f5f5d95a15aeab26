"""The module an evaluation attacks for a ``--prompt``: the run's learned prompts, a template, or a trainer's own mode.

"learned" is the run's prompts; a hand-written template with one ``{}`` is
zero-shot on the same backbone; a trainer adds named modes through its
``eval_prompt_model(prompt)`` hook (AMPT's "uniform"). Text features that do
not depend on the image are computed once (:class:`~ampt.models.FixedTextFeatures`);
everything that does (AMPT's router) stays inside the attacked forward.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from ..errors import UserError
from ..models import FixedTextFeatures
from ..models.interface import LEARNED
from ..models.templates import check_template


def named_prompt_modes(trainer: Any) -> Tuple[str, ...]:
    """The prompt names ``trainer`` understands, besides templates: "learned" plus its own."""
    return (LEARNED, *trainer.eval_prompt_modes)


def record_prompt(trainer: Any, prompt: str) -> str:
    """The ``prompt`` field of a record: "learned" is the model's own label (its template when nothing is learned)."""
    return trainer.model.prompt_label() if prompt == LEARNED else prompt


@torch.no_grad()
def prompt_model(trainer: Any, prompt: str = LEARNED) -> nn.Module:
    """The module (pixels in [0, 1] -> logits) that ``prompt`` evaluates, text features fixed.

    The trainer's ``eval_prompt_model(prompt)`` hook is asked first (None
    means "not mine"); then "learned" and templates are handled here through
    the model's interface (:class:`~ampt.models.interface.PromptModel`).
    """
    module = trainer.eval_prompt_model(prompt)
    if module is not None:
        return module
    model = trainer.model
    if prompt == LEARNED:
        return FixedTextFeatures(model, model.text_features())
    if "{" in prompt:
        return FixedTextFeatures(model, model.template_features(trainer.dm.dataset.classnames, check_template(prompt)))
    raise UserError(
        f'Unknown --prompt "{prompt}" for {type(trainer).__name__}; valid: '
        f'{", ".join(named_prompt_modes(trainer))}, or a template with one "{{}}" such as "a photo of a {{}}."'
    )
