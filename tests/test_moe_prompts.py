"""MoEAdvVLP's mixture-of-experts deep prompts: equal experts are AdvVLP, the gate routes per image, bad input refused."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode as CN

from ampt.api import TRAINER_REGISTRY
from ampt.errors import UserError
from ampt.models import DeepPromptCLIP, DeepPromptLearner, DeepTextLayout, PromptedCLIP, template_text_features
from ampt.models.moe_prompts import (AnchoredPromptGate, AnchorSettings, MoEDeepPromptCLIP, MoEDeepPromptLearner,
                                     PromptGate)
from ampt.objectives import OBJECTIVE_REGISTRY, TrainingStep

MoEAdvVLP = TRAINER_REGISTRY.get("MoEAdvVLP")  # the plug-in as loaded (trainers/moe_prompts.py)
check_moe_cfg = sys.modules[MoEAdvVLP.__module__].check_moe_cfg
NAMES = ["cat", "dog", "small_bird"]
TEXT_W, VISION_W = 64, 96  # the demo's tiny CLIP: text 64 x 2 blocks, vision 96 x 3 blocks


@pytest.fixture(scope="module")
def tiny(tiny_demo_shape):
    return tiny_demo_shape


def _moe(tiny, k=3, depth_text=2, depth_vision=3, gate="token_softmax", names=NAMES, coupling="independent",
         anchor=None):
    layout = DeepTextLayout(tiny, names, 2 if depth_text else 0, "a photo of a")
    torch.manual_seed(0)
    learner = MoEDeepPromptLearner(TEXT_W, VISION_W, k, 2, 2, depth_text, depth_vision, gate, layout.initial_ctx(),
                                   coupling, anchor)
    return MoEDeepPromptCLIP(tiny, learner, layout).eval()


def _images(n=4):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("gate", ["token_softmax", "token_mean", "anchored"])
def test_equal_experts_are_the_independent_deep_prompts(tiny, gate):
    """Every expert of a block set to AdvVLP's token of that block: whatever the gate says, AdvVLP's logits."""
    moe = _moe(tiny, gate=gate)
    layout = DeepTextLayout(tiny, NAMES, 2, "a photo of a")
    plain = DeepPromptCLIP(tiny, DeepPromptLearner(TEXT_W, VISION_W, "independent", 2, 2, 2, 3,
                                                   layout.initial_ctx()), layout).eval()
    with torch.no_grad():
        moe.prompt_learner.ctx.copy_(plain.prompt_learner.ctx)
        moe.prompt_learner.vision[0].copy_(plain.prompt_learner.vision[0])
        for experts, token in zip(moe.prompt_learner.text_experts, plain.prompt_learner.text_deep):
            experts.copy_(token.expand_as(experts))
        for experts, token in zip(moe.prompt_learner.vision_experts, list(plain.prompt_learner.vision)[1:]):
            experts.copy_(token.expand_as(experts))
        x = _images()
        torch.testing.assert_close(moe(x), plain(x), rtol=1e-4, atol=1e-4)


def test_maple_coupling_is_maple_at_block_0_and_gated_experts_deeper(tiny):
    """Equal experts: MaPLe's deep prompts (image tokens of block 0 = Linear(ctx)), as AdvMaPLeOrig's learner."""
    moe = _moe(tiny, depth_text=2, depth_vision=2, coupling="maple")
    layout = DeepTextLayout(tiny, NAMES, 2, "a photo of a")
    plain = DeepPromptCLIP(tiny, DeepPromptLearner(TEXT_W, VISION_W, "maple", 2, 2, 2, 2, layout.initial_ctx()),
                           layout).eval()
    learner, reference = moe.prompt_learner, plain.prompt_learner
    assert len(learner.vision) == 0 and learner.to_vision is not None
    with torch.no_grad():
        learner.ctx.copy_(reference.ctx)
        learner.to_vision.load_state_dict(reference.to_vision[0].state_dict())
        learner.text_experts[0].copy_(reference.text_deep[0].expand_as(learner.text_experts[0]))
        learner.vision_experts[0].copy_(reference.to_vision[1](reference.text_deep[0]).expand_as(learner.vision_experts[0]))
        torch.testing.assert_close(moe(_images()), plain(_images()), rtol=1e-4, atol=1e-4)
    logits = moe(_images())
    logits.sum().backward()
    assert learner.to_vision.weight.grad.abs().sum() > 0 and learner.ctx.grad.abs().sum() > 0


def test_gate_routes_per_image_and_gradients_reach_experts_and_gates(tiny):
    moe = _moe(tiny)
    x = _images()
    logits = moe(x)
    weights = moe.router_weights()
    assert weights.shape == (4, 3) and torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert len(moe.gate_weights()) == 2 and (weights - weights.mean(dim=0)).abs().max() > 0  # per image
    assert [w.shape for w in moe.text_gate_weights] == [(3, 3)]  # one gated text block, one row per class
    assert {"router_weights", "learned_image_features"} <= moe.model_features()
    (logits.logsumexp(dim=1).sum() + weights[:, 0].sum()).backward()
    learner = moe.prompt_learner
    for p in [*learner.vision_experts, *learner.text_experts, *learner.vision_gates.parameters(),
              *learner.text_gates.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_a_class_prompt_does_not_depend_on_the_other_classes(tiny):
    """The text gate reads each prompt's own tokens (up to its EOT), so trimming to the longest prompt changes nothing."""
    with torch.no_grad():
        alone = _moe(tiny, names=["cat"]).text_features()[0, 0]
        together = _moe(tiny, names=["cat", "small_bird"]).text_features()[0, 0]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_visual_only_keeps_the_hand_written_text_prompt(tiny):
    moe = _moe(tiny, depth_text=0)
    plain = PromptedCLIP(tiny, None)
    with torch.no_grad():
        expected = template_text_features(plain.text_encoder, NAMES, "a photo of a {}.")
        torch.testing.assert_close(moe.text_features()[0], expected.reshape(len(NAMES), -1), rtol=1e-5, atol=1e-5)
    assert moe.word_prompts() == {} and moe(_images()).shape == (4, 3)


