"""Router diagnostics (ampt.models.router_stats) and the keys that make routing possible.

The statistics are checked on weights whose answer is known by hand
(uniform, one-hot, label-determined); the new ``TRAINER.AMPT`` keys are
checked to change what they should and nothing else.
"""
from __future__ import annotations

import math

import pytest
import torch

from ampt.models import PromptLearner
from ampt.models.mixture import MixturePromptedCLIP
from ampt.models.prompt_init import orthogonal_contexts, template_contexts
from ampt.models.router import Router
from ampt.models.router_stats import (EpochAccumulator, bank_cosine, entropy_of_mean, eval_split_stats,
                                      mean_offdiagonal, routing_mutual_information, tv_from_mean, weight_entropy)

CLASSNAMES = ["zero", "one", "two"]


def _one_hot(labels, k):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()


# ---------------------------------------------------------------- statistics
def test_uniform_weights_entropy_log_k_no_variation_no_information():
    w = torch.full((12, 4), 0.25)
    labels = torch.arange(12) % 3
    assert weight_entropy(w).allclose(torch.full((12,), math.log(4)))
    assert entropy_of_mean(w) == pytest.approx(math.log(4))
    assert tv_from_mean(w) == 0.0
    assert routing_mutual_information(w, labels) == pytest.approx(0.0, abs=1e-7)


def test_one_hot_weights_zero_entropy_and_full_information_when_label_picks_the_prompt():
    labels = torch.tensor([0, 1, 2, 3] * 3)
    w = _one_hot(labels, 4)
    assert weight_entropy(w).abs().max() == 0
    assert entropy_of_mean(w) == pytest.approx(math.log(4))  # every prompt used equally: no collapse
    assert tv_from_mean(w) == pytest.approx(0.75)  # 1 - 1/K, the maximum
    assert routing_mutual_information(w, labels) == pytest.approx(math.log(4), abs=1e-6)
    collapsed = _one_hot([2] * 12, 4)
    assert entropy_of_mean(collapsed) == 0 and tv_from_mean(collapsed) == 0
    assert routing_mutual_information(collapsed, labels) == pytest.approx(0.0, abs=1e-7)


def test_mutual_information_bounds_on_random_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(200, 4, generator=g) * 3, dim=1)
    labels = torch.randint(0, 10, (200,), generator=g)
    mi = routing_mutual_information(w, labels)
    assert 0 < mi <= min(math.log(4), math.log(10))
    # two groups, the second a relabelled copy of the first: no information
    assert routing_mutual_information(torch.cat([w, w]), torch.cat([torch.zeros(200), torch.ones(200)])) \
        == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="group labels"):
        routing_mutual_information(w, labels[:5])


def test_bank_cosine_identical_and_orthogonal_prompts():
    t = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1)
    same = t.expand(3, -1, -1)
    assert mean_offdiagonal(bank_cosine(same)) == pytest.approx(1.0)
    eye = torch.eye(8)[:3].unsqueeze(1).expand(3, 5, 8)  # prompt k = basis vector k for every class
    m = bank_cosine(eye)
    assert torch.allclose(m, torch.eye(3)) and mean_offdiagonal(m) == pytest.approx(0.0)


def test_epoch_accumulator_and_eval_split_stats():
    acc = EpochAccumulator(4)
    assert acc.summary() is None
    acc.add_weights(torch.full((6, 4), 0.25))
    acc.add_grad_norms({"prompt_learner": 1.0, "router": 0.01})
    acc.add_grad_norms({"prompt_learner": 3.0, "router": 0.03})
    s = acc.summary()
    assert s["entropy"] == pytest.approx(math.log(4), abs=1e-5) and s["tv_from_batch_mean"] == 0
    assert s["router_logit_std"] == 0 and s["n_images"] == 6 and sum(s["mean_weights"]) == pytest.approx(1)
    assert s["grad_norm"] == {"prompt_learner": 2.0, "router": 0.02}
    labels = torch.tensor([0, 1, 2, 3])
    clean, attacked = _one_hot(labels, 4), torch.full((4, 4), 0.25)
    out = eval_split_stats(clean, attacked, labels)
    assert out["clean"]["mi_label"] == pytest.approx(math.log(4), abs=1e-5)
    assert out["attacked"]["mi_label"] == pytest.approx(0.0, abs=1e-6)
    # same mean weights clean and attacked: no information in the pooled weights, though each image moved
    assert out["mi_clean_vs_attacked"] == pytest.approx(0.0, abs=1e-6) and out["tv_clean_to_attacked"] == pytest.approx(0.75)
    shifted = eval_split_stats(_one_hot([0, 0, 0, 0], 4), attacked, labels)  # attack moves prompt 1 -> all
    assert 0 < shifted["mi_clean_vs_attacked"] <= math.log(2)


