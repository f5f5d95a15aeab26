"""DEFEAT (cheny02/DEFEAT-ICLR2026) against a hand re-statement of its published trainer.

The re-statement below follows DEFEAT's ``trainers/defeat.py`` (``CustomCLIP``,
``VQVAE_NET``, ``LinearProjection``, ``forward_backward``) and
``clip/model.py`` (``VisionTransformer_DEFEAT``) operation for operation, on
the tiny CLIP and the toy data, with the trained modules' own weights:

- the PerturbShield forward (global and patch features, the VQ-VAE's ze, zq,
  x_hat, the projection) and the fused logits: bit-identical;
- the straight-through gradient: d loss / d pixels bit-identical; the
  quantizer passes the gradient as the identity, with or without BPDA;
- the training update: the attack's images bit-identical to DEFEAT's PGD
  (same seed); every loss term bit-identical; the total and the gradients of
  every learned tensor equal to 1e-6 relative (the toolkit adds the terms in
  one sum, DEFEAT in two groups: the association differs);
- the final test records the fused-model attack and its BPDA twin with their
  labels (the same number); the audit's declared-parts check finds no gap;
- a tower without patch features (ResNet) is refused in one line; open_clip's
  ViT gives the same global feature as its own forward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ampt.errors import UserError
from ampt.models import CLIP_MEAN, CLIP_STD
from ampt.models.parts import declared_parts, straight_through
from ampt.models.perturb_shield import check_patch_features, image_and_patch_features
from toys import REPO, make_trainer, one_batch

DEFEAT_DIGITS = REPO / "configs" / "trainers" / "DEFEAT" / "digits.yaml"


@pytest.fixture(scope="module")
def trainer(toy_env, tmp_path_factory):
    t = make_trainer(toy_env, tmp_path_factory.mktemp("defeat"), trainer="DEFEAT", config=DEFEAT_DIGITS)
    # move the shield off its initialisation so the test does not pass on a degenerate codebook
    with torch.no_grad():
        for p in t.model.perturb_shield.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return t


# ---------------------------------------------------------------- DEFEAT, re-stated
def vit_restated(visual, image):
    """VisionTransformer_DEFEAT.forward: (ln_post(cls) @ proj, ln_post(patches) @ proj)."""
    x = visual.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype),
                   x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    x = x.permute(1, 0, 2)
    x = visual.transformer(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :]) @ visual.proj, visual.ln_post(x[:, 1:, :]) @ visual.proj


def residual_restated(block, x):
    tmp = F.relu(x)
    tmp = F.conv2d(tmp, block.conv1.weight, block.conv1.bias, 1, 1)
    tmp = F.relu(tmp)
    tmp = F.conv2d(tmp, block.conv2.weight, block.conv2.bias)
    return x + tmp


def vqvae_restated(vq, local, grid):
    """VQVAE_NET.forward with the module's weights: (x_hat, ze, zq, decoder_input)."""
    d = local.shape[-1]
    x = local.permute(0, 2, 1).view(-1, d, *grid)
    enc = vq.encoder
    ze = F.conv2d(x, enc[0].weight, enc[0].bias, 1, 1)
    ze = F.relu(ze)
    ze = F.conv2d(ze, enc[2].weight, enc[2].bias, 1, 1)
    ze = residual_restated(enc[3], ze)
    embedding = vq.quantizer.codebook.weight.data
    n, c, h, w = ze.shape
    k, _ = embedding.shape
    distance = torch.sum((embedding.reshape(1, k, c, 1, 1) - ze.reshape(n, 1, c, h, w)) ** 2, 2)
    nearest = torch.argmin(distance, 1)
    zq = F.embedding(nearest, vq.quantizer.codebook.weight).permute(0, 3, 1, 2)
    decoder_input = ze + (zq - ze).detach()
    dec = vq.decoder
    y = F.conv2d(decoder_input, dec[0].weight, dec[0].bias, 1, 1)
    y = residual_restated(dec[1], y)
    x_hat = F.conv_transpose2d(y, dec[2].weight, dec[2].bias, 1, 1)
    return x_hat, ze, zq, decoder_input


