"""setup_cfg: merge order, CLI flags (seed 0 included), unknown keys, eps units."""
from __future__ import annotations

import argparse

import pytest
from yacs.config import CfgNode as CN

from ampt.config import ConfigKeyError, peek_trainer_name, setup_cfg


class ToyTrainer:
    @staticmethod
    def add_config(cfg: CN) -> None:
        cfg.TRAINER.TOY = CN()
        cfg.TRAINER.TOY.N_CTX = 16  # number of context tokens
        cfg.TRAINER.TOY.PREC = "fp16"


def _args(**kw) -> argparse.Namespace:
    base = dict(root="", output_dir="", resume="", seed=None, source_domains=None, target_domains=None,
                transforms=None, config_file="", dataset_config_file="", trainer="", backbone="", head="",
                eps=None, alpha=None, steps=None, adv_prompt=None, opts=[])
    base.update(kw)
    return argparse.Namespace(**base)


def _yaml(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_merge_order_defaults_trainer_dataset_method_flags_overrides(tmp_path):
    dataset = _yaml(tmp_path, "ds.yaml", "DATASET:\n  NAME: EuroSAT\n  ROOT: from_dataset_yaml\nOPTIM:\n  LR: 0.1\n")
    method = _yaml(tmp_path, "m.yaml", "OPTIM:\n  LR: 0.2\n  MAX_EPOCH: 7\nTRAINER:\n  TOY:\n    N_CTX: 4\n")
    args = _args(dataset_config_file=dataset, config_file=method, root="from_flag",
                 opts=["OPTIM.MAX_EPOCH", "9", "TRAINER.TOY.PREC", "fp32"])
    cfg = setup_cfg(args, ToyTrainer)
    assert cfg.DATASET.NAME == "EuroSAT"
    assert cfg.OPTIM.LR == 0.2  # method yaml after dataset yaml
    assert cfg.DATASET.ROOT == "from_flag"  # flags after yamls
    assert cfg.OPTIM.MAX_EPOCH == 9  # overrides last
    assert cfg.TRAINER.TOY.N_CTX == 4 and cfg.TRAINER.TOY.PREC == "fp32"  # trainer node before yamls
    assert cfg.is_frozen()


def test_flags_override_an_override_free_yaml_and_seed_zero_is_applied(tmp_path):
    method = _yaml(tmp_path, "m.yaml", "SEED: 5\nADV:\n  TRAIN:\n    EPS: 1.0\n")
    cfg = setup_cfg(_args(config_file=method, seed=0, eps=4, alpha=2.67, steps=3, adv_prompt="constant",
                          trainer="CoOp", backbone="ViT-B/32", output_dir="out", resume="r"))
    assert cfg.SEED == 0
    assert (cfg.ADV.TRAIN.EPS, cfg.ADV.TRAIN.ALPHA, cfg.ADV.TRAIN.STEPS) == (4.0, 2.67, 3)
    assert isinstance(cfg.ADV.TRAIN.EPS, float)
    assert cfg.ADV.TRAIN.PROMPT == "constant"
    assert (cfg.TRAINER.NAME, cfg.MODEL.BACKBONE.NAME, cfg.OUTPUT_DIR, cfg.RESUME) == ("CoOp", "ViT-B/32", "out", "r")
    assert setup_cfg(_args(config_file=method)).SEED == 5  # no --seed: the yaml's stays


def test_unknown_key_in_yaml_names_valid_keys_and_closest(tmp_path):
    bad = _yaml(tmp_path, "bad.yaml", "OPTIM:\n  LRR: 0.1\n")
    with pytest.raises(ConfigKeyError) as err:
        setup_cfg(_args(config_file=bad))
    msg = str(err.value)
    assert '"OPTIM.LRR"' in msg and 'Did you mean "OPTIM.LR"' in msg and "OPTIM.MAX_EPOCH" in msg
    assert "bad.yaml" in msg


def test_unknown_override_and_unknown_node():
    with pytest.raises(ConfigKeyError, match='Did you mean "OPTIM.MAX_EPOCH"'):
        setup_cfg(_args(opts=["OPTIM.MAX_EPOCHS", "3"]))
    with pytest.raises(ConfigKeyError, match='Did you mean "TRAINER.TOY"'):
        setup_cfg(_args(opts=["TRAINER.TOYY.N_CTX", "3"]), ToyTrainer)
    with pytest.raises(ConfigKeyError, match="--trainer"):  # trainer keys without the trainer class
        setup_cfg(_args(opts=["TRAINER.TOY.N_CTX", "3"]))


def test_odd_override_list_is_explained():
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        setup_cfg(_args(opts=["OPTIM.LR"]))


def test_type_mismatch_names_the_file(tmp_path):
    bad = _yaml(tmp_path, "typ.yaml", "OPTIM:\n  MAX_EPOCH: ten\n")
    with pytest.raises(ValueError, match="typ.yaml"):
        setup_cfg(_args(config_file=bad))


@pytest.mark.parametrize("opts", [["ADV.TRAIN.EPS", "0.0157"], ["ADV.TEST.EPS", "0.5"]])
def test_fractional_eps_is_refused(opts):
    with pytest.raises(ValueError, match="1/255 units"):
        setup_cfg(_args(opts=opts))


def test_eps_zero_and_integers_are_accepted():
    assert setup_cfg(_args(eps=0)).ADV.TRAIN.EPS == 0
    assert setup_cfg(_args(opts=["ADV.TEST.EPS", "1.0"])).ADV.TEST.EPS == 1.0


def test_peek_trainer_name(tmp_path):
    method = _yaml(tmp_path, "m.yaml", "TRAINER:\n  NAME: FromYaml\n")
    assert peek_trainer_name(_args(trainer="Flag", config_file=method)) == "Flag"
    assert peek_trainer_name(_args(config_file=method, opts=["TRAINER.NAME", "FromOpts"])) == "FromOpts"
    assert peek_trainer_name(_args(config_file=method)) == "FromYaml"
    assert peek_trainer_name(_args()) == ""


def test_integer_override_of_a_float_key_is_a_float_and_prompt_alpha_flag():
    cfg = setup_cfg(_args(opts=["ADV.TRAIN.ALPHA", "-1", "OPTIM.LR", "1"], prompt_alpha=0.1))
    assert cfg.ADV.TRAIN.ALPHA == -1.0 and isinstance(cfg.ADV.TRAIN.ALPHA, float)
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert cfg.ADV.TRAIN.PROMPT_ALPHA == 0.1
    with pytest.raises(ValueError):  # an int key still refuses a float
        setup_cfg(_args(opts=["OPTIM.MAX_EPOCH", "1.5"]))
