"""Deep prompts in both towers: exact at J = 0, coupling shapes, gradients, cached text side."""
from __future__ import annotations

import pytest
import torch

from ampt.attacks import build_attack
from ampt.models import (DeepPromptCLIP, DeepPromptLearner, DeepTextLayout, FixedTextFeatures, PromptedCLIP,
                         VisualPrompt, VisualPromptCLIP, encode_image_with_prompts, template_text_features)


NAMES = ["cat", "dog", "small_bird"]
TEXT_W, VISION_W = 64, 96  # the demo's tiny CLIP: text 64 x 2 blocks, vision 96 x 3 blocks (widths differ)


@pytest.fixture(scope="module")
def tiny(tiny_demo_shape):
    return tiny_demo_shape


def _model(tiny, coupling="independent", n=2, depth_text=2, depth_vision=3, ctx_init="a photo of a"):
    layout = DeepTextLayout(tiny, NAMES, n if depth_text else 0, ctx_init)
    learner = DeepPromptLearner(TEXT_W, VISION_W, coupling, n, n, depth_text, depth_vision, layout.initial_ctx())
    return DeepPromptCLIP(tiny, learner, layout).eval()


def _images(n=4):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_depth_zero_is_the_plain_model(tiny):
    model = _model(tiny, depth_text=0, depth_vision=0)
    plain = PromptedCLIP(tiny, None).eval()
    x = _images()
    with torch.no_grad():
        expected = template_text_features(plain.text_encoder, NAMES, "a photo of a {}.")
        assert torch.allclose(model.text_features(), expected, atol=1e-6)
        assert torch.equal(model.encode_image(x), plain.encode_image(x))
        assert list(model.prompt_learner.parameters()) == []


def test_the_token_loops_match_clip_with_empty_prompts(tiny):
    """Zero-token prompts at every block: the hand-driven blocks give CLIP's own features."""
    x = PromptedCLIP(tiny, None).normalizer(_images())
    with torch.no_grad():
        empty = [torch.zeros(0, VISION_W)] * 3
        assert torch.allclose(encode_image_with_prompts(tiny.visual, x, empty), tiny.visual(x), atol=1e-5)
        plain = PromptedCLIP(tiny, None).text_encoder
        layout = DeepTextLayout(tiny, NAMES, 0, "a photo of a")
        emb, ids = layout.embeddings(None)
        assert torch.allclose(plain(emb, ids, deep_prompts=[torch.zeros(0, TEXT_W)]), plain(emb, ids), atol=1e-6)


@pytest.mark.parametrize("coupling, learned, projections", [
    ("maple", {"ctx": (2, TEXT_W), "text_deep.0": (2, TEXT_W)},
     {"to_vision.0": (VISION_W, TEXT_W), "to_vision.1": (VISION_W, TEXT_W)}),
    ("fap", {"ctx": (2, TEXT_W), "vision_deep.0": (2, VISION_W)},
     {"to_vision.0": (VISION_W, TEXT_W), "to_text.0": (TEXT_W, VISION_W)}),
    ("independent", {"ctx": (2, TEXT_W), "text_deep.0": (2, TEXT_W), "vision.0": (2, VISION_W),
                     "vision.1": (2, VISION_W)}, {}),
])
def test_coupling_shapes_and_gradients_reach_every_prompt(tiny, coupling, learned, projections):
    model = _model(tiny, coupling, depth_vision=2)
    learner = model.prompt_learner
    shapes = {name: tuple(p.shape) for name, p in learner.named_parameters() if not name.endswith(".bias")}
    assert shapes == {**learned, **{f"{k}.weight": v for k, v in projections.items()}}
    assert [t.shape for t in learner.text_tokens()] == [(2, TEXT_W)] * 2
    assert [t.shape for t in learner.vision_tokens()] == [(2, VISION_W)] * 2
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    model(_images()).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert all(p.grad is None for p in tiny.parameters())  # CLIP stays frozen
    assert torch.allclose(learner.ctx.detach(), DeepTextLayout(tiny, NAMES, 2, "a photo of a").word_ctx)


def test_coupled_towers_need_equal_depths():
    with pytest.raises(ValueError, match="maple coupling needs the same depth"):
        DeepPromptLearner(TEXT_W, VISION_W, "maple", 2, 2, 2, 3)


def test_attack_reuses_the_cached_text_side(tiny):
    model = _model(tiny, "fap", depth_vision=2)
    calls = []
    model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        fixed = FixedTextFeatures(model, model.text_features())
    adv = build_attack("pgd", fixed, 4, steps=3)(_images(), torch.tensor([0, 1, 2, 0]))
    assert calls == [1] and adv.shape == (4, 3, 32, 32)


def test_visual_prompt_model(tiny):
    prompt = VisualPrompt(32, pad=3, n_tokens=2, width=VISION_W)
    model = VisualPromptCLIP(tiny, NAMES, "a photo of a {}.", prompt).eval()
    frame = prompt.frame()
    assert frame.shape == (1, 3, 32, 32) and frame[..., 3:29, 3:29].abs().sum() == 0
    model(_images()).sum().backward()
    assert all(p.grad is not None for p in model.prompt_parameters())
    assert model.prompt_label() == "learned" and model.attack_prompt_modes() == ("onfly", "perturbed")