def custom_clip_restated(model, image, text_features, alpha=0.5):
    """CustomCLIP.forward (training branch): logits_mix, image_features, local, text, x_hat, ze, zq, local_ima_fea."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    image_features, local_ima_fea = vit_restated(model.image_encoder, (image - mean) / std)
    x_hat, ze, zq, _ = vqvae_restated(model.perturb_shield.vqvae, local_ima_fea, model.perturb_shield.grid)
    ima_fea_vae = x_hat.view(x_hat.shape[0], local_ima_fea.shape[-1], -1).permute(0, 2, 1)
    lin = model.perturb_shield.projection.linear
    local = F.linear(ima_fea_vae.permute(0, 2, 1), lin.weight, lin.bias).squeeze(-1)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    local = local / local.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()
    logits = scale * image_features @ text_features.t()
    logits_local = scale * local @ text_features.t()
    mix = alpha * logits + (1 - alpha) * logits_local
    return mix, image_features, local, text_features, x_hat, ze, zq, local_ima_fea


def defeat_pgd_restated(forward, image, label, eps, alpha, steps):
    """DEFEAT's training attack (forward_backward): descends -CE, unclamped delta, clamp(x + delta)."""
    delta = torch.zeros_like(image).uniform_(-eps, eps)
    for _ in range(steps):
        adv = torch.clamp(image + delta, 0, 1).requires_grad_(True)
        loss_ce = -F.cross_entropy(forward(adv), label)
        loss_ce.backward()
        delta -= alpha * torch.sign(adv.grad)
        delta = torch.clamp(delta, -eps, eps).detach()
    return torch.clamp(image + delta, 0, 1).detach()


def defeat_loss_restated(out, label, ori_embedding, w1=10.0, w2=20.0, w3=0.5, w4=0.1):
    output, image_features, local, text_features, x_hat, ze, zq, x = out
    loss_ce = F.cross_entropy(output, label)
    loss_scl_image = F.l1_loss(image_features, local, reduction="mean")
    loss_scl_text = F.l1_loss(text_features, ori_embedding, reduction="mean")
    mse = torch.nn.MSELoss()
    x = x.permute(0, 2, 1).view(x_hat.shape)
    l_reconstruct, l_embedding, l_commitment = mse(x, x_hat), mse(ze.detach(), zq), mse(ze, zq.detach())
    loss_vae = w3 * l_reconstruct + w4 * l_embedding + 0.25 * w4 * l_commitment
    loss_scl = w1 * loss_scl_image + w2 * loss_scl_text
    terms = {"ce": loss_ce, "shield_l1": loss_scl_image, "text_l1": loss_scl_text,
             "vq_reconstruction": l_reconstruct, "vq_codebook": l_embedding, "vq_commitment": l_commitment}
    return loss_ce + loss_scl + loss_vae, terms


def prompt_text(trainer):
    """The learned prompt's unnormalized class features (DEFEAT's TextEncoder output)."""
    return trainer.model.encode_prompts().float()


# ---------------------------------------------------------------- the checks
def test_shield_forward_and_fused_logits_are_defeats(trainer):
    model = trainer.model.train()
    images, _ = trainer.parse_batch_train(one_batch(trainer))
    text = trainer.model.text_features()
    with torch.no_grad():
        features = model.encode_image(images)
        ours = model.shield_outputs(features)
        logits = model.combine(features, text)
        theirs = custom_clip_restated(model, images, prompt_text(trainer))
        pixels = model.normalizer(images)
        tower_own = model.image_encoder(pixels)
    glob, shield = model.split(features)
    mix, image_features, local, _, x_hat, ze, zq, x = theirs
    assert torch.equal(tower_own, image_and_patch_features(model.image_encoder, pixels)[0])
    assert torch.equal(glob, image_features) and torch.equal(shield, local)
    assert torch.equal(ours.patches, x.permute(0, 2, 1).view(x_hat.shape))
    assert torch.equal(ours.ze, ze) and torch.equal(ours.zq, zq) and torch.equal(ours.reconstruction, x_hat)
    assert torch.equal(logits, mix)
    assert len(torch.unique(ours.zq.flatten(2).permute(0, 2, 1).reshape(-1, zq.shape[1]), dim=0)) > 1
    with torch.no_grad():
        assert torch.equal(model(images, text_features=text), logits)  # forward == combine(encode_image)


def test_straight_through_gradient_is_defeats_with_or_without_bpda(trainer):
    model = trainer.model.eval()
    images, labels = trainer.parse_batch_train(one_batch(trainer))
    text = trainer.model.text_features().detach()

    def grad_of(forward):
        x = images.clone().requires_grad_(True)
        F.cross_entropy(forward(x), labels).backward()
        return x.grad

    ours = grad_of(lambda x: model(x, text_features=text))
    theirs = grad_of(lambda x: custom_clip_restated(model, x, prompt_text(trainer).detach())[0])
    assert torch.equal(ours, theirs) and ours.abs().sum() > 0
    with straight_through(model):
        assert torch.equal(grad_of(lambda x: model(x, text_features=text)), ours)
    # the quantizer's backward is the identity (the straight-through estimator)
    quantizer = model.perturb_shield.vqvae.quantizer
    ze = torch.randn(2, quantizer.codebook.weight.shape[1], 2, 2, requires_grad=True)
    upstream = torch.randn(2, quantizer.codebook.weight.shape[1], 2, 2)
    (quantizer(ze) * upstream).sum().backward()
    assert torch.equal(ze.grad, upstream)
    (part,) = declared_parts(model)
    assert part["kind"] == "non_differentiable" and part["backward"] == "identity"
    assert part["path"].endswith("perturb_shield.vqvae.quantizer")


