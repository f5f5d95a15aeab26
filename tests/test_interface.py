"""The declared model interface (ampt.models.interface): the check at set-up and what the core asks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ampt.models import FixedPromptCLIP, PromptedCLIP, PromptLearner
from ampt.models.interface import LEARNED, PromptModel, check_attack_prompt, check_prompt_model


def test_check_names_what_is_missing():
    with pytest.raises(TypeError, match=r"Linear does not implement .*missing text_features, encode_image, combine, prompt_parameters"):
        check_prompt_model(nn.Linear(2, 2))


def test_prompted_and_zero_shot_models_implement_it(tiny):
    learned = PromptedCLIP(tiny, PromptLearner(tiny, ["cat", "dog"], n_ctx=2))
    fixed = FixedPromptCLIP(tiny, ["cat", "dog"], "a drawing of a {}.")
    for model in (learned, fixed):
        check_prompt_model(model)
        assert isinstance(model, PromptModel)
    assert learned.prompt_label() == LEARNED and fixed.prompt_label() == "a drawing of a {}."
    assert learned.prompt_parameters() == [learned.prompt_learner.ctx] and fixed.prompt_parameters() == []
    assert list(learned.word_prompts()) == ["ctx"] and fixed.word_prompts() == {}
    assert learned.attack_prompt_modes() == ("onfly", "constant", "perturbed", "perturbed_rms")
    assert "perturbed" not in fixed.attack_prompt_modes()
    with pytest.raises(ValueError, match='PROMPT "perturbed" is not supported by FixedPromptCLIP; valid: onfly, constant'):
        check_attack_prompt(fixed, "perturbed")
    with torch.no_grad():
        assert torch.allclose(fixed.template_features(["cat", "dog"], "a drawing of a {}."), fixed.text_features())
