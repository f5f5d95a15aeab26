"""The FAP family as in FAP's code (lionel-w2/FAP): the training attack's projection rule.

FAP's ``attack/pgd.py`` keeps the perturbation itself inside [-x, 1 - x]
(after the random start and after every step) and feeds ``x + delta``;
APT's trainer keeps an unclamped ``delta`` and feeds ``clamp(x + delta)``.
The FAP family's configs choose FAP's rule (``ADV.TRAIN.PROJECTION fap``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ampt.adversarial import TrainBudget
from test_apt import REPO, apt_restated, make_cfg, make_trainer, saturated_batch, toy_env, _quiet  # noqa: F401  (fixtures)

FAMILY = ("FAP", "AdvMaPLe", "AdvVLP", "AdvVP")


def fap_restated(model, images, labels, eps, alpha, steps, kl=False):
    """FAP's attack/pgd.py (l_inf), re-stated: delta kept in [-x, 1 - x]; TRADES' KL when ``kl``."""
    delta = torch.zeros_like(images).uniform_(-eps, eps)
    delta = torch.max(torch.min(delta, 1 - images), -images)
    delta.requires_grad = True
    for _ in range(steps):
        output = model(images + delta)
        if kl:
            loss = F.kl_div(F.log_softmax(output, dim=1), F.softmax(model(images), dim=1), reduction="batchmean")
        else:
            loss = F.cross_entropy(output, labels)
        loss.backward()
        d = torch.clamp(delta.detach() + alpha * torch.sign(delta.grad.detach()), min=-eps, max=eps)
        delta.data = torch.max(torch.min(d, 1 - images), -images)
        delta.grad.zero_()
    return (images + delta).detach()


@pytest.mark.parametrize("trainer_name", FAMILY)
def test_family_configs_choose_faps_projection_and_apts_keep_apts(toy_env, tmp_path, trainer_name):
    for config in sorted((REPO / "configs" / "trainers" / trainer_name).glob("*.yaml")):
        cfg = make_cfg(toy_env, tmp_path / config.stem, trainer=trainer_name, config=config)
        assert TrainBudget.from_cfg(cfg).projection == "fap", config
    for trainer_name in ("APT", "AMPT"):
        for config in sorted((REPO / "configs" / "trainers" / trainer_name).glob("*.yaml")):
            cfg = make_cfg(toy_env, tmp_path / config.stem, trainer=trainer_name, config=config)
            assert TrainBudget.from_cfg(cfg).projection == "apt", config


@pytest.mark.parametrize("trainer_name, loss", [("FAP", "fap"), ("AdvVLP", "ce")])
def test_training_attack_bit_identical_to_faps_update_on_saturated_pixels(toy_env, tmp_path, trainer_name, loss):
    config = REPO / "configs" / "trainers" / trainer_name / "digits.yaml"
    opts = ["TRAINER.ADVVLP.PROMPT_DEPTH_VISION", "2"] if trainer_name == "AdvVLP" else []  # the toy CLIP's 2 blocks
    trainer = make_trainer(toy_env, tmp_path, trainer=trainer_name, config=config, eps=8, alpha=3, steps=4, opts=opts)
    assert trainer.cfg.ADV.TRAIN.LOSS == loss
    images, labels = saturated_batch(trainer)
    features = trainer.model.text_features().detach()
    torch.manual_seed(3)
    ours = trainer.adversarial_images(images, labels, features)
    trainer.model.eval()
    model = lambda x: trainer.model(x, text_features=features)  # noqa: E731
    torch.manual_seed(3)
    theirs = fap_restated(model, images, labels, 8 / 255, 3 / 255, 4, kl=loss == "fap")
    assert torch.equal(ours, theirs)
    torch.manual_seed(3)
    apt_rule = apt_restated(model, images, labels, 8 / 255, 3 / 255, 4)
    edge = (images == 0) | (images == 1)
    assert not torch.equal(ours[edge], apt_rule[edge])  # the two rules differ at saturated pixels
    assert ours.min() >= 0 and ours.max() <= 1 and (ours - images).abs().max() <= 8 / 255 + 1e-7
