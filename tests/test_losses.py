"""ADV.TRAIN.LOSS: the trades and fap objectives against a direct computation, and the attack's inner loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ampt.adversarial as adversarial
from ampt.losses import TrainLoss, fap_loss, kl_attack_loss, trades_loss
from test_apt import make_trainer, one_batch, toy_env, _quiet  # noqa: F401  (fixtures)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean, adv = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    f_clean, f_adv = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    return clean, adv, f_clean, f_adv, torch.tensor([0, 1, 2, 3, 1])


def _kl_by_hand(adv, clean):  # sum_c p_clean (log p_clean - log p_adv), per sample
    p = clean.softmax(1)
    return (p * (p.log() - adv.log_softmax(1))).sum(1)


def test_trades_equals_direct_computation():
    clean, adv, _, _, y = _batch()
    loss, extra = trades_loss(clean, adv, y, beta=6.0)
    expected = F.cross_entropy(clean, y) + 6.0 * _kl_by_hand(adv, clean).mean()
    assert torch.allclose(loss, expected, atol=1e-6) and extra["kl"] > 0


def test_fap_equals_direct_computation():
    clean, adv, f_clean, f_adv, y = _batch(1)
    loss, _ = fap_loss(clean, adv, f_clean, f_adv, y, lam=1.5)
    cos = (f_clean * f_adv).sum(1) / (f_clean.norm(dim=1) * f_adv.norm(dim=1))
    expected = F.cross_entropy(clean, y) + 1.5 * (_kl_by_hand(adv, clean) * (cos + 1)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_unknown_loss_and_negative_weight_refused(toy_env, tmp_path):
    with pytest.raises(ValueError, match='ADV.TRAIN.LOSS "kl" is not one of ce, trades, fap'):
        make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", "kl"])
    with pytest.raises(ValueError, match="ADV.TRAIN.FAP_LAMBDA must be >= 0"):
        make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", "fap", "ADV.TRAIN.FAP_LAMBDA", "-1"])


@pytest.mark.parametrize("name", ["ce", "trades", "fap"])
def test_attack_maximises_the_configured_inner_loss(toy_env, tmp_path, monkeypatch, name):
    trainer = make_trainer(toy_env, tmp_path, opts=["ADV.TRAIN.LOSS", name])
    assert trainer.run_metadata()["train_loss"] == name
    assert ("fap_lambda" in trainer.run_metadata()) == (name == "fap")
    seen = []
    real = adversarial.apt_pgd  # the training attack: APT's update
    monkeypatch.setattr(adversarial, "apt_pgd", lambda *a, **k: seen.append(k["loss"]) or real(*a, **k))
    batch = one_batch(trainer)
    images = batch["img"]
    with torch.no_grad():  # before the step changes the prompt
        text = trainer.model.text_features()
        clean = trainer.model(images, text_features=text)
        adv = trainer.model(images.flip(0), text_features=text)
    trainer.set_model_mode("train")
    summary = trainer.forward_backward(batch)
    assert len(seen) == 1 and torch.isfinite(torch.tensor(summary["loss"]))
    if name == "ce":
        assert seen[0] is None  # APT's mean cross-entropy
        return
    expected = kl_attack_loss(clean)(adv, None)
    assert torch.allclose(seen[0](adv, None), expected, atol=1e-5)
    assert TrainLoss(name).attack_loss(clean) != "ce"
