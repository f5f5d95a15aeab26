"""Text encoder (trimmed), prompt learner (bank of K prompts) and PromptedCLIP.

The reference is CoOp's computation, written out here: prompts of all 77
tokens, built class by class, through the ``clip`` package's own transformer.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ampt.models import (
    FixedPromptCLIP,
    FixedTextFeatures,
    PromptLearner,
    PromptedCLIP,
    TextEncoder,
)
from ampt.models.clip_loader import clip
from ampt.models.normalizer import ImageNormalizer

CLASSNAMES = ["dog", "golden_retriever", "sea or lake", "st. bernard", "cat"]
TOKENIZER = clip.clip._tokenizer


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _coop_text_features(clip_model, classnames, ctx, position: str) -> torch.Tensor:
    """CoOp's PromptLearner + TextEncoder for one prompt; ``ctx`` is [n_ctx, d] or [C, n_ctx, d]."""
    n_ctx = ctx.shape[-2]
    names = [n.replace("_", " ") for n in classnames]
    tokens = torch.cat([clip.tokenize(" ".join(["X"] * n_ctx) + " " + n + ".") for n in names])
    embedding = clip_model.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    rows = []
    for i, name in enumerate(names):
        ctx_i = ctx if ctx.dim() == 2 else ctx[i]
        name_len = len(TOKENIZER.encode(name))
        cls_i, after = suffix[i, :name_len], suffix[i, name_len:]
        if position == "end":
            parts = [prefix[i], ctx_i, suffix[i]]
        elif position == "middle":
            half = n_ctx // 2
            parts = [prefix[i], ctx_i[:half], cls_i, ctx_i[half:], after]
        else:
            parts = [prefix[i], cls_i, ctx_i, after]
        rows.append(torch.cat(parts, dim=0))
    x = torch.stack(rows) + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)
    return x[torch.arange(len(names)), tokens.argmax(dim=-1)] @ clip_model.text_projection


def _coop_logits(clip_model, classnames, ctx, position, images) -> torch.Tensor:
    image = clip_model.visual(ImageNormalizer()(images))
    text = _coop_text_features(clip_model, classnames, ctx, position)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return clip_model.logit_scale.exp() * image @ text.t()


def test_trimmed_text_encoder_matches_clip_encode_text(tiny):
    texts = ["a photo of a dog.", "x", "a much longer sentence with quite a few more words in it, really."]
    tokens = clip.tokenize(texts)
    with torch.no_grad():
        reference = tiny.encode_text(tokens)
        trimmed = TextEncoder(tiny).encode_token_ids(tokens)
    assert trimmed.shape == reference.shape == (3, tiny.text_projection.shape[1])
    assert (trimmed - reference).abs().max() < 1e-5
    assert not torch.equal(trimmed[0], trimmed[1])


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_single_prompt_reproduces_coop(tiny, position, csc):
    torch.manual_seed(3)
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=4, csc=csc, class_token_position=position)
    model = PromptedCLIP(tiny, learner).eval()
    images = _images()
    with torch.no_grad():
        ours = model(images)
        reference = _coop_logits(tiny, CLASSNAMES, learner.ctx[0], position, images)
    assert ours.shape == (4, len(CLASSNAMES))
    assert (ours - reference).abs().max() < 1e-4
    assert learner.seq_len < 77  # the frozen tokens are cut after the longest prompt


def test_random_init_consumes_the_rng_as_coop(tiny):
    torch.manual_seed(7)
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=4)
    torch.manual_seed(7)
    expected = torch.empty(4, 64)
    torch.nn.init.normal_(expected, std=0.02)
    assert torch.equal(learner.ctx[0], expected)


@pytest.mark.parametrize("csc", [False, True])
def test_bank_shapes_and_prompt_major_order(tiny, csc):
    k, c, n_ctx, d = 3, len(CLASSNAMES), 2, 64
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=n_ctx, csc=csc, n_prompts=k)
    assert learner.ctx.shape == ((k, c, n_ctx, d) if csc else (k, n_ctx, d))
    embeddings, token_ids = learner()
    assert embeddings.shape == (k * c, learner.seq_len, d)
    assert token_ids.shape == (k * c, learner.seq_len)
    for prompt in range(k):
        for cls in range(c):
            ctx = learner.ctx[prompt, cls] if csc else learner.ctx[prompt]
            assert torch.equal(embeddings[prompt * c + cls, 1:1 + n_ctx], ctx)
    assert not torch.allclose(learner.ctx[0], learner.ctx[1])  # independent draws
    features = PromptedCLIP(tiny, learner).text_features()
    assert features.shape == (k, c, tiny.text_projection.shape[1])
    assert torch.allclose(features.norm(dim=-1), torch.ones(k, c))


