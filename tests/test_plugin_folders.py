"""Plug-in folders are first-class: ``objectives/``, ``trainers/``, ``datasets/`` and ``configs/`` on AMPT_PLUGIN_PATH.

The shipped example ``examples/plugin`` (a loss term, a trainer, a dataset
and their configs) is the plug-in under test. Config discovery
(:mod:`ampt.config_paths`) is checked in this process: it reads files only.
Importing the example's code would register its classes in this process's
registries for the rest of the session, so the tests that need them run in
ONE subprocess with ``AMPT_PLUGIN_PATH=examples/plugin``: the registry-driven
contract tests of ``test_registry_all.py`` on the plug-in's cases (train a
tiny run, save, reload, evaluate under every attack) and this file's
``test_inside_*`` tests, which are skipped everywhere else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ampt.config_paths import config_roots, dataset_config_names, find_config, list_configs
from ampt.errors import UserError, UserFileNotFoundError
from ampt.plugins import PLUGIN_PATH_ENV, plugin_path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "plugin"
INSIDE = str(EXAMPLE) in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep)
inside_only = pytest.mark.skipif(not INSIDE, reason="run by test_example_plugin_passes_the_contract_tests "
                                                    "(needs AMPT_PLUGIN_PATH=examples/plugin)")
outside_only = pytest.mark.skipif(INSIDE, reason="the outer test, not run inside its own subprocess")
# the contract cases of the example (test_registry_all.py ids) and this file's inside tests
SELECTED = "AdvCLIPAdapter or digits_logit_margin or ships_a_digits or plugin_objective or test_inside_"


# ---------------------------------------------------------------- in this process: files only

def test_plugin_path_accepts_any_of_the_four_folders(tmp_path, monkeypatch):
    for folder in ("trainers", "datasets", "objectives", "configs"):
        (tmp_path / folder / folder).mkdir(parents=True)
        monkeypatch.setenv(PLUGIN_PATH_ENV, str(tmp_path / folder))
        assert plugin_path() == [(tmp_path / folder).resolve()]
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(PLUGIN_PATH_ENV, str(tmp_path / "empty"))
    with pytest.raises(UserFileNotFoundError) as err:
        plugin_path()
    message = str(err.value)
    assert "\n" not in message and str((tmp_path / "empty").resolve()) in message
    assert "has no trainers/, datasets/, objectives/ or configs/ folder" in message


def test_configs_are_found_in_the_repository_then_each_plugin_folder(tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "configs" / "datasets").mkdir(parents=True)
    (other / "configs" / "datasets" / "digits.yaml").write_text("DATASET:\n  NAME: NotDigits\n")
    (other / "configs" / "datasets" / "mine.yaml").write_text("DATASET:\n  NAME: Mine\n")
    monkeypatch.setenv(PLUGIN_PATH_ENV, os.pathsep.join([str(EXAMPLE), str(other)]))
    assert config_roots() == [REPO / "configs", EXAMPLE / "configs", other.resolve() / "configs"]
    assert find_config("trainers", "CoOp", "digits") == REPO / "configs" / "trainers" / "CoOp" / "digits.yaml"
    adapter = EXAMPLE / "configs" / "trainers" / "AdvCLIPAdapter" / "digits.yaml"
    assert find_config("trainers", "AdvCLIPAdapter", "digits") == adapter
    assert find_config("trainers", "APT", "digits_logit_margin").parent.parent.parent == EXAMPLE / "configs"
    assert find_config("datasets", "digits") == REPO / "configs" / "datasets" / "digits.yaml"  # first root wins
    assert find_config("datasets", "mine") == other.resolve() / "configs" / "datasets" / "mine.yaml"
    names = dataset_config_names()
    assert names["digits"] == "Digits" and names["class_folders"] == "ClassFolders" and names["mine"] == "Mine"
    assert {"APT/digits", "APT/digits_logit_margin", "AdvCLIPAdapter/digits"} <= set(list_configs("trainers"))
    assert find_config("trainers", "AdvCLIPAdapter", "vit_b32", required=False) is None
    with pytest.raises(UserFileNotFoundError) as err:
        find_config("trainers", "AdvCLIPAdapter", "vit_b32")
    message = str(err.value)
    assert "\n" not in message and "trainers/AdvCLIPAdapter/vit_b32.yaml" in message
    assert str(EXAMPLE / "configs") in message and "found: digits" in message and PLUGIN_PATH_ENV in message


def test_demo_report_and_sweep_look_configs_up_in_plugin_folders(tmp_path, monkeypatch):
    from ampt.demo.run import train_command
    from ampt.report.migrate import dataset_names
    from ampt.sweep.spec import Sweep, dataset_config_file, resolve_file

    monkeypatch.setenv(PLUGIN_PATH_ENV, str(EXAMPLE))
    cmd = train_command("AdvCLIPAdapter", tmp_path, tmp_path / "out", 1, tmp_path / "b.pt", 4)
    assert cmd[cmd.index("--config-file") + 1] == str(EXAMPLE / "configs" / "trainers" / "AdvCLIPAdapter" /
                                                       "digits.yaml")
    assert cmd[cmd.index("--dataset-config-file") + 1] == str(REPO / "configs" / "datasets" / "digits.yaml")
    assert dataset_names()["class_folders"] == "ClassFolders"
    sweep = Sweep(path=str(tmp_path / "sweep.yaml"), name="s", data_root="", output_root="", grid={}, methods={})
    assert dataset_config_file(sweep, "class_folders") == str(EXAMPLE / "configs" / "datasets" / "class_folders.yaml")
    assert resolve_file(sweep.path, "configs/trainers/APT/digits_logit_margin.yaml", "method") == str(
        EXAMPLE / "configs" / "trainers" / "APT" / "digits_logit_margin.yaml")
    monkeypatch.delenv(PLUGIN_PATH_ENV)
    assert "class_folders" not in dataset_names()  # the map follows the plug-in path
    with pytest.raises(ValueError, match="class_folders"):
        dataset_config_file(sweep, "class_folders")


@outside_only
def test_example_plugin_passes_the_contract_tests(tmp_path):
    """ONE subprocess: test_registry_all's contract on the example's cases, and this file's inside tests."""
    env = {**os.environ, PLUGIN_PATH_ENV: str(EXAMPLE), "AMPT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
            "tests/test_registry_all.py", "tests/test_plugin_folders.py", "-k", SELECTED, "-rs"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    # 2 contract cases + their digits-config check + the objective check + the inside tests; nothing skipped
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    assert summary.startswith("6 passed"), summary


# ---------------------------------------------------------------- inside the subprocess: the example loaded

def _write_class_folders(root: Path, classes=("dark", "light", "yellow"), per_class=2) -> Path:
    colours = {"dark": (20, 20, 20), "light": (160, 160, 160), "yellow": (220, 220, 30)}
    for split in ("train", "test"):
        for name in classes:
            folder = root / "class_folders" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((32, 32, 3), colours[name], np.uint8) + i).save(folder / f"{i}.png")
    return root


