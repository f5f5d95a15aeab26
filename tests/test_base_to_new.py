"""evaluate.py --subsample on a tiny CoOp run trained on the base classes of Digits (tiny CLIP, generated data).

Covers: the run's own test record carries subsample "base" and is recognised
by ``evaluate.py --subsample base`` (same key, not recomputed); ``--subsample
new`` builds the test set and the text features of the new class names and
writes a "new" record beside the base one; a class-specific prompt is
refused with a one-line error (exit 2); the report prints the base-to-new row.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

import ampt.evaluation.evaluate_cli as evaluation
from ampt.evaluation.run_loader import load_run
from ampt.demo.digits_data import CLASSNAMES
from ampt.report import build_report
from ampt.results import RunResults
from toys import COOP_DIGITS  # toy_env, digits_root: conftest

EVAL = ["--n-samples", "40", "--batch-size", "20"]


@pytest.fixture(scope="module")
def base_run(toy_env, digits_root, tmp_path_factory):
    import train

    _, backbone = toy_env
    root = digits_root
    out = tmp_path_factory.mktemp("b2n") / "coop_base"
    argv = ["--root", str(root), "--seed", "1", "--trainer", "CoOp", "--config-file", str(COOP_DIGITS),
            "--dataset-config-file", str(Path(train.__file__).parent / "configs" / "datasets" / "digits.yaml"),
            "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(backbone), "DATASET.SUBSAMPLE_CLASSES", "base",
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "DATALOADER.TEST.BATCH_SIZE", "100"]
    assert train.main(argv) == 0
    return out


def evaluate(*argv) -> int:
    import evaluate as cli

    return cli.main([str(a) for a in argv])


def test_base_and_new_records(base_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(base_run, tmp_path / "run"))
    (own,) = RunResults(run).records
    assert own["subsample"] == "base" and own["n_samples"] == 300  # 5 of 10 digits, 60 test images each

    calls = []
    original = evaluation.accuracies_under_one_attack
    monkeypatch.setattr(evaluation, "accuracies_under_one_attack", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert evaluate(run, "--attack", "clean", "--subsample", "base") == 0
    assert calls == []  # the training's own base record has the same key
    assert evaluate(run, "--attack", "clean", "pgd", "--eps", "4", "--steps", "1", "--subsample", "new") == 0
    assert evaluate(run, "--attack", "clean", "pgd", "--eps", "4", "--steps", "1", "--subsample", "base", *EVAL) == 0
    records = RunResults(run).records
    new = {r["attack"]: r for r in records if r.get("subsample") == "new"}
    assert set(new) == {"clean", "pgd"} and new["clean"]["n_samples"] == 300
    base_subset = next(r for r in records if r.get("subsample") == "base" and r["n_samples"] == 40)
    assert new["clean"] != own and base_subset["attack"] == "clean"

    loaded = load_run(run, subsample="new")
    dataset = loaded.trainer.dm.dataset
    assert dataset.classnames == list(CLASSNAMES[5:]) and {d.label for d in dataset.test} == set(range(5))
    own_run = load_run(run)
    assert own_run.trainer.dm.dataset.classnames == list(CLASSNAMES[:5])  # the run's own classes
    with torch.no_grad():  # same learned context, other class names: other text features
        new_features, base_features = loaded.trainer.model.text_features(), own_run.trainer.model.text_features()
    assert new_features.shape == base_features.shape and not torch.allclose(new_features, base_features)

    text = build_report([run])
    assert "Clean base" in text and f"{own['accuracy']:.1f}" in text and f"{new['clean']['accuracy']:.1f}" in text


def test_class_specific_prompt_is_refused(base_run, tmp_path, monkeypatch, capsys):
    import evaluate as cli

    run = Path(shutil.copytree(base_run, tmp_path / "csc"))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("CSC: false", "CSC: true"))
    with pytest.raises(ValueError, match="class-specific"):
        evaluate(run, "--attack", "clean", "--subsample", "new")
    monkeypatch.setattr(sys, "argv", ["evaluate.py", str(run), "--attack", "clean", "--subsample", "new"])
    assert cli.cli() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "CSC" in err and len(err.strip().splitlines()) == 1
