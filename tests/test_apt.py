"""APT and the adversarial trainer base on a tiny CLIP and a tiny generated dataset.

Covers: one text-encoder pass per training step (onfly, constant) and
STEPS + 1 (perturbed), counted with a forward hook on the TextEncoder; the
training images stay in the eps ball and in [0, 1]; the perturbed mode
restores the prompt; the loss is finite and decreases; only the context
trains; the final evaluation writes a clean and a PGD record with their own
labels; APT's keys from YAML, overrides and train.py's aliases; the guards
(normalize in the data pipeline, eps as a fraction, unknown prompt mode).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ampt.api import TRAINER_REGISTRY, build_trainer
from ampt.config import setup_cfg
from ampt.errors import NonFiniteError, UserError
from ampt.evaluation.robust_accuracy import AttackSpec, accuracy_under_attack
from ampt.models import template_text_features
from ampt.results import RunResults
from ampt.utils.seed import set_random_seed

# The toy data, tiny CLIP and helpers moved to toys.py (fixtures: conftest.py); re-exported here
# under their old names for the modules that import them from test_apt.
from toys import (APT_DIGITS, COLOURS, COOP_DIGITS, REPO, SPLITS, TOY_SETS, AptToy, AptToyShapes,  # noqa: F401
                  _quiet, make_cfg, make_trainer, one_batch, pretrain_toy_clip, toy_env, write_toy_data)


def count_text_passes(trainer) -> List[int]:
    calls: List[int] = []
    trainer.model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


# ---------------------------------------------------------------- training step

@pytest.mark.parametrize("mode, expected", [("onfly", 1), ("constant", 1), ("perturbed", 4)])
def test_text_encoder_passes_per_step(toy_env, tmp_path, mode, expected):
    trainer = make_trainer(toy_env, tmp_path, adv_prompt=mode, steps=3)
    batch = one_batch(trainer)
    trainer.set_model_mode("train")
    if mode == "constant":
        trainer.constant_text_features()  # computed once, at the first step
    calls = count_text_passes(trainer)
    out = trainer.forward_backward(batch)
    assert len(calls) == expected
    assert set(out) == {"loss", "adv_acc"} and np.isfinite(out["loss"])
    calls.clear()
    trainer.forward_backward(batch)
    assert len(calls) == expected  # the same at every step (constant features are cached)


@pytest.mark.parametrize("mode", ["onfly", "constant", "perturbed"])
def test_training_images_in_eps_ball_and_prompt_restored(toy_env, tmp_path, mode):
    trainer = make_trainer(toy_env, tmp_path, adv_prompt=mode, eps=4, alpha=2, steps=3)
    batch = one_batch(trainer)
    images, labels = trainer.parse_batch_train(batch)
    seen = []
    attack = trainer.adversarial_images
    trainer.adversarial_images = lambda x, y, tf: seen.append((x, attack(x, y, tf))) or seen[-1][1]
    ctx_before = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.set_model_mode("train")
    trainer.forward_backward(batch)
    (clean, adv), = seen
    assert torch.equal(clean, images)
    assert (adv - clean).abs().max() <= 4 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - clean).abs().max() > 3 / 255  # the attack moved the pixels
    assert trainer.model.training, "the model's mode must be restored after the attack"
    # the prompt changed only by the optimizer step (perturbed mode restores its ascent)
    trainer.adversarial_images = attack
    ctx = trainer.model.prompt_learner.ctx.detach().clone()
    attack(images, labels, trainer.model.text_features())
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), ctx)
    assert not torch.equal(ctx, ctx_before)
    assert trainer.model.prompt_learner.ctx.grad is not None
    frozen = [n for n, p in trainer.model.named_parameters() if n != "prompt_learner.ctx" and p.grad is not None]
    assert frozen == []


def test_apt_loss_finite_and_decreasing(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path, opts=["OPTIM.LR", "0.1", "OPTIM.WARMUP_EPOCH", "-1"])
    batch = one_batch(trainer)
    trainer.set_model_mode("train")
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(12)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.03, losses


# ---------------------------------------------------------------- APT exactly as published

def saturated_batch(trainer):
    """A training batch whose first rows and columns are black (0) and white (1) pixels."""
    images, labels = trainer.parse_batch_train(one_batch(trainer))
    images = images.clone()
    images[:, :, :8] = 0.0
    images[:, :, -8:] = 1.0
    return images, labels


def apt_restated(model, images, labels, eps, alpha, steps, prompt_optim=None):
    """APT's published training PGD, re-stated: an unclamped delta, only x + delta is clamped.

    ``prompt_optim`` (APT's "perturbed" mode): SGD on the prompt, stepped on
    the same (negated) loss after each image step.
    """
    delta = torch.zeros_like(images).uniform_(-eps, eps)
    for _ in range(steps):
        adv = torch.clamp(images + delta, 0, 1).requires_grad_(True)
        loss = -F.cross_entropy(model(adv), labels)
        if prompt_optim is not None:
            prompt_optim.zero_grad()
        loss.backward()
        delta -= alpha * torch.sign(adv.grad)
        delta = torch.clamp(delta, -eps, eps).detach()
        if prompt_optim is not None:
            prompt_optim.step()
    return torch.clamp(images + delta, 0, 1).detach()


def test_training_attack_bit_identical_to_apt_update_on_saturated_pixels(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path, eps=8, alpha=3, steps=4)
    images, labels = saturated_batch(trainer)
    features = trainer.model.text_features().detach()
    torch.manual_seed(3)
    ours = trainer.adversarial_images(images, labels, features)
    trainer.model.eval()
    torch.manual_seed(3)
    theirs = apt_restated(lambda x: trainer.model(x, text_features=features), images, labels, 8 / 255, 3 / 255, 4)
    assert torch.equal(ours, theirs)
    edge = (images == 0) | (images == 1)
    assert not torch.equal(ours[edge], images[edge])  # the saturated pixels were attacked too


def ctx_at_each_text_pass(trainer, run) -> List[torch.Tensor]:
    """The prompt context seen by every text-encoder pass during ``run()``."""
    seen: List[torch.Tensor] = []
    handle = trainer.model.text_encoder.register_forward_pre_hook(
        lambda *_: seen.append(trainer.model.prompt_learner.ctx.detach().clone()))
    try:
        return run(), seen
    finally:
        handle.remove()


def test_perturbed_mode_is_apts_plain_gradient_step(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path, adv_prompt="perturbed", eps=4, steps=3,
                           opts=["ADV.TRAIN.PROMPT_ALPHA", "2.0"])
    images, labels = saturated_batch(trainer)
    learner = trainer.model.prompt_learner
    start = learner.ctx.detach().clone()
    torch.manual_seed(4)
    ours, ours_ctx = ctx_at_each_text_pass(trainer, lambda: trainer.adversarial_images(images, labels, None))
    assert torch.equal(learner.ctx.detach(), start)  # restored

    trainer.model.eval()
    optim = torch.optim.SGD(learner.parameters(), lr=2.0, momentum=0, weight_decay=0)
    torch.manual_seed(4)
    theirs, theirs_ctx = ctx_at_each_text_pass(trainer, lambda: apt_restated(
        trainer.model, images, labels, 4 / 255, trainer.budget.alpha / 255, 3, prompt_optim=optim))
    assert len(ours_ctx) == len(theirs_ctx) == 3
    assert not torch.equal(ours_ctx[1], ours_ctx[0])  # the prompt moved between attack steps
    for a, b in zip(ours_ctx, theirs_ctx):
        assert torch.equal(a, b)
    assert torch.equal(ours, theirs)


def test_constant_attack_prompt_is_apts_template(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path, adv_prompt="constant")
    assert trainer.CONSTANT_TEMPLATE == "a photo of a {}"
    expected = template_text_features(trainer.model.text_encoder, trainer.classnames, "a photo of a {}")
    assert torch.equal(trainer.constant_text_features()[0], expected[0])


# ---------------------------------------------------------------- config and guards

def test_apt_keys_from_yaml_overrides_and_aliases(toy_env, tmp_path):
    cfg = make_cfg(toy_env, tmp_path, eps=1, alpha=0.5, steps=2, adv_prompt="constant",
                   opts=["TRAINER.APT.N_CTX", "8", "TRAINER.APT.CSC", "True", "TRAINER.APT.CLASS_TOKEN_POSITION",
                         "middle", "ADV.TRAIN.PROMPT_ALPHA", "0.1"])
    assert (cfg.ADV.TRAIN.EPS, cfg.ADV.TRAIN.ALPHA, cfg.ADV.TRAIN.STEPS, cfg.ADV.TRAIN.PROMPT) == (1, 0.5, 2, "constant")
    assert (cfg.TRAINER.APT.N_CTX, cfg.TRAINER.APT.CSC, cfg.TRAINER.APT.CLASS_TOKEN_POSITION) == (8, True, "middle")
    assert cfg.TRAINER.APT.PREC == "fp32" and cfg.ADV.TRAIN.PROMPT_ALPHA == 0.1
    trainer = build_trainer(cfg)
    assert trainer.model.prompt_learner.ctx.shape == (1, 4, 8, 64)  # K, C (CSC), n_ctx, width
    assert trainer.budget.alpha == 0.5
    default = build_trainer(make_cfg(toy_env, tmp_path / "b", eps=4, opts=["ADV.TRAIN.ALPHA", "-1.0"]))
    assert default.budget.alpha == pytest.approx(8 / 3)  # APT: 2/3 eps


def test_coop_keys_accepted_by_apt_as_aliases(toy_env, tmp_path, caplog):
    """APT's scripts pass TRAINER.COOP.* to its APT trainer: read as TRAINER.APT.*, noted once."""
    yaml = tmp_path / "apt_style.yaml"
    yaml.write_text(APT_DIGITS.read_text() + "\n" + "\n".join([
        "TRAINER:", "  COOP:", "    PREC: fp32", "    CTX_INIT: ''"]) + "\n", encoding="utf-8")
    notes: List[str] = []
    root, backbone = toy_env
    args = argparse.Namespace(root=str(root), output_dir=str(tmp_path / "run"), trainer="APT", config_file=str(yaml),
                              dataset_config_file="", seed=1, eps=None, alpha=None, steps=None, adv_prompt=None,
                              opts=["TRAINER.COOP.N_CTX", "8", "TRAINER.COOP.CSC", "True",
                                    "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle", "DATASET.NAME", "AptToy",
                                    "MODEL.BACKBONE.NAME", str(backbone)])
    cfg = setup_cfg(args, TRAINER_REGISTRY.get("APT"), notes=notes)
    node = cfg.TRAINER.APT
    assert (node.N_CTX, node.CSC, node.CLASS_TOKEN_POSITION, node.PREC) == (8, True, "middle", "fp32")
    assert "COOP" not in cfg.TRAINER
    assert notes == ["TRAINER.COOP.* read as TRAINER.APT.* (the trainer's alias for APT-style command lines)"]
    with pytest.raises(KeyError, match="TRAINER.APT.N_CTXX"):  # an alias still checks the key
        make_cfg(toy_env, tmp_path, opts=["TRAINER.COOP.N_CTXX", "4"])
    coop = make_cfg(toy_env, tmp_path, trainer="CoOp", config=COOP_DIGITS, opts=["TRAINER.COOP.N_CTX", "4"])
    assert coop.TRAINER.COOP.N_CTX == 4  # CoOp owns its node: no alias


def test_guards(toy_env, tmp_path):
    with pytest.raises(ValueError, match="normalize"):
        make_trainer(toy_env, tmp_path, opts=["INPUT.TRANSFORMS", "['random_crop', 'normalize']"])
    with pytest.raises(ValueError, match="fraction"):
        make_cfg(toy_env, tmp_path, eps=0.0157)
    with pytest.raises(ValueError, match="onfly"):
        make_trainer(toy_env, tmp_path, adv_prompt="onfy")
    with pytest.raises(ValueError, match="STEPS"):
        make_trainer(toy_env, tmp_path, steps=0)


# ---------------------------------------------------------------- silent outcomes made visible

def test_autoattack_with_fewer_than_4_classes_refused_before_training(toy_env, tmp_path, monkeypatch):
    trainer = make_trainer(toy_env, tmp_path, dataset="AptToyShapes", opts=["ADV.TEST.ATTACK", "aa"])
    assert trainer.num_classes == 3
    monkeypatch.setattr(trainer, "run_epoch", lambda: pytest.fail("an epoch ran before the check"))
    with pytest.raises(UserError, match="ADV.TEST.ATTACK aa cannot test AptToyShapes.*at least 4 classes"):
        trainer.train()
    assert not (Path(trainer.output_dir) / "prompt_learner").exists()


def test_nan_weights_refused_not_scored_as_chance(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path)
    with torch.no_grad():
        trainer.model.prompt_learner.ctx.fill_(float("nan"))
    trainer.save_model(0, trainer.output_dir)
    with pytest.raises(NonFiniteError, match="prompt_learner.*NaN or Inf.*ctx"):
        trainer.load_model(trainer.output_dir, epoch=1)
    images, _ = trainer.parse_batch_train(one_batch(trainer))
    with pytest.raises(NonFiniteError, match="logits"):
        trainer.model_inference(images)
    spec = AttackSpec("pgd", eps=4, steps=1)
    with pytest.raises(NonFiniteError, match="logits"):
        accuracy_under_attack(trainer.model, trainer.test_loader, spec, trainer.num_classes, trainer.device)


# ---------------------------------------------------------------- run-to-run reproducibility

def test_two_seeded_runs_are_bit_identical(toy_env, tmp_path):
    """The demo's promise on one machine: the same seed gives the same weights and the same numbers."""
    outcomes = []
    for name in ("a", "b"):
        set_random_seed(1)
        trainer = build_trainer(make_cfg(toy_env, tmp_path / name, opts=["OPTIM.MAX_EPOCH", "1", "ADV.TEST.STEPS", "2"]))
        trainer.train()
        records = [(r["attack"], r["accuracy"]) for r in RunResults(trainer.output_dir).records]
        outcomes.append((trainer.model.prompt_learner.ctx.detach().clone(), records))
    assert torch.equal(outcomes[0][0], outcomes[1][0])
    assert outcomes[0][1] == outcomes[1][1]


# ---------------------------------------------------------------- final evaluation

def test_final_evaluation_records_clean_and_pgd(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path, opts=["OPTIM.MAX_EPOCH", "1", "ADV.TEST.STEPS", "3"])
    trainer.train()
    results = RunResults(trainer.output_dir)
    assert results.finished and results.run["train_eps"] == 4 and results.run["trainer"] == "APT"
    by_attack = {r["attack"]: r for r in results.records}
    assert set(by_attack) == {"clean", "pgd"}
    clean, pgd = by_attack["clean"], by_attack["pgd"]
    assert clean["label"] == "clean accuracy"
    assert pgd["label"] == "robust accuracy (PGD-3, eps 4/255)"
    assert (pgd["eps"], pgd["steps"], pgd["alpha"], pgd["prompt"], pgd["attack_prompt"]) == (4, 3, 1, "learned", "learned")
    assert clean["n_samples"] == pgd["n_samples"] == 12
    assert pgd["accuracy"] <= clean["accuracy"]