# ---------------------------------------------------------------- router input scale and clean routing
def test_input_scale_one_reproduces_todays_logits_and_scale_multiplies_them(tiny):
    f = torch.nn.functional.normalize(torch.randn(5, tiny.visual.output_dim), dim=-1)
    torch.manual_seed(0)
    today = Router(tiny.visual.output_dim, 4)
    torch.manual_seed(0)
    scaled_one = Router(tiny.visual.output_dim, 4, input_scale=1.0)
    torch.manual_seed(0)
    scaled = Router(tiny.visual.output_dim, 4, input_scale=100.0)
    assert torch.equal(today.logits(f), scaled_one.logits(f)) and torch.equal(today(f), scaled_one(f))
    assert torch.allclose(scaled.logits(f), 100 * today.logits(f), rtol=1e-5, atol=1e-6)  # zero bias: linear
    assert weight_entropy(scaled(f)).mean() < weight_entropy(today(f)).mean()
    with pytest.raises(ValueError, match="input scale"):
        Router(8, 4, input_scale=0)


def test_router_reads_given_features_and_nothing_else_changes(tiny):
    torch.manual_seed(0)
    learner = PromptLearner(tiny, CLASSNAMES, n_ctx=2, n_prompts=3)
    model = MixturePromptedCLIP(tiny, learner, Router(tiny.visual.output_dim, 3, input_scale=50.0)).eval()
    x, other = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        text = model.text_features()
        own = model(x, text_features=text)
        own_weights = model.last_weights
        with model.router_reads(model.encode_image(other)):
            routed = model(x, text_features=text)
            assert torch.allclose(model.last_weights, model.router(model.encode_image(other)))
        assert torch.equal(model(x, text_features=text), own)  # restored
    assert not torch.allclose(routed, own) and not torch.allclose(model.router(model.encode_image(other)), own_weights)
    with pytest.raises(ValueError, match="batch of 2"), model.router_reads(model.encode_image(other)):
        model(x[:2], text_features=text)


# ---------------------------------------------------------------- prompt initialisation apart
def test_orthogonal_contexts_are_orthogonal_with_random_norms():
    torch.manual_seed(0)
    ctx = orthogonal_contexts(torch.Size([4, 3, 16]))
    flat = ctx.reshape(4, -1)
    gram = flat @ flat.t()
    assert torch.allclose(gram - torch.diag(gram.diag()), torch.zeros(4, 4), atol=1e-6)
    assert ((flat.norm(dim=1) / (0.02 * math.sqrt(48))) - 1).abs().max() < 0.5
    with pytest.raises(ValueError, match="at least 5"):
        orthogonal_contexts(torch.Size([5, 2, 2]))


def test_template_contexts_put_each_phrase_before_the_class_name(tiny):
    torch.manual_seed(0)
    ctx = template_contexts(tiny, "a photo of a|a drawing of the|digit", 3, 4)
    words = PromptLearner(tiny, CLASSNAMES, ctx_init="a drawing of the").ctx[0].detach()
    assert torch.equal(ctx[1], words)  # 4 tokens fill the context
    digit = PromptLearner(tiny, CLASSNAMES, ctx_init="digit").ctx[0, 0].detach()
    assert torch.equal(ctx[2, 3], digit) and ctx[2, :3].std() < 0.05  # random tokens in front
    assert not torch.allclose(ctx[0], ctx[1])
    with pytest.raises(ValueError, match="2 \"\\|\"-separated phrases for 3"):
        template_contexts(tiny, "a|b", 3, 4)
    with pytest.raises(ValueError, match="more than N_CTX 2"):
        template_contexts(tiny, "a photo of a|b", 2, 2)