def test_bank_features_equal_each_prompt_alone(tiny):
    bank = PromptLearner(tiny, CLASSNAMES, n_ctx=3, n_prompts=2, class_token_position="middle")
    with torch.no_grad():
        features = PromptedCLIP(tiny, bank).text_features()
        for k in range(2):
            single = _coop_text_features(tiny, CLASSNAMES, bank.ctx[k], "middle")
            assert torch.allclose(features[k], F.normalize(single, dim=-1), atol=1e-5)


def test_word_initialisation(tiny):
    words = clip.tokenize("a photo of a")
    expected = tiny.token_embedding(words)[0, 1:5]
    first_only = PromptLearner(tiny, CLASSNAMES, n_ctx=16, ctx_init="a photo of a", n_prompts=3)
    assert first_only.n_ctx == 4 and first_only.ctx.shape == (3, 4, 64)
    assert torch.equal(first_only.ctx[0], expected)
    assert not torch.allclose(first_only.ctx[1], expected)
    every = PromptLearner(tiny, CLASSNAMES, ctx_init="a_photo_of_a", n_prompts=2, init_all=True, csc=True)
    assert every.ctx.shape == (2, len(CLASSNAMES), 4, 64)
    assert torch.equal(every.ctx[1, 2], expected)
    # initialised from the words, the learned prompt gives the hand-written prompt's features
    with torch.no_grad():
        learned = PromptedCLIP(tiny, first_only).text_features()[0]
        texts = [f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES]
        written = F.normalize(tiny.encode_text(clip.tokenize(texts)), dim=-1)
    assert torch.allclose(learned, written, atol=1e-5)


def test_invalid_arguments(tiny):
    with pytest.raises(ValueError, match="end, middle, front"):
        PromptLearner(tiny, CLASSNAMES, class_token_position="start")
    with pytest.raises(ValueError, match="n_prompts"):
        PromptLearner(tiny, CLASSNAMES, n_prompts=0)


def test_only_the_context_learns(tiny):
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=2, n_prompts=2)
    model = PromptedCLIP(tiny, learner)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    features = model.text_features()
    logits = model(_images(), text_features=features[:1]) + model(_images(), text_features=features[1:])
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert learner.ctx.grad is not None
    assert all(learner.ctx.grad[k].abs().sum() > 0 for k in range(2))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "prompt_learner.ctx")


def test_checkpoint_holds_only_ctx_and_loads_coop_layout(tiny):
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=4)
    assert list(learner.state_dict()) == ["ctx"]
    coop_state = {
        "ctx": torch.randn(4, 64),  # CoOp: no prompt axis
        "token_prefix": torch.zeros(len(CLASSNAMES), 1, 64),
        "token_suffix": torch.zeros(len(CLASSNAMES), 72, 64),
    }
    learner.load_state_dict(coop_state)
    assert torch.equal(learner.ctx[0], coop_state["ctx"])
    assert learner.token_suffix.abs().sum() > 0  # the frozen tokens are not overwritten


def test_cached_text_features_skip_the_text_encoder(tiny):
    model = PromptedCLIP(tiny, PromptLearner(tiny, CLASSNAMES, n_ctx=2)).eval()
    calls = []
    model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        direct = model(_images())
        assert len(calls) == 1
        wrapped = FixedTextFeatures(model, model.text_features())
        assert len(calls) == 2
        for _ in range(3):
            cached = wrapped(_images())
    assert len(calls) == 2
    assert torch.equal(direct, cached)


def test_combine_refuses_several_prompts(tiny):
    model = PromptedCLIP(tiny, PromptLearner(tiny, CLASSNAMES, n_ctx=2, n_prompts=2))
    with pytest.raises(ValueError, match="must override combine"):
        model(_images())


def test_fixed_prompt_clip_is_zero_shot_clip(tiny):
    template = "a centered satellite photo of {}."
    model = FixedPromptCLIP(tiny, CLASSNAMES, template).eval()
    images = _images()
    with torch.no_grad():
        logits = model(images)
        text = tiny.encode_text(clip.tokenize([template.format(n.replace("_", " ")) for n in CLASSNAMES]))
        image = tiny.encode_image(ImageNormalizer()(images))
        expected = tiny.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    assert torch.allclose(logits, expected, atol=1e-4)
    assert not any(key.startswith("fixed") for key in model.state_dict())  # recomputed, not saved
    ensemble = FixedPromptCLIP(tiny, CLASSNAMES, [template, "a photo of a {}."])
    assert ensemble.text_features().shape == (1, len(CLASSNAMES), 32)
    assert torch.allclose(ensemble.text_features().norm(dim=-1), torch.ones(1, len(CLASSNAMES)))
