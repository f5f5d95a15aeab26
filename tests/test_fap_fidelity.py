"""The FAP family as in FAP's code (lionel-w2/FAP).

- The training attack's projection rule: FAP's ``attack/pgd.py`` keeps the
  perturbation itself inside [-x, 1 - x] (after the random start and after
  every step) and feeds ``x + delta``; APT's trainer keeps an unclamped
  ``delta`` and feeds ``clamp(x + delta)``. The FAP family's configs choose
  FAP's rule (``ADV.TRAIN.PROJECTION fap``).
- AdvMaPLe's learner: FAP's ``trainers/advmaple.py`` uses FAP's own prompt
  learner (image tokens learned at depths >= 1, projected to text); the
  ``AdvMaPLe`` trainer equals a re-statement of it (names, shapes, logits),
  and ``AdvMaPLeOrig`` keeps MaPLe's text-to-image coupling.
- AdvVP's evaluation: ``TRAINER.ADVVP.EVAL_FRAME False`` is FAP's
  ``zsrobust.py`` ``test()`` (the attack through the frame, the scores
  without); AdvVP's cross-dataset config is the one FAP's script trains.
"""
from __future__ import annotations

import argparse
import copy
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ampt.trainer_base.adversarial import TrainBudget
from ampt.api import TRAINER_REGISTRY
from ampt.attacks import build_attack
from ampt.config import setup_cfg
from ampt.evaluation.evaluated_prompt import prompt_model
from ampt.models import (CLIP_MEAN, CLIP_STD, LEARNED, DeepPromptCLIP, DeepPromptLearner, DeepTextLayout,
                         FixedTextFeatures, build_tiny_clip, save_clip_state_dict)
from ampt.models.clip_loader import clip
from test_apt import REPO, apt_restated, make_cfg, make_trainer, saturated_batch, toy_env, _quiet  # noqa: F401  (fixtures)

FAMILY = ("FAP", "AdvMaPLe", "AdvMaPLeOrig", "AdvVLP", "AdvVP")
DEMO_SHAPE = {"vision_width": 96, "vision_layers": 3}  # the demo's tiny CLIP: widths differ (text 64 x 2 blocks)


@pytest.fixture(scope="module")
def demo_shape(toy_env, tmp_path_factory):
    """(toy data root, untrained tiny CLIP of the demo's shape): the digits.yaml configs fit it."""
    return toy_env[0], save_clip_state_dict(build_tiny_clip(seed=0, **DEMO_SHAPE),
                                            tmp_path_factory.mktemp("fap_demo_shape") / "tiny.pt")


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


# ---------------------------------------------------------------- AdvMaPLe: FAP's learner, re-stated

class FapMultiModalPromptLearner(nn.Module):
    """FAP's ``MultiModalPromptLearner`` (trainers/advmaple.py lines 93-191, the same in trainers/fap.py),
    re-stated for any tower widths (FAP hard-codes the image width 768): ``proj`` maps the text tokens
    ``ctx`` to the first image block; ``compound_prompts_image[j]`` are the learned image tokens of block
    j + 1 and ``compound_prompt_projections[j]`` (copies of one Linear) map them to the text tokens there."""

    def __init__(self, text_width, vision_width, n_ctx, depth, ctx):
        super().__init__()
        self.proj = nn.Linear(text_width, vision_width)
        self.ctx = nn.Parameter(ctx.clone())
        self.compound_prompts_image = nn.ParameterList(
            [nn.Parameter(nn.init.normal_(torch.empty(n_ctx, vision_width), std=0.02)) for _ in range(depth - 1)])
        single = nn.Linear(vision_width, text_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])

    def forward(self):
        text_deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_image)]
        return self.ctx, self.proj(self.ctx), text_deep, list(self.compound_prompts_image)


def faps_name(ours):
    """Our learner's parameter name -> FAP's (``prompt_learner.`` dropped)."""
    for mine, theirs in (("to_vision.0.", "proj."), ("vision_deep.", "compound_prompts_image."),
                         ("to_text.", "compound_prompt_projections.")):
        if ours.startswith(mine):
            return theirs + ours[len(mine):]
    return ours