def test_gate_modes_give_rows_on_the_simplex():
    tokens = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    for mode in ("token_softmax", "token_mean"):
        w = PromptGate(8, 4, mode)(tokens, mask, torch.nn.LayerNorm(8))
        assert w.shape == (2, 4) and torch.allclose(w.sum(dim=1), torch.ones(2))
    # masked positions are not read
    changed = tokens.clone()
    changed[0, 3:] = 100.0
    gate = PromptGate(8, 4)
    torch.testing.assert_close(gate(tokens, mask)[0], gate(changed, mask)[0])


def _mmop_anchored_block(gate, tokens, ln, experts, routing, lam, tau_range, alpha_range):
    """MMoP's ResidualAttentionBlock_IVLP_MoE prompt, restated from its formulas (image side, [B, L, d] tokens)."""
    x = ln(tokens)
    cls_logits = x[:, 0] @ gate.linear.weight.T + gate.linear.bias
    mean_logits = x.mean(dim=1) @ gate.linear.weight.T + gate.linear.bias
    logits = {"cls": cls_logits, "token_mean": mean_logits, "hybrid": lam * cls_logits + (1 - lam) * mean_logits}[routing]
    tau = torch.nn.functional.softplus(gate.tau).clamp(*tau_range)
    w = torch.softmax(logits / tau, dim=-1)
    mixed = (w[:, :, None, None] * experts[None]).sum(dim=1)
    alpha = torch.nn.functional.softplus(gate.alpha).clamp(*alpha_range)
    return w, gate.base + alpha * (mixed - gate.base)


