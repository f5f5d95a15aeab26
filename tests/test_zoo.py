"""The FAP-family trainers: set-up checks, what trains, AdvVP's records, FAP's defaults."""
from __future__ import annotations

import argparse

import pytest
import torch

from ampt.api import TRAINER_REGISTRY, build_trainer
from ampt.config import setup_cfg
from toys import REPO, one_batch

ZOO = ("FAP", "AdvMaPLe", "AdvVLP", "AdvVP")


@pytest.fixture(scope="module")
def env(demo_shape_env):
    """(toy data root, untrained tiny CLIP of the demo's shape), shared with test_registry_all (conftest)."""
    return demo_shape_env


def make(env, tmp_path, trainer, *opts):
    root, backbone = env
    args = argparse.Namespace(root=str(root), output_dir=str(tmp_path / trainer), trainer=trainer,
                              config_file=str(REPO / "configs" / "trainers" / trainer / "digits.yaml"),
                              dataset_config_file="", seed=1, eps=None, alpha=None, steps=None, adv_prompt=None,
                              opts=["DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone), *opts])
    torch.manual_seed(0)
    return build_trainer(setup_cfg(args, TRAINER_REGISTRY.get(trainer)))


@pytest.mark.parametrize("trainer", ZOO)
def test_one_step_updates_only_the_prompts(env, tmp_path, trainer):
    t = make(env, tmp_path, trainer)
    prefix = "visual_prompt." if trainer == "AdvVP" else "prompt_learner."
    trainable = [n for n, p in t.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(prefix) for n in trainable)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.set_model_mode("train")
    summary = t.forward_backward(one_batch(t))
    assert torch.isfinite(torch.tensor(summary["loss"]))
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(n.startswith(prefix) for n in changed)


def test_unsupported_attack_prompt_refused_before_training(env, tmp_path):
    with pytest.raises(ValueError, match='ADV.TRAIN.PROMPT "constant" is not supported by VisualPromptCLIP; '
                                         "valid: onfly, perturbed"):
        make(env, tmp_path, "AdvVP", "ADV.TRAIN.PROMPT", "constant")


def test_advvp_records_are_labelled_learned_not_by_its_template(env, tmp_path):
    from ampt.evaluation.evaluated_prompt import record_prompt
    from ampt.models.interface import LEARNED

    t = make(env, tmp_path, "AdvVP", "TRAINER.ADVVP.TEMPLATE", "a drawing of a {}.")
    assert record_prompt(t, LEARNED) == "learned"
    assert record_prompt(t, "a photo of a {}.") == "a photo of a {}."
    t.record_result("test", "clean", 0, 0, 12, 50.0)
    assert [r["prompt"] for r in t.results.records] == ["learned"]


def test_fap_defaults_and_depth_checks(env, tmp_path):
    t = make(env, tmp_path, "FAP")
    assert t.cfg.ADV.TRAIN.LOSS == "fap" and t.run_metadata()["fap_lambda"] == 1.5
    assert [type(m).__name__ for m in t.model.prompt_learner.to_text] == ["Linear"]
    with pytest.raises(ValueError, match=r"TRAINER.FAP prompt depths text 9 / image 9 do not fit the backbone "
                                         r"\(2 text blocks, 3 image blocks\)"):
        make(env, tmp_path, "FAP", "TRAINER.FAP.PROMPT_DEPTH", "9")


@pytest.mark.parametrize("config", sorted(p for name in ZOO for p in (REPO / "configs" / "trainers" / name).glob("vit_b32_ep*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fap_protocol_configs_merge(config):
    args = argparse.Namespace(config_file=str(config), dataset_config_file="", trainer=config.parent.name, opts=[])
    cfg = setup_cfg(args, TRAINER_REGISTRY.get(config.parent.name))
    assert (cfg.ADV.TRAIN.EPS, cfg.ADV.TRAIN.ALPHA, cfg.ADV.TRAIN.STEPS) == (1.0, 1.0, 2)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.NAME, cfg.ADV.TEST.STEPS) == (4, "sgd", 100)
    assert cfg.ADV.TRAIN.LOSS == ("fap" if config.parent.name == "FAP" else "ce")


@pytest.mark.parametrize("sweep", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_sweep_files_name_registered_trainers_and_valid_configs(sweep):
    import yaml

    spec = yaml.safe_load(sweep.read_text())
    assert {"name", "data_root", "output_root", "grid", "methods", "evaluate"} <= set(spec)
    for label, method in spec["methods"].items():
        opts = [str(v) for v in [*spec.get("opts", []), *method.get("opts", [])]]
        args = argparse.Namespace(config_file=str(REPO / method["config"]), dataset_config_file="",
                                  trainer=method["trainer"], opts=opts)
        cfg = setup_cfg(args, TRAINER_REGISTRY.get(method["trainer"]))
        assert cfg.TRAINER.NAME == method["trainer"], label
    for dataset in spec["grid"]["dataset"]:
        assert (REPO / "configs" / "datasets" / f"{dataset}.yaml").is_file(), dataset