def fap_restated_logits(clip_model, learner, classnames, words, images):
    """FAP's CustomCLIP.forward (advmaple.py lines 204-214) with clip/model.py's MaPLe towers, fp32: deep
    prompt j replaces the n tokens after SOS (text) / the last n tokens (image) at the input of block j + 1
    while any are left; the first image block's are appended after the positional embedding."""
    ctx, shared, text_deep, vision_deep = learner()
    n, c, b = ctx.shape[0], len(classnames), images.shape[0]
    tokens = clip.tokenize([f"{words} {name.replace('_', ' ')}." for name in classnames])
    emb = clip_model.token_embedding(tokens)
    x = torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(c, -1, -1), emb[:, 1 + n:]], dim=1)
    x = (x + clip_model.positional_embedding).permute(1, 0, 2)
    counter = 0
    for index, block in enumerate(clip_model.transformer.resblocks):
        if index > 0 and counter < len(text_deep):
            x = torch.cat([x[:1], text_deep[counter].expand(c, -1, -1).permute(1, 0, 2), x[1 + n:]], dim=0)
            counter += 1
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    text = x[torch.arange(c), tokens.argmax(dim=-1)] @ clip_model.text_projection
    v = clip_model.visual
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    y = v.conv1((images - mean) / std)
    y = y.reshape(b, y.shape[1], -1).permute(0, 2, 1)
    y = torch.cat([v.class_embedding + torch.zeros(b, 1, y.shape[-1]), y], dim=1) + v.positional_embedding
    y = v.ln_pre(torch.cat([y, shared.expand(b, -1, -1)], dim=1)).permute(1, 0, 2)
    counter = 0
    for index, block in enumerate(v.transformer.resblocks):
        if index > 0 and counter < len(vision_deep):
            y = torch.cat([y[:y.shape[0] - n], vision_deep[counter].expand(b, -1, -1).permute(1, 0, 2)], dim=0)
            counter += 1
        y = block(y)
    image = v.ln_post(y.permute(1, 0, 2)[:, 0, :]) @ v.proj
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return clip_model.logit_scale.exp() * image @ text.t()


