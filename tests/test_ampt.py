"""AMPT: router, mixture model, trainer, evaluation and interpretation on a tiny CLIP.

The identities of method.md section 3 (K = 1 is APT, uniform weights are the
re-normalized mean, router weights on the simplex) are checked against
independent computations: CLIP's own 77-token text pass and explicit
per-sample mixtures of the normalized text features.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ampt.models import PromptLearner, PromptedCLIP, build_tiny_clip
from ampt.models.clip_loader import clip
from ampt.models.mixture import MixturePromptedCLIP, mix_similarities
from ampt.models.router import Router, weight_entropy

CLASSNAMES = ["zero", "one", "two", "golden retriever", "sea or lake", "st. bernard"]


@pytest.fixture(scope="module")
def tiny():
    model = build_tiny_clip(seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mixture(clip_model, n_prompts=4, n_ctx=4, kind="linear", mix="features", seed=0, **router_kw):
    torch.manual_seed(seed)
    learner = PromptLearner(clip_model, CLASSNAMES, n_ctx=n_ctx, n_prompts=n_prompts)
    router = Router(clip_model.visual.output_dim, n_prompts, kind=kind, **router_kw)
    return MixturePromptedCLIP(clip_model, learner, router, mix=mix).eval()


def _full_length_text_features(clip_model, ctx: torch.Tensor) -> torch.Tensor:
    """Reference: ``[K, C, D]`` features from all 77 positions, through CLIP's own transformer."""
    n_ctx = ctx.shape[-2]
    ids = clip.tokenize([" ".join(["X"] * n_ctx) + f" {name}." for name in CLASSNAMES])
    eot = ids.argmax(dim=-1)
    out = []
    for k in range(ctx.shape[0]):
        x = clip_model.token_embedding(ids).clone()
        x[:, 1:1 + n_ctx] = ctx[k]
        x = x + clip_model.positional_embedding
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = clip_model.ln_final(x)[torch.arange(len(ids)), eot] @ clip_model.text_projection
        out.append(F.normalize(x, dim=-1))
    return torch.stack(out)


# ---------------------------------------------------------------- router

@pytest.mark.parametrize("kind, kw", [
    ("linear", {}),
    ("linear", {"temperature": 0.1}),
    ("mlp", {"hidden": 16}),
    ("linear", {"top_k": 2}),
    ("mlp", {"top_k": 1}),
    ("uniform", {}),
])
def test_router_weights_on_simplex(kind, kw):
    torch.manual_seed(0)
    router = Router(32, 4, kind=kind, **kw)
    weights = router(F.normalize(torch.randn(64, 32), dim=-1))
    assert weights.shape == (64, 4)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=-1), torch.ones(64), atol=1e-6)
    if kw.get("top_k"):
        assert ((weights > 0).sum(dim=-1) == kw["top_k"]).all()
    elif kind == "uniform":
        assert torch.equal(weights, torch.full((64, 4), 0.25))
    else:
        assert (weights > 0).all()


def test_router_rejects_unused_or_invalid_settings():
    with pytest.raises(ValueError, match="Did you mean"):
        Router(32, 4, kind="linaer")
    with pytest.raises(ValueError, match="mlp"):
        Router(32, 4, kind="linear", hidden=8)
    with pytest.raises(ValueError, match="top_k"):
        Router(32, 4, top_k=5)
    with pytest.raises(ValueError, match="uniform"):
        Router(32, 4, kind="uniform", top_k=2)
    with pytest.raises(ValueError, match="temperature"):
        Router(32, 4, temperature=0)


def test_temperature_sharpens_and_entropy_bounds():
    torch.manual_seed(0)
    router = Router(32, 4)
    features = F.normalize(torch.randn(16, 32), dim=-1)
    warm = router(features)
    router.temperature = 0.05
    cold = router(features)
    assert (weight_entropy(cold) < weight_entropy(warm)).all()
    assert torch.allclose(weight_entropy(torch.full((2, 4), 0.25)), torch.full((2,), torch.log(torch.tensor(4.0))))
    assert torch.equal(weight_entropy(torch.tensor([[1.0, 0.0, 0.0, 0.0]])), torch.zeros(1))


# ---------------------------------------------------------------- mixture model