def test_training_update_is_defeats(trainer, monkeypatch):
    model = trainer.model
    batch = one_batch(trainer)
    images, labels = trainer.parse_batch_train(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    b = trainer.budget
    captured = {}

    def backward_only(loss):
        for p in params:
            p.grad = None
        loss.backward()
        captured["loss"] = loss.detach()
        captured["grads"] = [p.grad.clone() for p in params]

    monkeypatch.setattr(trainer, "model_backward_and_update", backward_only)
    seen = []
    attack = trainer.adversarial_images
    monkeypatch.setattr(trainer, "adversarial_images", lambda x, y, tf: seen.append(attack(x, y, tf)) or seen[-1])
    trainer.set_model_mode("train")
    torch.manual_seed(7)
    summary = trainer.forward_backward(batch)
    (ours_adv,) = seen

    # DEFEAT: the attack on the fused model, then the loss on the adversarial images
    torch.manual_seed(7)
    adv = defeat_pgd_restated(lambda x: custom_clip_restated(model, x, prompt_text(trainer))[0], images, labels,
                              b.eps / 255, b.alpha / 255, b.steps)
    assert torch.equal(adv, ours_adv)
    names = [n.replace("_", " ") for n in trainer.classnames]
    with torch.no_grad():
        ori = model.text_encoder.encode_texts([f"a photo of a {n}." for n in names]).float()
        ori = ori / ori.norm(dim=-1, keepdim=True)
    for p in params:
        p.grad = None
    total, terms = defeat_loss_restated(custom_clip_restated(model, adv, prompt_text(trainer)), labels, ori)
    total.backward()
    for name, value in terms.items():
        if name != "ce":
            assert summary[name] == float(value.detach()), name
    assert torch.allclose(captured["loss"], total.detach(), rtol=1e-6, atol=0)
    for p, g in zip(params, captured["grads"]):
        assert torch.allclose(g, p.grad, rtol=1e-5, atol=1e-8)
    assert all(g.abs().sum() > 0 for g in captured["grads"])  # prompt, projection and the whole VQ-VAE learn


def test_tower_without_patch_features_is_refused_in_one_line():
    from clip.model import ModifiedResNet
    tower = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=1, input_resolution=32, width=8)
    with pytest.raises(UserError) as err:
        check_patch_features(tower)
    assert "ModifiedResNet" in str(err.value) and "\n" not in str(err.value)


def test_open_clip_vit_patch_features():
    pytest.importorskip("open_clip")
    from ampt.models.tiny import build_tiny_open_clip
    visual = build_tiny_open_clip().visual.eval()
    check_patch_features(visual)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        glob, patches = image_and_patch_features(visual, x)
        assert torch.equal(glob, visual(x))
    assert patches.shape == (2, 16, glob.shape[1])


def test_final_test_records_the_fused_attack_and_bpda_with_their_labels(trainer):
    from ampt.evaluation.robust_accuracy import AttackSpec
    from ampt.results import RunResults
    trainer.cfg.defrost()
    trainer.cfg.TRAINER.DEFEAT.TEST_BPDA = True
    trainer.cfg.freeze()
    trainer.test_attack = AttackSpec("pgd", eps=4.0, steps=3)
    trainer.final_evaluation()
    records = [r for r in RunResults(trainer.output_dir).records if r["attack"] == "pgd"]
    by_label = {r["adaptive"]: r for r in records}
    assert set(by_label) == {"none", "bpda"}
    assert by_label["bpda"]["bpda"] is True and "BPDA" in by_label["bpda"]["label"]
    assert "BPDA" not in by_label["none"]["label"]
    assert by_label["none"]["model_parts"][0]["forward_is_straight_through"] is True
    # the quantizer's own gradient is the declared BPDA backward: the same attack, the same number
    assert by_label["none"]["accuracy"] == by_label["bpda"]["accuracy"]


def test_audit_attacks_through_the_quantizer_and_finds_no_gap(trainer):
    from ampt.audit.checks import AuditSettings
    from ampt.audit.runner import run_audit
    from ampt.models import FixedTextFeatures
    model = trainer.model.eval()
    images, labels = trainer.parse_batch_train(one_batch(trainer))
    with torch.no_grad():
        wrapped = FixedTextFeatures(model, model.text_features())
    entry = run_audit(wrapped, images, labels, trainer.num_classes,
                      AuditSettings(eps=4.0, pgd_steps=3, checks=("declared_parts",)))
    (check,) = entry["checks"]
    assert check["status"] == "pass" and "BPDA" in check["why"]
    assert check["numbers"]["plain_pgd_acc"] == check["numbers"]["adaptive_pgd_acc"]