def assert_is_faps_learner(model, clip_model, classnames, words, depth):
    """Our model's learner has FAP's parameters (names mapped, shapes) and, loaded into FAP's, FAP's logits."""
    ours = model.prompt_learner
    n, text_width = ours.ctx.shape
    vision_width = clip_model.visual.conv1.weight.shape[0]
    theirs = FapMultiModalPromptLearner(text_width, vision_width, n, depth, torch.zeros(n, text_width))
    mapped = {faps_name(name): p.detach() for name, p in ours.named_parameters()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(mapped)
    with torch.no_grad():  # distinct deep tokens and projections, so a mis-indexed depth shows
        for p in [*theirs.compound_prompts_image, *theirs.compound_prompt_projections.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
        for name, p in ours.named_parameters():
            p.copy_(theirs.state_dict()[faps_name(name)])
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected = fap_restated_logits(clip_model, theirs, classnames, words, images)
        assert torch.allclose(model(images), expected, atol=1e-4), (model(images) - expected).abs().max()


def test_advmaple_is_faps_advmaple_learner(demo_shape, tmp_path):
    """FAP's advmaple.py learns image tokens at depths >= 1 and projects them to text: so does AdvMaPLe."""
    trainer = make_trainer(demo_shape, tmp_path, trainer="AdvMaPLe",
                           config=REPO / "configs" / "trainers" / "AdvMaPLe" / "digits.yaml")
    assert trainer.cfg.ADV.TRAIN.LOSS == "ce" and trainer.model.prompt_learner.coupling == "fap"
    clip_model = build_tiny_clip(seed=0, **DEMO_SHAPE)
    clip_model.load_state_dict(torch.load(demo_shape[1]))
    assert_is_faps_learner(trainer.model, clip_model, trainer.classnames, "a photo of a", depth=2)


def test_faps_learner_at_three_depths_and_blocks_after_the_prompts():
    """Two deeper projections (distinct), and an image block after the last prompted one."""
    clip_model = build_tiny_clip(seed=1, vision_width=96, vision_layers=4, text_layers=3)
    for p in clip_model.parameters():
        p.requires_grad_(False)
    names = ["cat", "dog", "small_bird"]
    layout = DeepTextLayout(clip_model, names, 2, "a photo of a")
    learner = DeepPromptLearner(64, 96, "fap", 2, 2, 3, 3, layout.initial_ctx())
    assert_is_faps_learner(DeepPromptCLIP(clip_model, learner, layout), clip_model, names, "a photo of a", depth=3)


def test_advmaple_orig_keeps_maples_text_to_image_coupling(demo_shape, tmp_path):
    trainer = make_trainer(demo_shape, tmp_path, trainer="AdvMaPLeOrig",
                           config=REPO / "configs" / "trainers" / "AdvMaPLeOrig" / "digits.yaml")
    learner = trainer.model.prompt_learner
    assert learner.coupling == "maple" and trainer.cfg.ADV.TRAIN.LOSS == "ce"
    shapes = {name: tuple(p.shape) for name, p in learner.named_parameters()}
    assert shapes == {"ctx": (2, 64), "text_deep.0": (2, 64), "to_vision.0.weight": (96, 64), "to_vision.0.bias": (96,),
                      "to_vision.1.weight": (96, 64), "to_vision.1.bias": (96,)}
    with torch.no_grad():
        assert all(torch.equal(v, proj(t)) for v, proj, t in
                   zip(learner.vision_tokens(), learner.to_vision, learner.text_tokens()))


# ---------------------------------------------------------------- AdvVP: FAP's evaluation frame, cross-dataset

@pytest.mark.parametrize("eval_frame", [True, False])
def test_advvp_eval_frame(demo_shape, tmp_path, eval_frame):
    """EVAL_FRAME True: tests score the trained (framed) model. False (FAP's zsrobust.py test()): the scored
    clean and attacked logits are the frameless model's, while the attack's gradients go through the frame."""
    trainer = make_trainer(demo_shape, tmp_path, trainer="AdvVP",
                           config=REPO / "configs" / "trainers" / "AdvVP" / "digits.yaml",
                           opts=["TRAINER.ADVVP.EVAL_FRAME", str(eval_frame)])
    assert trainer.run_metadata()["eval_frame"] is eval_frame
    trainer.set_model_mode("eval")
    model = trainer.model
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    frameless_model = copy.deepcopy(model)
    for name in ("pad_up", "pad_down", "pad_left", "pad_right"):
        getattr(frameless_model.visual_prompt, name).data.zero_()
    with torch.no_grad():
        framed, frameless = model(images), frameless_model(images)
        assert torch.allclose(model(images, frame=False), frameless, atol=1e-6)
        assert not torch.allclose(framed, frameless, atol=1e-3)
        scored = prompt_model(trainer, LEARNED)(images)
        clean_test = trainer.model_inference(images)
    expected = framed if eval_frame else frameless
    assert torch.allclose(scored, expected, atol=1e-6) and torch.allclose(clean_test, expected, atol=1e-6)
    with torch.no_grad():
        framed_module = FixedTextFeatures(model, model.text_features())
    adv = build_attack("pgd", prompt_model(trainer, LEARNED), 4, steps=3, seed=0)(images, labels)
    assert torch.equal(adv, build_attack("pgd", framed_module, 4, steps=3, seed=0)(images, labels))


def test_advvp_cross_dataset_trains_what_faps_script_trains():
    """FAP's scripts/Adv/zsrobust/cross_dataset.sh trains AdvVP with vit_b32_ep10_batch4 (LR 40, 10 epochs)."""
    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "fap-cross-dataset.yaml").read_text())
    script = (REPO / "scripts" / "advvp" / "cross_dataset.sh").read_text()
    default = re.search(r'zoo_cross_dataset AdvVP "\$\{1:-([\w.]+)\}"', script).group(1)
    for config in (REPO / sweep["methods"]["AdvVP"]["config"],
                   REPO / "configs" / "trainers" / "AdvVP" / f"{default}.yaml"):
        args = argparse.Namespace(config_file=str(config), dataset_config_file="", trainer="AdvVP", opts=[])
        cfg = setup_cfg(args, TRAINER_REGISTRY.get("AdvVP"))
        assert (cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.TRAINER.ADVVP.EVAL_FRAME) == (40.0, 10, True), config
