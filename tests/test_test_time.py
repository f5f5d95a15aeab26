"""Test-time prompt tuning (ampt.tta): the loop resets per image, the losses are the papers', the adaptive
attack's gradient goes through the unrolled step, and records keep the two threat models apart."""
from __future__ import annotations


import pytest
import torch

from ampt.attacks.naming import column_name, parse_column
from ampt.errors import UserError
from ampt.models import DeepPromptCLIP, DeepPromptLearner, DeepTextLayout, PromptedCLIP, PromptLearner
from ampt.models.parts import adaptive_label, part_kinds
from ampt.tta import TTA_REGISTRY, TestTimeAdapted, parse_settings, settings_text
from ampt.tta.adamw import AdamW
from ampt.tta.entropy import confident_views, marginal_entropy, pointwise_entropy
from ampt.tta.token_stats import block_inputs
from ampt.tta.views import augmented_views

NAMES = ["cat", "dog", "small_bird"]


@pytest.fixture(scope="module")
def tiny(tiny_demo_shape):
    return tiny_demo_shape


def _apt(tiny):
    torch.manual_seed(0)
    return PromptedCLIP(tiny, PromptLearner(tiny, NAMES, n_ctx=4, n_prompts=1)).eval()


def _deep(tiny):
    layout = DeepTextLayout(tiny, NAMES, 2, "a photo of a")
    torch.manual_seed(0)
    return DeepPromptCLIP(tiny, DeepPromptLearner(64, 96, "independent", 2, 2, 2, 3, layout.initial_ctx()),
                          layout).eval()


def _images(n=2):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _method(name, options="views=6,select=0.34"):
    return TTA_REGISTRY.get(name)(parse_settings(name, options))


def _fixed_views(adapted):
    """Views that depend only on the image (the same draws whichever image came before)."""
    adapted._draw_views = lambda image: augmented_views(image, 6, torch.Generator().manual_seed(7))
    adapted.views.fn = adapted._draw_views


@pytest.mark.parametrize("name", ["tapt", "rtpt"])
def test_prompts_adapt_per_image_and_reset(tiny, name):
    model = _apt(tiny)
    run_prompts = {n: p.detach().clone() for n, p in model.named_parameters() if "prompt_learner" in n}
    adapted = TestTimeAdapted(model, _method(name, "views=6,select=0.34,quantize=false"))
    _fixed_views(adapted)
    a, b = _images(2)
    both = adapted(torch.stack([a, b]))
    after_both = adapted.last_prompts
    alone = adapted(b.unsqueeze(0))
    for n, p in model.named_parameters():  # the run's prompts are never changed
        if n in run_prompts:
            assert torch.equal(p, run_prompts[n])
    # b's adaptation started from the run's prompts whether or not a came first: bit-identical
    assert all(torch.equal(after_both[n], adapted.last_prompts[n]) for n in after_both)
    assert torch.equal(both[1:], alone)
    assert any(not torch.equal(after_both[n], run_prompts[n]) for n in after_both)  # and it moved them


def test_adamw_is_torchs():
    torch.manual_seed(0)
    p = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(3)]
    reference = torch.nn.Parameter(p.clone())
    optim = torch.optim.AdamW([reference], lr=5e-3)
    ours, state = {"p": p.clone()}, AdamW(lr=5e-3)
    for g in grads:
        reference.grad = g.clone()
        optim.step()
        ours = state.step(ours, [g])
        torch.testing.assert_close(ours["p"], reference.detach(), rtol=1e-6, atol=1e-7)


def test_entropies_and_selection_by_hand():
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    p = logits.softmax(1)
    h = -(p * p.log()).sum(1)
    kept = confident_views(logits, 0.3)
    assert torch.equal(kept, torch.argsort(h)[:3])
    mean_p = p[kept].mean(0)
    torch.testing.assert_close(marginal_entropy(logits[kept]), -(mean_p * mean_p.log()).sum())
    torch.testing.assert_close(pointwise_entropy(logits[kept]), h[kept].mean())


def test_tapt_loss_is_entropy_plus_weighted_alignment(tiny, tmp_path):
    from ampt.tta import TestTimeContext

    model = _deep(tiny)
    method = _method("tapt", "views=6,select=0.34,align_weight=100,align_to=9")
    images = _images(4)
    info = method.prepare(model, TestTimeContext(tmp_path, "0" * 64, torch.device("cpu"), lambda: iter([images])))
    assert method.token_layers == range(0, 2) and "image blocks 0..1" in info["alignment"]  # 3 blocks: range(0, 3 - 1)
    assert (tmp_path / "test_time").is_dir() and len(list((tmp_path / "test_time").iterdir())) == 1
    # the reference: mean and sample variance over the training images of each block's input tokens
    with block_inputs(model, range(0, 2)) as tokens:
        model.encode_image(images)
    for (mean, var), t in zip(method.reference, tokens):
        torch.testing.assert_close(mean, t.mean(0))
        torch.testing.assert_close(var, t.var(0, unbiased=True))
    views = augmented_views(_images(1)[0], 6, torch.Generator().manual_seed(0))
    with block_inputs(model, method.token_layers) as tokens, torch.no_grad():
        logits = model(views)
    kept = confident_views(logits, 0.34)
    expected = marginal_entropy(logits[kept])
    for t, (ref_mean, ref_var) in zip(tokens, method.reference):
        sel = t[kept]
        expected = expected + 100 / 3 * (0.5 * (sel.mean(0) - ref_mean).abs().mean()
                                         + 0.5 * (sel.var(0, unbiased=False) - ref_var).abs().mean())
    torch.testing.assert_close(method.loss(logits, tokens), expected)
    cached = _method("tapt", "views=6,select=0.34")
    cached.prepare(model, TestTimeContext(tmp_path, "0" * 64, torch.device("cpu"), lambda: iter([])))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cached.reference, method.reference))  # read back, not recomputed


