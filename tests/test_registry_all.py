"""Every registered trainer and attack, found through the registries (a new one is covered without a new test).

Each trainer plug-in (``trainers/*.py``, ``$AMPT_PLUGIN_PATH``) must ship
``configs/trainers/<Name>/digits.yaml`` for the demo's tiny CLIP shape
(ViT width 96, 3 blocks; text width 64, 2 blocks), in the repository's
``configs/`` or its plug-in folder's (:func:`ampt.config_paths.find_config`).
Every other ``configs/trainers/<Trainer>/digits_<x>.yaml`` found there is a
contract case too: that is how a plug-in loss term (``objectives/*.py``) is
covered, by a config whose ``ADV.TRAIN.LOSS`` names it, and each plug-in
term must have one. On a 4-class generated
dataset each case trains one epoch (two steps of 8 images) through ``train.py``,
saves, and ``evaluate.py`` reloads it and runs every registered attack
(1 step; parameter-free attacks such as AutoAttack on 4 images at a budget
that ends them in their first sub-attack). The reloaded model's clean
accuracy equals the run's own. Every registered attack keeps the attack
invariants on a deep-prompt model. ``tests/test_plugin_folders.py`` runs
these tests with ``examples/plugin`` on ``AMPT_PLUGIN_PATH``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from ampt.api import TRAINER_REGISTRY
from ampt.attacks import ATTACK_REGISTRY, build_attack
from ampt.config_paths import find_config, list_configs
from ampt.models import DeepPromptCLIP, DeepPromptLearner, DeepTextLayout, FixedTextFeatures
from ampt.models.tiny import build_tiny_clip
from ampt.objectives import OBJECTIVE_REGISTRY
from ampt.results import RunResults
from toys import DEMO_SHAPE, LazyRuns  # demo_shape_env: conftest

TRAINERS = sorted(name for name in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(name).__module__.startswith("ampt_plugins."))
PLUGIN_OBJECTIVES = sorted(name for name in OBJECTIVE_REGISTRY.registered_names()
                           if OBJECTIVE_REGISTRY.get(name).__module__.startswith("ampt_plugins."))
ATTACKS = sorted(ATTACK_REGISTRY.registered_names())
# AutoAttack's "plus" and "rand" versions run the class and library path of "aa" with more restarts and EOT
# (minutes on a tiny model): tests/test_attacks.py runs them; here every other attack runs on every trainer.
SLOW_VERSIONS = ("aa-plus", "aa-rand")
# Trainers whose models declare an input-dependent router (AMPT's router, the mixture-of-experts gates).
ROUTED_TRAINERS = ("AMPT", "MoEAdvVLP")
# Settings an attack cannot run without. aa-custom runs the library's custom version with Square, which stops
# once every image is fooled (APGD's 100 iterations run in "aa" already).
REQUIRED_OPTIONS = {"aa-custom": {"options": "square"}}


def _cases():
    """case -> (trainer, config or None): each trainer plug-in's ``digits.yaml`` (case: its name), then every
    ``<Trainer>/digits_<x>.yaml`` of a registered trainer in the config folders (case: ``<Trainer>/digits_<x>``)."""
    cases = {name: (name, find_config("trainers", name, "digits", required=False)) for name in TRAINERS}
    registered = set(TRAINER_REGISTRY.registered_names())
    for key, path in list_configs("trainers").items():
        trainer, setting = key.split("/")
        if setting.startswith("digits_") and trainer in registered:
            cases[key] = (trainer, path)
    return cases


CASES = _cases()


def _parameter_free(name: str) -> bool:
    return bool(getattr(ATTACK_REGISTRY.get(name), "parameter_free", False))


@pytest.fixture(scope="module")
def runs(demo_shape_env, tmp_path_factory):
    """Each registered trainer trained once, when its test first asks for it (selecting one trains one)."""
    import train

    root, backbone = demo_shape_env
    base = tmp_path_factory.mktemp("registry_runs")

    def train_one(case):
        name, config = CASES[case]
        out = base / "runs" / case.replace("/", "-")
        argv = ["--root", str(root), "--seed", "1", "--trainer", name, "--config-file", str(config),
                "--output-dir", str(out), "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone),
                "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE", "6"]
        if getattr(TRAINER_REGISTRY.get(name), "adversarial", False):
            argv += ["ADV.TEST.STEPS", "1"]
        try:
            return (train.main(argv) if config is not None else None, out)
        except Exception as err:  # reported by that trainer's test, not as an error of every test
            return (err, out)

    return LazyRuns(CASES, train_one)


def test_every_trainer_ships_a_digits_config():
    assert TRAINERS, "no trainer plug-in registered"
    missing = [n for n in TRAINERS if CASES[n][1] is None]
    assert not missing, f"configs/trainers/<Name>/digits.yaml missing for {missing}"


def _loss_terms(config: Path) -> set:
    train = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("ADV") or {}).get("TRAIN") or {}
    return set(re.findall(r"[A-Za-z_]\w*", f"{train.get('LOSS', '')} {train.get('ATTACK_LOSS', '')}"))


def test_every_plugin_objective_is_trained_by_a_digits_config():
    named = set().union(*(_loss_terms(path) for _, path in CASES.values() if path is not None))
    missing = [n for n in PLUGIN_OBJECTIVES if n not in named]
    assert not missing, (f"no configs/trainers/<Trainer>/digits*.yaml names the plug-in loss terms {missing} in "
                         "ADV.TRAIN.LOSS: ship one (e.g. <Trainer>/digits_<term>.yaml) in the plug-in's configs/")


@pytest.mark.parametrize("name", sorted(CASES))
def test_trains_saves_reloads_and_every_attack_evaluates(runs, name):
    import evaluate

    code, out = runs[name]
    assert code == 0, f"train.py {name}: {code!r}"
    assert RunResults(out).finished
    own_clean = next(r["accuracy"] for r in RunResults(out).records if r["attack"] == "clean")
    iterative = [a for a in ATTACKS if not _parameter_free(a)]
    assert evaluate.main([str(out), "--attack", "clean", *iterative, "--eps", "4", "--steps", "1", "--force"]) == 0
    for attack in ATTACKS:
        if _parameter_free(attack) and attack not in SLOW_VERSIONS:
            options = REQUIRED_OPTIONS.get(attack, {}).get("options")
            assert evaluate.main([str(out), "--attack", attack, "--eps", "128", "--n-samples", "4",
                                  *(["--aa-attacks", options] if options else [])]) == 0
    records = RunResults(out).records
    assert {r["attack"] for r in records} >= {"clean", *ATTACKS} - set(SLOW_VERSIONS)
    # every evaluate.py record says how the attack went through the model's declared parts (AMPT: its router)
    attacked = [r for r in records if r["attack"] != "clean" and "attack_config" in r]
    expected = "through-router" if CASES[name][0] in ROUTED_TRAINERS else "none"
    assert attacked and {r["adaptive"] for r in attacked} == {expected}
    reloaded_clean = next(r["accuracy"] for r in records if r["attack"] == "clean" and r["n_samples"] == 12)
    assert reloaded_clean == own_clean  # the checkpoint restored what was trained
    # one prompt label for the run's own records and evaluate.py's (no record duplicated under a second name)
    assert len({r["prompt"] for r in records}) == 1
    assert all(0 <= r["accuracy"] <= 100 for r in records)


@pytest.fixture(scope="module")
def deep_model():
    clip_model = build_tiny_clip(seed=0, **DEMO_SHAPE)
    for p in clip_model.parameters():
        p.requires_grad_(False)
    layout = DeepTextLayout(clip_model, ["red", "green", "blue", "white"], 2, "a photo of a")
    learner = DeepPromptLearner(64, 96, "fap", 2, 2, 2, 2, layout.initial_ctx())
    model = DeepPromptCLIP(clip_model, learner, layout).eval()
    with torch.no_grad():
        return FixedTextFeatures(model, model.text_features())


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - set(SLOW_VERSIONS)))
def test_every_attack_keeps_the_invariants_on_deep_prompts(deep_model, name):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    eps = 64 if _parameter_free(name) else 8  # AutoAttack: a budget that ends it in its first sub-attack
    kwargs = {**REQUIRED_OPTIONS.get(name, {}), **({} if _parameter_free(name) else {"steps": 2})}
    adv = build_attack(name, deep_model, eps, num_classes=4, **kwargs)(images, labels)
    assert adv.shape == images.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= eps / 255 + 1e-6
    assert torch.equal(build_attack(name, deep_model, 0, num_classes=4, **kwargs)(images, labels), images)
    assert all(p.grad is None for p in deep_model.parameters())