@pytest.mark.parametrize("mix", ["features", "logits"])
def test_one_prompt_gives_apt_logits(tiny, mix):
    model = _mixture(tiny, n_prompts=1, n_ctx=16, mix=mix)
    apt_learner = PromptLearner(tiny, CLASSNAMES, n_ctx=16, n_prompts=1)
    with torch.no_grad():
        apt_learner.ctx.copy_(model.prompt_learner.ctx)
    apt = PromptedCLIP(tiny, apt_learner).eval()
    x = _images(5)
    with torch.no_grad():
        ours, reference = model(x), apt(x)
    assert torch.equal(model.last_weights, torch.ones(5, 1))
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5), (ours - reference).abs().max()


def test_mixture_matches_explicit_per_sample_mixture(tiny):
    model = _mixture(tiny, n_prompts=3, kind="mlp", hidden=8)
    x = _images(5)
    with torch.no_grad():
        logits = model(x)
        f, t, w = model.encode_image(x), model.text_features(), model.last_weights
        mixed = F.normalize(torch.einsum("bk,kcd->bcd", w, t), dim=-1)
        expected = model.logit_scale.exp() * torch.einsum("bd,bcd->bc", f, mixed)
        per_prompt_logits = model.logit_scale.exp() * torch.einsum("bd,kcd->bkc", f, t)
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5)
    mixed_logits = model.logit_scale.exp() * mix_similarities(f, t, w, mix="logits")
    assert torch.allclose(mixed_logits, torch.einsum("bk,bkc->bc", w, per_prompt_logits), atol=1e-5)


@pytest.mark.parametrize("use_router_kind", [True, False])
def test_uniform_weights_give_renormalized_mean(tiny, use_router_kind):
    model = _mixture(tiny, n_prompts=4, kind="uniform" if use_router_kind else "linear")
    x = _images(3)
    with torch.no_grad(), model.routing("uniform" if not use_router_kind else "learned"):
        logits = model(x)
        f, t = model.encode_image(x), model.text_features()
    mean = F.normalize(t.mean(dim=0), dim=-1)  # [C, D], one feature per class for every image
    expected = model.logit_scale.exp() * f @ mean.t()
    assert torch.equal(model.last_weights, torch.full((3, 4), 0.25))
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5)


def test_different_images_get_different_weights(tiny):
    model = _mixture(tiny, n_prompts=4)
    with torch.no_grad():
        model(_images(2, seed=1))
    w = model.last_weights
    assert not torch.allclose(w[0], w[1])


def test_trimmed_text_features_equal_full_length_pass(tiny):
    model = _mixture(tiny, n_prompts=4, n_ctx=4)
    assert model.prompt_learner.seq_len < 77
    with torch.no_grad():
        trimmed = model.text_features()
        reference = _full_length_text_features(tiny, model.prompt_learner.ctx)
    assert trimmed.shape == reference.shape == (4, len(CLASSNAMES), tiny.text_projection.shape[1])
    assert torch.allclose(trimmed, reference, rtol=0, atol=1e-5), (trimmed - reference).abs().max()


def test_attack_gradient_flows_through_router(tiny):
    """White-box: the input gradient includes the router's path; 'detached' removes it."""
    model = _mixture(tiny, n_prompts=4, temperature=0.05)
    with torch.no_grad():
        t = model.text_features()
    labels = torch.arange(4) % len(CLASSNAMES)

    def input_grad(mode: str) -> torch.Tensor:
        x = _images(4).requires_grad_(True)
        with model.routing(mode):
            loss = F.cross_entropy(model(x, text_features=t), labels)
        return torch.autograd.grad(loss, x)[0]

    full, detached = input_grad("learned"), input_grad("detached")
    assert full.abs().sum() > 0 and detached.abs().sum() > 0
    assert not torch.allclose(full, detached)


def test_every_prompt_and_the_router_get_gradient(tiny):
    model = _mixture(tiny, n_prompts=4)
    labels = torch.arange(6) % len(CLASSNAMES)
    loss = F.cross_entropy(model(_images(6)), labels)
    loss.backward()
    ctx_grad = model.prompt_learner.ctx.grad
    assert ctx_grad is not None and (ctx_grad.flatten(1).abs().sum(dim=1) > 0).all()
    for name, p in model.router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny.parameters())