@inside_only
def test_inside_the_plugin_term_has_its_keys_formula_and_attack_loss():
    import torch

    from ampt.config import get_cfg_default
    from ampt.objectives import OBJECTIVE_REGISTRY

    cfg = get_cfg_default()  # a plug-in term's keys are in every config once the plug-ins loaded
    assert cfg.ADV.OBJECTIVE.LOGIT_MARGIN.KAPPA == 5.0
    term_cls = OBJECTIVE_REGISTRY.get("logit_margin")
    assert term_cls.__module__.startswith("ampt_plugins.ext_") and term_cls.has_inner
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.5, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    step = SimpleNamespace(adv_logits=logits, labels=labels, notes={}, note=lambda n, v: step.notes.update({n: v}))
    term = term_cls(cfg)
    margins = torch.tensor([3.0 - 1.0, 2.0 - 5.0, 0.0 - 1.5])  # z_y - max_{j != y} z_j, by hand
    assert torch.allclose(term.value(step), torch.clamp(5.0 - margins, min=0).mean())
    assert torch.allclose(term.inner(step)(logits, labels), -margins.mean())
    cfg.ADV.OBJECTIVE.LOGIT_MARGIN.KAPPA = -1.0
    with pytest.raises(UserError, match="KAPPA must be >= 0"):
        term_cls(cfg)


@inside_only
def test_inside_the_plugin_term_trains_from_adv_train_loss_and_evaluate_finds_the_plugin_dataset(
        demo_shape_env, tmp_path):
    import evaluate
    import train

    from ampt.results import RunResults

    root, backbone = demo_shape_env
    out = tmp_path / "run"
    argv = ["--root", str(root), "--seed", "1", "--trainer", "AdvCLIPAdapter",
            "--config-file", str(find_config("trainers", "AdvCLIPAdapter", "digits")), "--output-dir", str(out),
            "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone), "OPTIM.MAX_EPOCH", "1",
            "ADV.TRAIN.LOSS", "ce+0.5*logit_margin", "ADV.TRAIN.ATTACK_LOSS", "logit_margin",
            "ADV.TEST.ATTACK", "", "DATALOADER.TEST.BATCH_SIZE", "6"]
    assert train.main(argv) == 0
    run = RunResults(out).run
    assert run["train_loss"] == "ce+0.5*logit_margin" and run["logit_margin_kappa"] == 5.0
    assert run["objective"]["attack_loss"] == "logit_margin"
    assert "logit_margin" in (out / "log.txt").read_text()  # the term's value is logged per step

    other = _write_class_folders(tmp_path / "other")
    assert evaluate.main([str(out), "--dataset", "class_folders", "--root", str(other), "--attack", "clean"]) == 0
    records = [r for r in RunResults(out).records if r["dataset"] == "ClassFolders"]
    assert len(records) == 1 and records[0]["n_samples"] == 6 and records[0]["train_dataset"] == "AptToy"
    with pytest.raises(UserError, match="class_folder"):
        evaluate.main([str(out), "--dataset", "class_folder", "--root", str(other), "--attack", "clean"])
    assert json.loads((out / "results.json").read_text())["run"]["finished"]