@pytest.mark.parametrize("routing", ["cls", "token_mean", "hybrid"])
def test_anchored_gate_is_mmops_block(routing):
    torch.manual_seed(1)
    experts, tokens, ln = torch.randn(5, 2, 8), torch.randn(3, 6, 8), torch.nn.LayerNorm(8)
    settings = AnchorSettings(routing=routing, hybrid_lambda=0.7, alpha_init=0.1, alpha_range=(0.0, 2.0),
                              tau_range=(0.7, 1.3))
    gate = AnchoredPromptGate(8, 5, experts.mean(dim=0), settings)
    assert torch.equal(gate.base, experts.mean(dim=0))  # MMoP: base prompt = the experts' mean at the start
    torch.testing.assert_close(torch.nn.functional.softplus(gate.alpha), torch.tensor([0.1]))
    torch.testing.assert_close(torch.nn.functional.softplus(gate.tau), torch.tensor([1.0]))
    with torch.no_grad():  # move off the start; tau beyond its range is clamped
        gate.tau.fill_(3.0)
        gate.alpha.fill_(0.4)
        gate.base.add_(0.3)
    w, prompt = gate.mix(tokens, None, ln, experts, torch.float32)
    w_ref, prompt_ref = _mmop_anchored_block(gate, tokens, ln, experts, routing, 0.7, (0.7, 1.3), (0.0, 2.0))
    torch.testing.assert_close(w, w_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(prompt, prompt_ref, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        gate.tau.fill_(0.2)  # softplus 0.80, inside the range: the temperature learns
    gate.mix(tokens, None, ln, experts, torch.float32)[1].pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())


def _step(model, x):
    step = TrainingStep(model, x, torch.tensor([0, 1, 2, 0]))
    step.text_features = model.text_features()
    step.adv_features = model.encode_image(x)
    step.adv_logits = model.combine(step.adv_features, step.text_features)
    step.adv_outputs = model.latest_outputs()
    return step


def test_gate_losses_are_mmops_and_read_the_adversarial_forward(tiny):
    """gate_balance / expert_diversity equal MMoP's load_balance_loss / expert_diversity_loss summed over blocks,
    and keep the step's adversarial forward whatever other forward a term runs."""
    moe = _moe(tiny, gate="anchored").train()
    x = _images()
    step = _step(moe, x)
    image_w, text_w = step.adv_outputs["image_gates"], step.adv_outputs["text_gates"]
    assert len(image_w) == 2 and len(text_w) == 1 and image_w[0].shape == (4, 3) and text_w[0].shape == (3, 3)
    expected_balance = sum(((w.mean(dim=0) - 1 / 3) ** 2).mean() for w in [*image_w, *text_w])
    expected_diversity = 0.0
    for experts in [*moe.prompt_learner.text_experts, *moe.prompt_learner.vision_experts]:
        flat = torch.nn.functional.normalize(experts.reshape(3, -1), dim=-1)
        sim = flat @ flat.T
        expected_diversity = expected_diversity + torch.stack([sim[0, 1], sim[0, 2], sim[1, 2]]).clamp(min=0).mean()
    balance = OBJECTIVE_REGISTRY.get("gate_balance")(None)
    diversity = OBJECTIVE_REGISTRY.get("expert_diversity")(None)
    value = balance.value(step)
    torch.testing.assert_close(value, expected_balance)
    torch.testing.assert_close(diversity.value(step), expected_diversity)
    step.clean_features()  # another forward (clean_ce's) before the term: the step's gates are unchanged
    torch.testing.assert_close(balance.value(step), value)
    (value + diversity.value(step)).backward()
    learner = moe.prompt_learner
    assert learner.vision_gates[0].linear.weight.grad.abs().sum() > 0
    assert learner.text_gates[0].linear.weight.grad.abs().sum() > 0
    assert learner.vision_experts[0].grad.abs().sum() > 0


def test_gate_losses_are_refused_on_a_model_without_experts(tiny):
    from ampt.config import get_cfg_default
    from ampt.objectives import TrainingObjective

    cfg = get_cfg_default()
    cfg.ADV.TRAIN.LOSS = "ce+0.1*gate_balance+0.1*expert_diversity"
    objective = TrainingObjective(cfg)
    objective.check_model(_moe(tiny, gate="anchored"))
    plain = PromptedCLIP(tiny, None)
    with pytest.raises(UserError, match='"gate_balance" needs prompt_experts') as err:
        objective.check_model(plain)
    assert "\n" not in str(err.value)


def _node(**values):
    cfg = CN()
    cfg.TRAINER = CN()
    MoEAdvVLP.add_config(cfg)
    cfg.TRAINER.MOEADVVLP.update(values)
    return cfg.TRAINER.MOEADVVLP


@pytest.mark.parametrize("values, message", [
    ({"N_EXPERTS": 0}, "N_EXPERTS must be >= 1"),
    ({"PROMPT_DEPTH_TEXT": 1, "PROMPT_DEPTH_VISION": 1}, "a gate needs deep prompts"),
    ({"PROMPT_DEPTH_TEXT": 9, "N_CTX_TEXT": 0, "PROMPT_DEPTH_VISION": 0}, "a gate needs deep prompts"),
    ({"GATE": "cls"}, "GATE"),
    ({"COUPLING": "fap"}, "COUPLING"),
    ({"GATE": "anchored", "ANCHOR": CN({"ROUTING": "attention", "HYBRID_LAMBDA": 0.7, "ALPHA_INIT": 1.0,
                                         "ALPHA_RANGE": [0.0, 2.0], "TAU_RANGE": [0.7, 1.3]})}, "ANCHOR.ROUTING"),
    ({"GATE": "anchored", "ANCHOR": CN({"ROUTING": "cls", "HYBRID_LAMBDA": 0.7, "ALPHA_INIT": 1.0,
                                         "ALPHA_RANGE": [0.0, 2.0], "TAU_RANGE": [1.3, 0.7]})}, "ANCHOR.TAU_RANGE"),
    ({"COUPLING": "maple", "PROMPT_DEPTH_TEXT": 2, "PROMPT_DEPTH_VISION": 3}, "maple needs"),
])
def test_bad_input_is_refused_in_one_line(values, message):
    with pytest.raises(UserError, match=message) as err:
        check_moe_cfg(_node(**values))
    assert "\n" not in str(err.value)
    check_moe_cfg(_node())  # the defaults (3 experts, depth 9) pass


def test_the_learner_refuses_too():
    with pytest.raises(UserError, match="at least 1 expert"):
        MoEDeepPromptLearner(TEXT_W, VISION_W, 0, 2, 2, 2, 3)
    with pytest.raises(UserError, match="gate needs deep prompts"):
        MoEDeepPromptLearner(TEXT_W, VISION_W, 3, 2, 2, 1, 1)
    with pytest.raises(UserError, match="maple coupling needs"):
        MoEDeepPromptLearner(TEXT_W, VISION_W, 3, 2, 1, 3, 3, coupling="maple")


@pytest.mark.parametrize("override, message", [
    (["TRAINER.MOEADVVLP.N_EXPERTS", "0"], "N_EXPERTS must be >= 1"),
    (["TRAINER.MOEADVVLP.PROMPT_DEPTH_TEXT", "1", "TRAINER.MOEADVVLP.PROMPT_DEPTH_VISION", "1"], "a gate needs deep"),
])
def test_train_py_refuses_before_any_data_in_one_line(tmp_path, monkeypatch, capsys, override, message):
    import train

    monkeypatch.setattr(sys, "argv", ["train.py", "--root", str(tmp_path / "data"), "--trainer", "MoEAdvVLP",
                                      "--config-file", "configs/trainers/MoEAdvVLP/digits.yaml",
                                      "--output-dir", str(tmp_path / "run"), *override])
    code, err = train.cli(), capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "prompt_learner").exists()  # refused at the config check, before training


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parent.parent / "configs" / "trainers" / "MoEAdvVLP").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_merge_and_pass_the_checks(config):
    from ampt.config import setup_cfg
    from ampt.objectives import TrainingObjective

    args = argparse.Namespace(config_file=str(config), dataset_config_file="", trainer="MoEAdvVLP", opts=[])
    cfg = setup_cfg(args, MoEAdvVLP)
    check_moe_cfg(cfg.TRAINER.MOEADVVLP)
    TrainingObjective(cfg)  # ADV.TRAIN.LOSS parses
    anchored = config.stem.endswith("_anchored")  # MMoP 7bcc367's MoEAdvIVLP ViT-B/32 config
    assert cfg.TRAINER.NAME == "MoEAdvVLP" and cfg.TRAINER.MOEADVVLP.N_EXPERTS == (5 if anchored else 3)
    if anchored:
        anchor = cfg.TRAINER.MOEADVVLP.ANCHOR
        assert cfg.TRAINER.MOEADVVLP.GATE == "anchored" and anchor.ROUTING == "token_mean"
        assert (anchor.ALPHA_INIT, list(anchor.ALPHA_RANGE), list(anchor.TAU_RANGE)) == (1.0, [0.0, 2.0], [0.7, 1.3])
        assert cfg.OPTIM.WARMUP_EPOCH == 5
    if config.stem.startswith("vit_b32"):  # MAPT 926889f's MoEAdvIVLP / MoEAdvMaPLe ViT-B/32 values
        node = cfg.TRAINER.MOEADVVLP
        assert (node.N_CTX_TEXT, node.N_CTX_VISION, node.PROMPT_DEPTH_TEXT, node.PROMPT_DEPTH_VISION) == (2, 2, 9, 9)
        assert (cfg.ADV.TRAIN.EPS, cfg.ADV.TRAIN.STEPS, cfg.ADV.TEST.STEPS) == (1.0, 2, 100)
        assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.0035, 100, 32)
        assert node.COUPLING == ("maple" if config.stem.endswith("_maple") else "independent")
