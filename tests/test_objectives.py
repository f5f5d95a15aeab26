"""The objectives package: each term against a hand computation, composition, declared features, refusals.

Hand computations use plain tensor operations, not the package's helpers.
The trainer-level tests run one real training step of APT (text prompt),
FAP (deep prompts), AdvVP (visual prompt) and AMPT on the tiny CLIP.
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import ampt.trainer_base.adversarial as adversarial
from ampt.api import TRAINER_REGISTRY, build_trainer
from ampt.config import get_cfg_default, setup_cfg
from ampt.engine.run_config import config_changes
from ampt.errors import UserError
from ampt.models import PromptedCLIP, PromptLearner, template_text_features
from ampt.objectives import OBJECTIVE_REGISTRY, FrozenZeroShot, Objective, TrainingObjective, TrainingStep
from ampt.objectives.expression import parse_expression
from test_apt import REPO, make_trainer, one_batch, toy_env, _quiet  # noqa: F401  (fixtures)

TERMS = OBJECTIVE_REGISTRY.registered_names()
CLASSES = ["red", "green", "blue"]


# ---------------------------------------------------------------- each term on a fixed batch

@pytest.fixture(scope="module")
def step(tiny):
    torch.manual_seed(0)
    model = PromptedCLIP(tiny, PromptLearner(tiny, CLASSES, n_ctx=2))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    adv = torch.rand(images.shape, generator=g)  # far from the clean images, so every divergence is far from 0
    s = TrainingStep(model, images, labels, zero_shot=FrozenZeroShot(model, CLASSES, "a photo of a {}."))
    s.text_features = model.text_features()
    s.adv_images, s.adv_features = adv, model.encode_image(adv)
    s.adv_logits = model.combine(s.adv_features, s.text_features)
    s.adv_router_weights = torch.softmax(torch.randn(4, 3, generator=g), dim=1)
    return s


def _cfg():
    return get_cfg_default()


def _kl(p_logits, q_logits):  # sum_c p (log p - log q) per row, by hand
    p = p_logits.softmax(1)
    return (p * (p.log() - q_logits.log_softmax(1))).sum(1)


def _by_hand(name, s):
    clean = s.model.combine(s.model.encode_image(s.images), s.text_features)
    adv, y = s.adv_logits, s.labels
    ce_adv = -adv.log_softmax(1).gather(1, y[:, None]).mean()
    ce_clean = -clean.log_softmax(1).gather(1, y[:, None]).mean()
    if name in ("ce", "tecoa"):
        return ce_adv
    if name == "trades":
        return ce_clean + 6.0 * _kl(clean, adv).mean()
    if name == "fap":
        f_clean = s.model.encode_image(s.images)
        cos = (f_clean * s.adv_features).sum(1) / (f_clean.norm(dim=1) * s.adv_features.norm(dim=1))
        return ce_clean + 1.5 * (_kl(clean, adv) * (cos + 1)).mean()
    if name == "clean_ce":
        return ce_clean
    if name == "clean_adv_kl":
        return _kl(clean, adv).mean()
    if name == "router_balance":
        mean = s.adv_router_weights.mean(0)
        return math.log(3) + (mean * mean.log()).sum()
    if name == "zs_kl":
        text = template_text_features(s.model.text_encoder, CLASSES, "a photo of a {}.")[0]
        frozen = s.model.logit_scale.exp() * F.normalize(s.model.image_encoder(s.model.normalizer(s.adv_images)), dim=1) @ text.t()
        return _kl(frozen, adv).mean()
    if name == "mart":
        p_adv, p_clean = adv.softmax(1), clean.softmax(1)
        others = p_adv.clone()
        others[torch.arange(4), y] = -1
        runner_up = others.argmax(1)
        bce = ce_adv - torch.log(1.0001 - p_adv[torch.arange(4), runner_up] + 1e-12).mean()
        kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(1)
        return bce + 6.0 * (kl * (1.0000001 - p_clean[torch.arange(4), y])).mean()
    if name == "renyi":
        p, q = clean.softmax(1), adv.softmax(1)
        return (torch.log((p ** 2.5 * q ** (1 - 2.5)).sum(1)) / 1.5).mean()
    if name == "text_l1":
        text = template_text_features(s.model.text_encoder, CLASSES, "a photo of a {}.")[0]
        return (s.text_features[0] - text).abs().mean()
    if name == "feature_l2":
        frozen = F.normalize(s.model.image_encoder(s.model.normalizer(s.images)), dim=1)
        return ((s.adv_features - frozen) ** 2).sum(1).mean()
    raise KeyError(name)


# DEFEAT's PerturbShield terms need DEFEAT's model: tests/test_defeat.py re-states them there.
# DEFEAT's and the prompt experts' terms need their own models: tests/test_defeat.py, tests/test_moe_prompts.py
OWN_MODEL = {"perturb_shield", "prompt_experts"}
HAND_COMPUTED = [n for n in TERMS if not OWN_MODEL & set(OBJECTIVE_REGISTRY.get(n).model_features)]


@pytest.mark.parametrize("name", HAND_COMPUTED)
def test_each_term_equals_a_hand_computation(step, name):
    step._cache.clear()
    value = OBJECTIVE_REGISTRY.get(name)(_cfg()).value(step)
    expected = _by_hand(name, step)
    assert value.dim() == 0 and torch.isfinite(value) and expected.abs() > 1e-3
    assert torch.allclose(value, expected, rtol=1e-5, atol=0), name


def test_clean_and_frozen_passes_run_at_most_once_per_step(step, tiny):
    step._cache.clear()
    calls = []
    hook = tiny.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        for name in ("trades", "fap", "clean_ce", "clean_adv_kl", "mart", "renyi", "zs_kl"):
            OBJECTIVE_REGISTRY.get(name)(_cfg()).value(step)
    finally:
        hook.remove()
    assert len(calls) == 1  # the clean images once; zs_kl reuses the adversarial features of a text-prompt model


# ---------------------------------------------------------------- composition and its errors

def test_weighted_sum_adds_weighted_terms_in_the_written_order(step):
    step._cache.clear()
    cfg = _cfg()
    cfg.ADV.TRAIN.LOSS = "fap + 0.5*zs_kl+ 2*mart"
    objective = TrainingObjective(cfg)
    total, logs = objective.loss(step)
    parts = {n: OBJECTIVE_REGISTRY.get(n)(cfg).value(step) for n in ("fap", "zs_kl", "mart")}
    assert torch.equal(total, parts["fap"] + 0.5 * parts["zs_kl"] + 2 * parts["mart"])
    assert {"fap", "zs_kl", "mart", "clean_ce", "fap_term"} <= set(logs)
    assert objective.expression == "fap+0.5*zs_kl+2*mart" and objective.attack_name == "fap"
    meta = objective.metadata()
    assert meta["train_loss"] == "fap+0.5*zs_kl+2*mart" and meta["fap_lambda"] == 1.5 and meta["mart_beta"] == 6.0
    assert meta["objective"]["terms"] == [{"name": "fap", "weight": 1.0, "fap_lambda": 1.5},
                                          {"name": "zs_kl", "weight": 0.5, "zs_kl_input": "adversarial"},
                                          {"name": "mart", "weight": 2.0, "mart_beta": 6.0}]
    assert meta["objective"]["attack_loss"] == "fap"


@pytest.mark.parametrize("expression, message", [
    ("ce+zs_lk", 'Unknown loss term "zs_lk". Did you mean "zs_kl"?'),
    ("ce+-1*zs_kl", 'the weight -1 must be a finite number >= 0'),
    ("ce+abc*zs_kl", 'the weight "abc" is not a number'),
    ("ce+zs_kl+ce", 'names the term "ce" twice'),
    ("ce++zs_kl", "has an empty term"),
    ("", "ADV.TRAIN.LOSS is empty"),
    ("ce+nan*zs_kl", "must be a finite number >= 0"),
])
def test_bad_expressions_are_one_line(expression, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")) as err:
        parse_expression(expression, TERMS)
    assert "\n" not in str(err.value) and "ADV.TRAIN.LOSS" in str(err.value)


def test_attack_loss_is_the_first_terms_unless_set():
    cfg = _cfg()
    cfg.ADV.TRAIN.LOSS = "zs_kl+ce"
    with pytest.raises(UserError, match='the first term of ADV.TRAIN.LOSS "zs_kl" declares no attack loss: set '
                                        "ADV.TRAIN.ATTACK_LOSS to one of"):
        TrainingObjective(cfg)
    cfg.ADV.TRAIN.ATTACK_LOSS = "trades"
    objective = TrainingObjective(cfg)
    assert objective.attack_name == "trades" and objective.attack_needs_clean
    assert objective.metadata()["objective"]["attack_loss_settings"] == {"trades_beta": 6.0}
    cfg.ADV.TRAIN.ATTACK_LOSS = "trade"
    with pytest.raises(UserError, match='ADV.TRAIN.ATTACK_LOSS: Unknown loss term "trade". Did you mean "trades"?'):
        TrainingObjective(cfg)


def test_term_keys_count_as_settings_on_resume():
    old, new = _cfg(), _cfg()
    new.ADV.OBJECTIVE.MART.BETA = 3.0
    new.ADV.TRAIN.LOSS = "ce+zs_kl"
    assert config_changes(old, new) == ["ADV.OBJECTIVE.MART.BETA: 6.0 -> 3.0", "ADV.TRAIN.LOSS: 'ce' -> 'ce+zs_kl'"]


# ---------------------------------------------------------------- on every kind of prompt model

ZOO_CONFIGS = {"APT": "APT", "FAP": "FAP", "AdvVP": "AdvVP", "AMPT": "AMPT", "MoEAdvVLP": "MoEAdvVLP"}
TRAINABLE = {"APT": "prompt_learner.", "FAP": "prompt_learner.", "AdvVP": "visual_prompt.", "AMPT": "",
             "MoEAdvVLP": "prompt_learner."}


FIT_TOY_TOWER = {"MoEAdvVLP": ["TRAINER.MOEADVVLP.PROMPT_DEPTH_VISION", "2"]}  # the toy CLIP's 2 image blocks


def _make(toy_env, tmp_path, trainer, loss, *opts):
    return make_trainer(toy_env, tmp_path, trainer=trainer, config=REPO / "configs" / "trainers" / trainer / "digits.yaml",
                        opts=["ADV.TRAIN.LOSS", loss, *FIT_TOY_TOWER.get(trainer, []), *opts])


def _grad_check(trainer):
    trainer.set_model_mode("train")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.forward_backward(one_batch(trainer))
    assert math.isfinite(summary["loss"])
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None and torch.equal(before[name], p.detach()), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    return summary


def _supported(trainer_name, term):
    needs = OBJECTIVE_REGISTRY.get(term).model_features
    if "perturb_shield" in needs:
        return trainer_name == "DEFEAT"
    if "prompt_experts" in needs:
        return trainer_name == "MoEAdvVLP"
    if "router_weights" in needs:
        return trainer_name in ("AMPT", "MoEAdvVLP")
    if "learned_image_features" in needs:
        return trainer_name in ("FAP", "AdvVP", "MoEAdvVLP")
    return True


@pytest.mark.parametrize("trainer_name", sorted(ZOO_CONFIGS))
def test_every_term_trains_only_trainable_parameters_of_every_prompt_model(toy_env, tmp_path, trainer_name):
    for term in TERMS:
        loss = f"ce+{term}" if term not in ("ce", "tecoa") else term
        if not _supported(trainer_name, term):
            with pytest.raises(UserError, match=f'loss term "{term}" needs') as err:
                _make(toy_env, tmp_path / term, trainer_name, loss)
            assert "\n" not in str(err.value)
            continue
        trainer = _make(toy_env, tmp_path / term, trainer_name, loss)
        summary = _grad_check(trainer)
        if term not in ("ce", "tecoa"):
            assert term in summary, (trainer_name, term, summary)


def test_ampt_accepts_adv_train_loss_and_adds_its_own_terms(toy_env, tmp_path):
    trainer = _make(toy_env, tmp_path, "AMPT", "trades", "TRAINER.AMPT.CLEAN_CE_WEIGHT", "0.5",
                    "TRAINER.AMPT.BALANCE_WEIGHT", "0.1")
    meta = trainer.run_metadata()
    assert meta["train_loss"] == "trades+0.5*clean_ce+0.1*router_balance" and meta["trades_beta"] == 6.0
    summary = _grad_check(trainer)
    assert {"trades", "clean_ce", "router_balance", "router_entropy"} <= set(summary)
    with pytest.raises(UserError, match="which the trainer's own weight keys add too"):
        _make(toy_env, tmp_path / "twice", "AMPT", "ce+clean_ce", "TRAINER.AMPT.CLEAN_CE_WEIGHT", "0.5")


@pytest.mark.parametrize("name", ["ce", "trades", "fap", "clean_adv_kl"])
def test_attack_maximises_the_configured_inner_loss(toy_env, tmp_path, monkeypatch, name):
    trainer = make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", name])
    assert trainer.run_metadata()["train_loss"] == name
    assert ("fap_lambda" in trainer.run_metadata()) == (name == "fap")
    seen = []
    real = adversarial.apt_pgd  # the training attack: APT's update
    monkeypatch.setattr(adversarial, "apt_pgd", lambda *a, **k: seen.append(k["loss"]) or real(*a, **k))
    batch = one_batch(trainer)
    images, labels = trainer.parse_batch_train(batch)
    with torch.no_grad():  # before the step changes the prompt
        text = trainer.model.text_features()
        clean = trainer.model(images, text_features=text)
        adv = trainer.model(images.flip(0), text_features=text)
    trainer.set_model_mode("train")
    summary = trainer.forward_backward(batch)
    assert len(seen) == 1 and math.isfinite(summary["loss"])
    if name == "ce":
        expected = F.cross_entropy(adv, labels)
    else:
        expected = _kl(clean, adv).sum()
    assert torch.allclose(seen[0](adv, labels), expected, atol=1e-5)


def test_perturbed_prompt_with_a_clean_reading_attack_loss_is_refused(toy_env, tmp_path):
    with pytest.raises(UserError, match='attack loss "trades" .* does not support: use PROMPT onfly or constant'):
        make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", "trades", "ADV.TRAIN.PROMPT", "perturbed"])


# ---------------------------------------------------------------- an attack loss PGD cannot climb

class _ArgmaxErrors(Objective):
    """An attack loss with no gradient w.r.t. the image: the number of misclassified images."""

    name = "argmax_errors"
    has_inner = True

    def value(self, step):
        return F.cross_entropy(step.adv_logits, step.labels)

    def inner(self, step):
        return lambda logits, labels: (logits.argmax(1) != labels).float().sum()


@pytest.fixture
def argmax_term():
    OBJECTIVE_REGISTRY.register(_ArgmaxErrors, name=_ArgmaxErrors.name)
    yield _ArgmaxErrors.name
    OBJECTIVE_REGISTRY._obj_map.pop(_ArgmaxErrors.name)


def test_a_non_differentiable_attack_loss_is_refused_before_training(toy_env, tmp_path, argmax_term):
    trainer = make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", argmax_term, "OPTIM.MAX_EPOCH", "1"])
    with pytest.raises(UserError, match='the training attack\'s loss "argmax_errors" gives no gradient w.r.t. the '
                                        "image, so PGD cannot move the pixels"):
        trainer.train()
    assert not (tmp_path / "run" / "prompt_learner").exists()  # refused before any epoch


def test_coop_trains_any_sum_on_clean_images(toy_env, tmp_path):
    coop = REPO / "configs" / "trainers" / "CoOp" / "digits.yaml"
    trainer = make_trainer(toy_env, tmp_path, trainer="CoOp", config=coop, opts=["ADV.TRAIN.LOSS", "ce+zs_kl"])
    assert trainer.run_metadata()["train_loss"] == "ce+zs_kl" and "attack_loss" not in trainer.run_metadata()["objective"]
    summary = _grad_check(trainer)
    assert summary["zs_kl"] > 0 and math.isclose(summary["loss"], summary["ce"] + summary["zs_kl"], rel_tol=1e-5)
    with pytest.raises(UserError, match="CoOp trains on clean images, without a training attack"):
        make_trainer(toy_env, tmp_path / "b", trainer="CoOp", config=coop, opts=["ADV.TRAIN.ATTACK_LOSS", "ce"])
    with pytest.raises(UserError, match='loss term "router_balance" needs router_weights'):
        make_trainer(toy_env, tmp_path / "c", trainer="CoOp", config=coop, opts=["ADV.TRAIN.LOSS", "ce+router_balance"])
