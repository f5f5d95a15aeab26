"""Every registered trainer and attack, found through the registries (a new one is covered without a new test).

Each trainer plug-in (``trainers/*.py``, ``$AMPT_PLUGIN_PATH``) must ship
``configs/trainers/<Name>/digits.yaml`` for the demo's tiny CLIP shape
(ViT width 96, 3 blocks; text width 64, 2 blocks). On a 4-class generated
dataset it trains one epoch (two steps of 8 images) through ``train.py``,
saves, and ``evaluate.py`` reloads it and runs every registered attack
(1 step; parameter-free attacks such as AutoAttack on 4 images at a budget
that ends them in their first sub-attack). The reloaded model's clean
accuracy equals the run's own. Every registered attack keeps the attack
invariants on a deep-prompt model.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ampt.api import TRAINER_REGISTRY
from ampt.attacks import ATTACK_REGISTRY, build_attack
from ampt.models import DeepPromptCLIP, DeepPromptLearner, DeepTextLayout, FixedTextFeatures, save_clip_state_dict
from ampt.models.tiny import build_tiny_clip
from ampt.results import RunResults
from test_apt import REPO, write_toy_data, _quiet  # noqa: F401  (fixture)

TRAINERS = sorted(name for name in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(name).__module__.startswith("ampt_plugins."))
ATTACKS = sorted(ATTACK_REGISTRY.registered_names())


def _parameter_free(name: str) -> bool:
    return bool(getattr(ATTACK_REGISTRY.get(name), "parameter_free", False))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("registry_env")
    root = write_toy_data(base / "data")
    backbone = save_clip_state_dict(build_tiny_clip(seed=0, vision_width=96, vision_layers=3), base / "tiny.pt")
    return root, backbone, base


@pytest.fixture(scope="module")
def runs(env):
    """Each registered trainer trained once (module-scoped: the evaluation tests share the runs)."""
    import train

    root, backbone, base = env
    done = {}
    for name in TRAINERS:
        config = REPO / "configs" / "trainers" / name / "digits.yaml"
        out = base / "runs" / name
        argv = ["--root", str(root), "--seed", "1", "--trainer", name, "--config-file", str(config),
                "--output-dir", str(out), "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone),
                "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE", "6"]
        if getattr(TRAINER_REGISTRY.get(name), "adversarial", False):
            argv += ["ADV.TEST.STEPS", "1"]
        try:
            done[name] = (train.main(argv) if config.is_file() else None, out)
        except Exception as err:  # reported by that trainer's test, not as an error of every test
            done[name] = (err, out)
    return done


def test_every_trainer_ships_a_digits_config():
    assert TRAINERS, "no trainer plug-in registered"
    missing = [n for n in TRAINERS if not (REPO / "configs" / "trainers" / n / "digits.yaml").is_file()]
    assert not missing, f"configs/trainers/<Name>/digits.yaml missing for {missing}"


@pytest.mark.parametrize("name", TRAINERS)
def test_trains_saves_reloads_and_every_attack_evaluates(runs, name):
    import evaluate

    code, out = runs[name]
    assert code == 0, f"train.py {name}: {code!r}"
    assert RunResults(out).finished
    own_clean = next(r["accuracy"] for r in RunResults(out).records if r["attack"] == "clean")
    iterative = [a for a in ATTACKS if not _parameter_free(a)]
    assert evaluate.main([str(out), "--attack", "clean", *iterative, "--eps", "4", "--steps", "1", "--force"]) == 0
    for attack in ATTACKS:
        if _parameter_free(attack):
            assert evaluate.main([str(out), "--attack", attack, "--eps", "128", "--n-samples", "4"]) == 0
    records = RunResults(out).records
    assert {r["attack"] for r in records} >= {"clean", *ATTACKS}
    reloaded_clean = next(r["accuracy"] for r in records if r["attack"] == "clean" and r["n_samples"] == 12)
    assert reloaded_clean == own_clean  # the checkpoint restored what was trained
    # one prompt label for the run's own records and evaluate.py's (no record duplicated under a second name)
    assert len({r["prompt"] for r in records}) == 1
    assert all(0 <= r["accuracy"] <= 100 for r in records)


@pytest.fixture(scope="module")
def deep_model():
    clip_model = build_tiny_clip(seed=0, vision_width=96, vision_layers=3)
    for p in clip_model.parameters():
        p.requires_grad_(False)
    layout = DeepTextLayout(clip_model, ["red", "green", "blue", "white"], 2, "a photo of a")
    learner = DeepPromptLearner(64, 96, "fap", 2, 2, 2, 2, layout.initial_ctx())
    model = DeepPromptCLIP(clip_model, learner, layout).eval()
    with torch.no_grad():
        return FixedTextFeatures(model, model.text_features())


@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_keeps_the_invariants_on_deep_prompts(deep_model, name):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    eps = 64 if _parameter_free(name) else 8  # AutoAttack: a budget that ends it in its first sub-attack
    kwargs = {} if _parameter_free(name) else {"steps": 2}
    adv = build_attack(name, deep_model, eps, num_classes=4, **kwargs)(images, labels)
    assert adv.shape == images.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= eps / 255 + 1e-6
    assert torch.equal(build_attack(name, deep_model, 0, num_classes=4, **kwargs)(images, labels), images)
    assert all(p.grad is None for p in deep_model.parameters())