def test_tapt_alignment_is_off_for_text_prompt_models(tiny, tmp_path):
    from ampt.tta import TestTimeContext

    method = _method("tapt")
    info = method.prepare(_apt(tiny), TestTimeContext(tmp_path, "0" * 64, torch.device("cpu"), lambda: iter([])))
    assert method.reference is None and method.token_layers is None and "inactive" in info["alignment"]


def test_rtpt_reliability_weights_by_hand():
    method = _method("rtpt", "views=5,topk=2,temperature=0.5")
    features = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    sim = features @ features.T
    r = torch.stack([torch.cat([sim[i, :i], sim[i, i + 1:]]).topk(2).values.mean() for i in range(5)])
    torch.testing.assert_close(method.reliability_weights(features), torch.softmax(r / 0.5, dim=0))


@pytest.mark.parametrize("which", ["text prompts", "deep prompts"])
def test_adaptive_gradient_equals_finite_differences_through_the_unrolled_step(tiny, tmp_path, monkeypatch, which):
    """Adam's first step is lr g / (|g| + eps), almost lr sign(g): with eps 1e-8 its derivative is ~0 and the
    function has kinks where a g_j changes sign. With eps 1 the step is smooth, so a finite difference checks
    the unrolled gradient, and the step's part of it is large enough to see. (TAPT's alignment is an L1
    distance: its gradient, a sign, jumps, and so do the adapted prompts; it is off here.)"""
    import functools
    import ampt.tta.adapted as adapted_module
    from ampt.tta import TestTimeContext

    monkeypatch.setattr(adapted_module, "AdamW", functools.partial(AdamW, eps=1.0))
    model = _apt(tiny) if which == "text prompts" else _deep(tiny)
    # one view (the image): no selection boundary for the finite difference to cross
    method = _method("tapt", "views=1,lr=0.5,align_weight=0")
    method.prepare(model, TestTimeContext(tmp_path, "1" * 64, torch.device("cpu"), lambda: iter([_images(3)])))
    adapted = TestTimeAdapted(model, method)
    x = _images(1)

    def f(inp):
        return adapted(inp)[:, 1].sum()

    xi = x.clone().requires_grad_(True)
    f(xi).backward()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    h = 1e-3
    finite = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    torch.testing.assert_close((xi.grad * direction).sum(), finite, rtol=1e-2, atol=1e-3)
    # the step's part: the prediction's gradient with the adapted prompts held fixed is another gradient
    adapted(x)
    xf = x.clone().requires_grad_(True)
    torch.func.functional_call(model, adapted.last_prompts, (xf,))[:, 1].sum().backward()
    assert (xf.grad - xi.grad).norm() > 0.05 * xi.grad.norm()


def test_declared_parts_and_labels(tiny):
    adapted = TestTimeAdapted(_apt(tiny), _method("rtpt"))
    kinds = part_kinds(adapted)
    assert {"test_time", "random", "non_differentiable"} <= set(kinds)  # the loop, its views, R-TPT's 8-bit rounding
    assert adaptive_label(kinds, bpda=True, eot_iter=4) == "through-adaptation+bpda+eot"
    assert adaptive_label(part_kinds(_apt(tiny)), bpda=False, eot_iter=1) == "none"  # the non-adaptive attack's model
    assert "non_differentiable" not in part_kinds(TestTimeAdapted(_apt(tiny), _method("tapt")))


def test_settings_and_columns():
    assert parse_settings("tapt", "")["lr"] == 5e-4 and parse_settings("rtpt", "")["lr"] == 5e-3
    assert settings_text(parse_settings("tapt", "views=8")).startswith("align_from=0,align_to=9,align_weight=100,")
    with pytest.raises(UserError, match="valid: align_from") as err:
        parse_settings("tapt", "view=8")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="Valid names: rtpt, tapt"):
        parse_settings("tpt", "")
    base = {"attack": "pgd", "eps": 4, "steps": 100}
    assert column_name({**base, "test_time": "tapt", "test_time_threat": "non-adaptive"}) == "pgd-100@4/tapt"
    assert column_name({**base, "test_time": "tapt", "test_time_threat": "adaptive"}) == "pgd-100@4/tapt-adaptive"
    assert column_name({"attack": "clean", "test_time": "rtpt"}) == "clean/rtpt"
    parsed = parse_column("pgd-10+eot4@4/rtpt-adaptive")
    assert parsed["test_time"] == "rtpt" and parsed["adaptive"] and parsed["eot"] == 4
    assert parse_column("pgd@4")["test_time"] == ""


def test_a_model_without_prompts_is_refused_in_one_line(tiny):
    with pytest.raises(UserError, match="needs learned prompts") as err:
        TestTimeAdapted(PromptedCLIP(tiny, None), _method("tapt"))
    assert "\n" not in str(err.value)
