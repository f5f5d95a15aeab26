"""The text pass's exact variants: shared prefix, activation checkpointing, chunks.

Every variant must give the plain trimmed pass's features and the same
gradients with respect to the context vectors, for unified (shared-prefix
path) and class-specific / middle / front prompts (plain-pass fallback), with
one and four prompts. The model has two attention heads, so the per-head
layout of the cached prefix keys is checked too.
"""
from __future__ import annotations

import pytest
import torch

from ampt.models import PromptedCLIP, PromptLearner, build_tiny_clip
from ampt.models.text_encoder import TextEncoder, TextPassOptions

CLASSNAMES = ["dog", "golden_retriever", "sea or lake", "st. bernard", "cat", "a much longer class name here"]
PLAIN = TextPassOptions(shared_prefix=False)
VARIANTS = {
    "shared prefix": TextPassOptions(),
    "shared prefix, checkpoint": TextPassOptions(checkpoint=True),
    "shared prefix, chunks of 4": TextPassOptions(chunk_rows=4),
    "shared prefix, checkpoint, chunks of 1": TextPassOptions(checkpoint=True, chunk_rows=1),
    "plain, checkpoint": TextPassOptions(shared_prefix=False, checkpoint=True),
    "plain, chunks of 5": TextPassOptions(shared_prefix=False, chunk_rows=5),
}


@pytest.fixture(scope="module")
def two_heads():
    model = build_tiny_clip(text_width=128, text_layers=2, seed=1)  # 2 heads of 64
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def features_and_grad(model: PromptedCLIP, options: TextPassOptions):
    model.text_encoder.options = options
    ctx = model.prompt_learner.ctx
    ctx.grad = None
    features = model.text_features()
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(0))
    (features * weights).sum().backward()
    return features.detach(), ctx.grad.clone()


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("csc,position", [(False, "end"), (True, "end"), (False, "middle"), (False, "front")])
def test_variants_equal_the_plain_pass(two_heads, k, csc, position):
    torch.manual_seed(0)
    learner = PromptLearner(two_heads, CLASSNAMES, n_ctx=3, csc=csc, class_token_position=position, n_prompts=k)
    with torch.no_grad():
        learner.ctx.normal_(std=0.5)  # far from the init, so prompts differ clearly
    model = PromptedCLIP(two_heads, learner)
    reference, reference_grad = features_and_grad(model, PLAIN)
    assert reference_grad.abs().max() > 1e-2
    for name, options in VARIANTS.items():
        features, grad = features_and_grad(model, options)
        assert (features - reference).abs().max() < 1e-5, name
        assert (grad - reference_grad).abs().max() < 1e-4 * reference_grad.abs().max(), name


@pytest.mark.parametrize("csc,position", [(True, "end"), (False, "middle"), (False, "front"), (True, "front")])
def test_fallback_to_the_plain_pass(tiny, csc, position):
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=2, csc=csc, class_token_position=position, n_prompts=2)
    assert learner.shared_prefix() is None
    model = PromptedCLIP(tiny, learner)
    calls = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    model.text_features()
    assert calls == [{}]  # one whole-prompt pass, no prefix


@pytest.mark.parametrize("k", [1, 3])
def test_shared_prefix_split_rebuilds_the_prompts(tiny, k):
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=4, n_prompts=k)
    prefixes, suffixes, suffix_ids = learner.shared_prefix()
    embeddings, token_ids = learner()
    c, p = len(CLASSNAMES), prefixes.shape[1]
    assert prefixes.shape == (k, 5, 64) and suffixes.shape[0] == k * c
    rebuilt = torch.cat([prefixes.repeat_interleave(c, dim=0), suffixes], dim=1)
    assert torch.equal(rebuilt, embeddings)
    assert torch.equal(suffix_ids, token_ids[:, p:])
    model = PromptedCLIP(tiny, learner)
    calls = []
    model.text_encoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    model.text_features()
    assert len(calls) == 1 and calls[0]["prefix"].shape == prefixes.shape


def test_checkpoint_recomputes_blocks_in_backward(tiny):
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=2)
    model = PromptedCLIP(tiny, learner)
    ln_calls = []  # of the first LayerNorm: recomputation stops once the saved tensors are back
    tiny.transformer.resblocks[0].ln_1.register_forward_hook(lambda *_: ln_calls.append(1))
    for options, expected in ((TextPassOptions(), 1 + 1), (TextPassOptions(checkpoint=True), 2 + 1)):
        model.text_encoder.options = options
        ln_calls.clear()
        model.text_features().sum().backward()
        assert len(ln_calls) == expected  # prefix once, suffixes once (twice with checkpointing)
    with torch.no_grad():  # nothing to recompute without gradients
        ln_calls.clear()
        model.text_features()
        assert len(ln_calls) == 2


def test_encoder_refuses_bad_options_and_groups(tiny):
    with pytest.raises(ValueError, match="MODEL.TEXT_ENCODER.CHUNK_SIZE must be >= 0"):
        TextPassOptions(chunk_rows=-1)
    encoder = TextEncoder(tiny)
    with pytest.raises(ValueError, match="do not split into 2 prefix groups"):
        encoder(torch.zeros(3, 4, 64), torch.ones(3, 4, dtype=torch.long), prefix=torch.zeros(2, 2, 64))
