"""AMPT: router, mixture model, trainer, evaluation and interpretation on a tiny CLIP.

The identities of docs/method.md section 3 (K = 1 is APT, uniform weights are the
re-normalized mean, router weights on the simplex) are checked against
independent computations: CLIP's own 77-token text pass and explicit
per-sample mixtures of the normalized text features.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from yacs.config import CfgNode as CN

from ampt.api import DATASET_REGISTRY, TRAINER_REGISTRY, DatasetBase, Datum, build_trainer
from ampt.config import setup_cfg
from ampt.models import PromptLearner, PromptedCLIP, build_tiny_clip, save_clip_state_dict
from ampt.models.clip_loader import clip
from ampt.models.mixture import MixturePromptedCLIP, mix_similarities
from ampt.models.router import Router, weight_entropy
from ampt.plugins import load_plugins
from ampt.results import RunResults
from ampt.utils.logger import reset_logger

REPO = Path(__file__).resolve().parent.parent
AMPT_DIGITS = REPO / "configs" / "trainers" / "AMPT" / "digits.yaml"
CLASSNAMES = ["zero", "one", "two", "golden retriever", "sea or lake", "st. bernard"]
TOY_CLASSES = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (230, 230, 230)}
TOY_SPLITS = {"train": 4, "val": 1, "test": 3}  # images per class

load_plugins("builtin")


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


# ---------------------------------------------------------------- trainer

def _toy_split(root: Path, split: str) -> List[Datum]:
    names = list(TOY_CLASSES)
    return [Datum(str(p), int(p.parent.name), classname=names[int(p.parent.name)])
            for p in sorted((root / "ampt_toy" / split).glob("*/*.png"))]


@DATASET_REGISTRY.register()
class AmptToy(DatasetBase):
    """4 colour classes of 32x32 noisy images under ROOT/ampt_toy/<split>/<label>/."""

    def __init__(self, cfg) -> None:
        root = Path(cfg.DATASET.ROOT)
        super().__init__(train_x=_toy_split(root, "train"), val=_toy_split(root, "val"), test=_toy_split(root, "test"))


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ampt_env")
    rng = np.random.RandomState(0)
    for split, count in TOY_SPLITS.items():
        for label, colour in enumerate(TOY_CLASSES.values()):
            out = base / "data" / "ampt_toy" / split / str(label)
            out.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.randint(-40, 40, (32, 32, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(out / f"{i}.png")
    backbone = save_clip_state_dict(build_tiny_clip(seed=0), base / "tiny_clip.pt")
    return base / "data", backbone


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("AMPT_NO_PROGRESS", "1")
    yield
    reset_logger()


def _toy_opts(toy_env) -> List[str]:
    root, backbone = toy_env
    return ["DATASET.NAME", "AmptToy", "DATASET.ROOT", str(root), "MODEL.BACKBONE.NAME", str(backbone),
            "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "1", "ADV.TEST.STEPS", "2"]


def make_trainer(toy_env, out: Path, *opts: str):
    args = argparse.Namespace(output_dir=str(out), trainer="AMPT", config_file=str(AMPT_DIGITS),
                              dataset_config_file="", seed=1, opts=_toy_opts(toy_env) + list(opts))
    torch.manual_seed(0)
    trainer = build_trainer(setup_cfg(args, TRAINER_REGISTRY.get("AMPT")))
    trainer.batch_idx, trainer.num_batches = 0, 2  # a step that is not the epoch's last: no LR step
    return trainer


def test_training_step_one_text_pass_gradients_and_allow_list(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path / "run", "TRAINER.AMPT.CLEAN_CE_WEIGHT", "0.5",
                           "TRAINER.AMPT.TRADES_KL_WEIGHT", "1.0", "TRAINER.AMPT.BALANCE_WEIGHT", "0.1")
    model = trainer.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx", "router.net.weight", "router.net.bias"]
    assert trainer.get_model_names() == ["prompt_learner", "router"]
    calls = []
    model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert len(calls) == 1  # K x C prompts, one batched pass, reused by the 3 attack steps and the loss
    assert {"loss", "adv_acc", "clean_ce", "clean_adv_kl", "router_balance", "imbalance", "router_entropy"} <= set(summary)
    assert all(np.isfinite(v) for v in summary.values())
    ctx_grad = model.prompt_learner.ctx.grad
    assert (ctx_grad.flatten(1).abs().sum(dim=1) > 0).all()  # every prompt
    for name, p in model.router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if n not in before)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_training_attack_router_modes_stay_in_ball(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path / "run")
    images, labels = trainer.parse_batch_train(next(iter(trainer.train_loader_x)))
    routes = []
    original = trainer.model.mixture_weights
    trainer.model.mixture_weights = lambda f: routes.append(trainer.model.route) or original(f)
    with torch.no_grad():
        features = trainer.model.text_features()
    for attack_router, expected in (("full", "learned"), ("uniform", "uniform"), ("detached", "detached")):
        trainer.cfg.defrost()
        trainer.cfg.TRAINER.AMPT.ATTACK_ROUTER = attack_router
        trainer.cfg.freeze()
        routes.clear()
        adv = trainer.adversarial_images(images, labels, features)
        assert routes == [expected] * 3 and trainer.model.route == "learned"
        assert (adv - images).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("opts, message", [
    (["TRAINER.AMPT.N_PROMPTS", "1"], "ROUTER uniform"),
    (["TRAINER.AMPT.ROUTER", "uniform", "TRAINER.AMPT.TOP_K", "2"], "does not use"),
    (["TRAINER.AMPT.CTX_INIT", "a photo of a"], "INIT first, all or templates"),
    (["TRAINER.AMPT.INIT", "all"], "needs CTX_INIT"),
    (["TRAINER.AMPT.MIX", "prompts"], "features, logits"),
    (["TRAINER.AMPT.ROUTER_HIDDEN", "8"], "only by the mlp router"),
    (["TRAINER.AMPT.BALANCE_WEIGHT", "-1.0"], ">= 0"),
    (["TRAINER.AMPT.ROUTER", "uniform", "TRAINER.AMPT.ROUTER_LR_MULT", "10.0"], "does not use"),
])
def test_invalid_or_unused_settings_are_refused(toy_env, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(toy_env, tmp_path / "run", *opts)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_router_learning_rate_multiplier(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path / "run", "TRAINER.AMPT.ROUTER_LR_MULT", "10.0", "OPTIM.MAX_EPOCH", "10")
    lrs = {name: trainer._optims[name].param_groups[0]["lr"] for name in ("prompt_learner", "router")}
    assert lrs["router"] == pytest.approx(10 * lrs["prompt_learner"])  # warm-up epoch: 10 x 1e-5
    for _ in range(2):
        trainer.update_lr()
    lrs = {name: trainer._optims[name].param_groups[0]["lr"] for name in ("prompt_learner", "router")}
    assert lrs["router"] == pytest.approx(10 * lrs["prompt_learner"]) and lrs["prompt_learner"] > 1e-4


def test_word_init_first_prompt_and_uniform_router_without_router_params(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path / "run", "TRAINER.AMPT.CTX_INIT", "a photo of a",
                           "TRAINER.AMPT.INIT", "first", "TRAINER.AMPT.ROUTER", "uniform")
    ctx = trainer.model.prompt_learner.ctx.detach()
    words = trainer.model.text_encoder.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert torch.allclose(ctx[0], words) and not torch.allclose(ctx[1], words)
    assert trainer.get_model_names() == ["prompt_learner"]
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def test_end_to_end_train_save_reload_evaluate_interpret(toy_env, tmp_path, monkeypatch, capsys):
    import evaluate
    import train
    from ampt import interpret

    monkeypatch.setattr(train, "load_plugins", lambda engine: None)  # already loaded, with AmptToy
    out = tmp_path / "run"
    argv = ["--output-dir", str(out), "--trainer", "AMPT", "--config-file", str(AMPT_DIGITS), "--seed", "1",
            *_toy_opts(toy_env), "OPTIM.MAX_EPOCH", "2"]
    assert train.main(argv) == 0
    results = RunResults(out)
    assert results.finished and results.run["trainer"] == "AMPT" and results.run["n_prompts"] == 4
    by_attack = {r["attack"]: r["accuracy"] for r in results.records}
    assert set(by_attack) == {"clean", "pgd"} and by_attack["pgd"] <= by_attack["clean"]
    for name in ("prompt_learner", "router"):
        assert (out / name / "model.pth.tar-2").is_file()
    stats = json.loads((out / "router_stats.json").read_text())["epochs"]
    assert [s["epoch"] for s in stats] == [1, 2] and stats[-1]["n_images"] == 16
    assert abs(sum(stats[-1]["mean_weights"]) - 1) < 1e-4 and 0 < stats[-1]["entropy"] <= np.log(4) + 1e-6
    assert "router (epoch 2, 16 adversarial images): mean weights" in (out / "log.txt").read_text()
    assert list((out / "tensorboard").iterdir())

    # save and reload: a fresh trainer loading the checkpoints gives identical logits
    reset_logger()
    trained = make_trainer(toy_env, tmp_path / "unused")
    trained.load_model(str(out), epoch=2)
    fresh = make_trainer(toy_env, tmp_path / "unused2")
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.equal(trained.model(x), fresh.model(x))
        fresh.load_model(str(out), epoch=2)
        assert torch.equal(trained.model(x), fresh.model(x))

    reset_logger()
    for prompt in ("learned", "uniform"):
        assert evaluate.main([str(out), "--attack", "clean", "pgd", "--steps", "2", "--prompt", prompt]) == 0
    records = {(r["attack"], r["prompt"]): r for r in RunResults(out).records if r["steps"] in (0, 2)}
    assert {("clean", "uniform"), ("pgd", "uniform"), ("pgd", "learned")} <= set(records)
    assert records[("pgd", "uniform")]["accuracy"] <= records[("clean", "uniform")]["accuracy"]

    capsys.readouterr()
    assert interpret.main([str(out), "--topk", "2"]) == 0
    report = capsys.readouterr().out
    assert [line.split(":")[0] for line in report.splitlines() if line.startswith("prompt")] == \
        [f"prompt {k}" for k in range(1, 5)]
    assert report.count("  ctx ") == 16


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "trainers" / "AMPT").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_merge_and_pass_the_checks(config):
    args = argparse.Namespace(config_file=str(config), dataset_config_file="", trainer="AMPT", opts=[])
    cfg = setup_cfg(args, TRAINER_REGISTRY.get("AMPT"))
    sys.modules[TRAINER_REGISTRY.get("AMPT").__module__].check_ampt_cfg(cfg.TRAINER.AMPT)
    assert cfg.TRAINER.NAME == "AMPT" and "normalize" not in cfg.INPUT.TRANSFORMS
    if config.stem.startswith("vit_b32"):
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == ("sgd", 0.002, 32)
        assert cfg.ADV.TRAIN.EPS == float(config.stem.split("_eps")[1][0]) and cfg.ADV.TRAIN.STEPS == 3


# ---------------------------------------------------------------- routing keys and diagnostics (issue: router must route)

def test_new_router_keys_change_only_what_they_should(toy_env, tmp_path):
    base = make_trainer(toy_env, tmp_path / "a")
    same = make_trainer(toy_env, tmp_path / "b", "TRAINER.AMPT.ROUTER_INPUT_SCALE", "1.0")
    scaled = make_trainer(toy_env, tmp_path / "c", "TRAINER.AMPT.ROUTER_INPUT_SCALE", "100.0")
    x = _images(5, seed=4)
    with torch.no_grad():
        f = base.model.encode_image(x)
        assert torch.equal(base.model.router.logits(f), same.model.router.logits(f))
        assert torch.equal(base.model(x), same.model(x))
        assert torch.allclose(scaled.model.router.logits(f), 100 * base.model.router.logits(f), rtol=1e-5, atol=1e-6)
        assert torch.equal(base.model.prompt_learner.ctx, scaled.model.prompt_learner.ctx)
    templates = make_trainer(toy_env, tmp_path / "d", "TRAINER.AMPT.INIT", "templates", "TRAINER.AMPT.CTX_INIT",
                             "a photo of a|a drawing of a|an image of|a")
    ortho = make_trainer(toy_env, tmp_path / "e", "TRAINER.AMPT.INIT", "orthogonal")
    for other in (templates, ortho):
        ctx = other.model.prompt_learner.ctx.detach()
        assert ctx.shape == base.model.prompt_learner.ctx.shape and not torch.allclose(ctx, base.model.prompt_learner.ctx)
        assert torch.equal(other.model.router.net.weight, base.model.router.net.weight)
    words = templates.model.text_encoder.token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert torch.allclose(templates.model.prompt_learner.ctx[0].detach(), words)
    flat = ortho.model.prompt_learner.ctx.detach().flatten(1)
    assert (flat @ flat.t() - torch.diag((flat * flat).sum(1))).abs().max() < 1e-6


@pytest.mark.parametrize("opts, message", [
    (["TRAINER.AMPT.ROUTER_INPUT_SCALE", "0.0"], "> 0"),
    (["TRAINER.AMPT.ROUTER_INPUT", "both"], "adversarial, clean"),
    (["TRAINER.AMPT.INIT", "templates", "TRAINER.AMPT.CTX_INIT", "a|b"], "needs N_PROMPTS \\(4\\)"),
    (["TRAINER.AMPT.INIT", "orthogonal", "TRAINER.AMPT.CTX_INIT", "a photo of a"], "need INIT first, all or templates"),
    (["TRAINER.AMPT.ROUTER", "uniform", "TRAINER.AMPT.ROUTER_INPUT", "clean"], "does not use"),
])
def test_invalid_routing_settings_are_refused(toy_env, tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(toy_env, tmp_path / "run", *opts)


def test_clean_router_input_routes_every_forward_of_the_step_on_the_clean_images(toy_env, tmp_path):
    trainer = make_trainer(toy_env, tmp_path / "run", "TRAINER.AMPT.ROUTER_INPUT", "clean",
                           "TRAINER.AMPT.ROUTER_INPUT_SCALE", "100.0")
    batch = next(iter(trainer.train_loader_x))
    images = trainer.parse_batch_train(batch)[0]
    with torch.no_grad():
        expected = trainer.model.router(trainer.model.encode_image(images))
    seen = []
    original = trainer.model.mixture_weights
    trainer.model.mixture_weights = lambda f: seen.append(original(f).detach()) or seen[-1]
    trainer.forward_backward(batch)
    assert len(seen) == 4  # 3 attack steps + the loss forward, all on the clean images' weights
    # the router's weights move after the update, so compare before it: the first attack step
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert trainer.model._router_input is None


def test_diagnostics_of_a_tiny_run_are_in_range(toy_env, tmp_path, monkeypatch):
    import train
    from ampt.evaluation.robust_accuracy import AttackSpec

    builds = []
    real_build = AttackSpec.build
    monkeypatch.setattr(AttackSpec, "build", lambda spec, *a, **k: builds.append(spec.name) or real_build(spec, *a, **k))
    out = tmp_path / "run"
    argv = ["--output-dir", str(out), "--trainer", "AMPT", "--config-file", str(AMPT_DIGITS), "--seed", "1",
            *_toy_opts(toy_env), "OPTIM.MAX_EPOCH", "2", "TRAINER.AMPT.ROUTER_INPUT_SCALE", "30.0"]
    assert train.main(argv) == 0
    data = json.loads((out / "router_stats.json").read_text())
    assert data["init"]["epoch"] == 0 and -1 <= data["init"]["bank_cosine"] <= 1
    for e in data["epochs"]:
        assert 0 <= e["entropy"] <= e["entropy_of_mean"] + 1e-6 <= np.log(4) + 1e-5
        assert 0 <= e["tv_from_batch_mean"] <= 0.75 and e["router_logit_std"] > 0
        assert e["grad_norm"]["router"] > 0 and e["grad_norm"]["prompt_learner"] > 0
        assert len(e["bank_cosine_matrix"]) == 4 and -1 <= e["bank_cosine"] <= 1
    test = data["test"]
    assert test["split"] == "test" and test["n_images"] == 12
    for part in ("clean", "attacked"):
        assert 0 <= test[part]["mi_label"] <= np.log(4) + 1e-6
    assert 0 <= test["mi_clean_vs_attacked"] <= np.log(2) and 0 <= test["tv_clean_to_attacked"] <= 1
    assert builds == ["pgd"]  # the router's test weights come from the robust test itself, not a second attack
    log = (out / "log.txt").read_text()
    assert "TV from the batch mean" in log and "MI(weights; label)" in log


def test_router_study_sweep_methods_build_valid_ampt_configs():
    """Each method of configs/sweeps/ampt-router-study.yaml merges and passes AMPT's checks.

    (Expansion by the sweep runner itself is tested where the runner lives.)
    """
    import yaml

    study = yaml.safe_load((REPO / "configs" / "sweeps" / "ampt-router-study.yaml").read_text())
    assert study["grid"]["seed"] == [1, 2, 3] and study["grid"]["dataset"] == ["digits"]
    tokens = {}
    for label, method in study["methods"].items():
        args = argparse.Namespace(config_file=str(REPO / method["config"]), dataset_config_file="",
                                  trainer=method["trainer"], opts=[str(v) for v in method.get("opts", [])])
        cfg = setup_cfg(args, TRAINER_REGISTRY.get(method["trainer"]))
        sys.modules[TRAINER_REGISTRY.get("AMPT").__module__].check_ampt_cfg(cfg.TRAINER.AMPT)
        tokens[label] = cfg.TRAINER.AMPT.N_PROMPTS * cfg.TRAINER.AMPT.N_CTX
    assert set(tokens.values()) == {16}  # every cell has 16 context tokens in all
    attacks = {(e["attack"], e.get("eps"), e.get("steps"), e.get("n_samples")) for e in study["evaluate"]}
    assert {("clean", None, None, None), ("pgd", 4, 100, None), ("cw", 4, 100, None), ("aa", 4, None, 200),
            ("pgd", 8, 100, None)} <= attacks
