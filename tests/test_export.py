"""Exported runs (``python -m ampt.export``) and the classifier loaded from them (``ampt.load_classifier``).

Registry-driven like tests/test_registry_all.py: every registered trainer's
``digits.yaml`` trains one short run on the toy colours with the demo's tiny
CLIP shape (saved and loaded through the real path), is exported, and the
loaded classifier's logits equal those of the module evaluate.py attacks
(``prompt_model(load_run(run).trainer)``) on the same images. The runs are
trained once for the module, when a test first asks for one.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ampt.api import TRAINER_REGISTRY
from ampt.config_paths import find_config
from ampt.deploy import load_classifier
from ampt.deploy.artifact_format import METADATA_FILE, TENSORS_FILE
from ampt.errors import UserError
from ampt.evaluation.evaluated_prompt import prompt_model
from ampt.evaluation.run_loader import load_run
from ampt.export import export_run
from ampt.models.exported import ExportRefused
from ampt.models.tiny import build_tiny_clip, save_clip_state_dict
from ampt.results import RunResults
from toys import DEMO_SHAPE, TOY_SETS, LazyRuns  # demo_shape_env: conftest

REPO = Path(__file__).resolve().parent.parent
TRAINERS = sorted(name for name in TRAINER_REGISTRY.registered_names()
                  if TRAINER_REGISTRY.get(name).__module__.startswith("ampt_plugins.")
                  and find_config("trainers", name, "digits", required=False) is not None)
EXTRA_CASES = {"CoOp-CSC": ("CoOp", ["TRAINER.COOP.CSC", "True"])}  # a class-specific prompt
ONNX_TRAINERS = ("APT", "AMPT")  # fixed prompts and the router: exported to ONNX


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def runs(demo_shape_env, tmp_path_factory):
    """case -> (run folder, exported folder, logits of evaluate.py's module on ``_images()``): one short run of each
    trainer (no final robust test), exported, on first use."""
    import train

    root, backbone = demo_shape_env
    base = tmp_path_factory.mktemp("export_runs")
    cases = {name: (name, []) for name in TRAINERS} | EXTRA_CASES

    def train_and_export(case):
        name, extra = cases[case]
        out = base / "runs" / case
        argv = ["--root", str(root), "--seed", "1", "--trainer", name,
                "--config-file", str(find_config("trainers", name, "digits")), "--output-dir", str(out),
                "DATASET.NAME", "AptToy", "MODEL.BACKBONE.NAME", str(backbone), "OPTIM.MAX_EPOCH", "1",
                "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TEST.BATCH_SIZE", "12", *extra]
        if getattr(TRAINER_REGISTRY.get(name), "adversarial", False):
            argv += ["ADV.TRAIN.STEPS", "1", "ADV.TEST.ATTACK", ""]
        assert train.main(argv) == 0
        loaded = load_run(out)
        with torch.no_grad():
            reference = prompt_model(loaded.trainer).eval()(_images())
        artifact = base / "exported" / case
        try:
            export_run(out, artifact, onnx=name in ONNX_TRAINERS and case == name, loaded=loaded)
        except ExportRefused as refused:  # a plug-in's model that declares no exportable state of its own
            return out, refused, reference
        return out, artifact, reference

    return LazyRuns(cases, train_and_export)


@pytest.mark.parametrize("name", TRAINERS)
def test_loaded_classifier_equals_evaluated_model(runs, name):
    run_dir, artifact, expected = runs[name]
    if isinstance(artifact, ExportRefused):
        assert TRAINER_REGISTRY.get(name).__module__.startswith("ampt_plugins.ext_"), artifact  # only plug-ins
        assert "\n" not in str(artifact) and "cannot be exported" in str(artifact)
        return
    classifier = load_classifier(artifact)
    images = _images()
    with torch.no_grad():
        got = classifier(images)
    assert got.shape == (5, len(TOY_SETS["AptToy"][1]))
    assert (got - expected).abs().max().item() <= 1e-6
    assert classifier.classnames == TOY_SETS["AptToy"][1]
    document = json.loads((artifact / METADATA_FILE).read_text())
    learned = bool(document["method"]["learned_modules"])
    assert document["method"]["trainer"] == name and document["training"]["checkpoint_epoch"] == (1 if learned else None)
    assert {r["attack"] for r in document["results"]["records"]} >= {"clean"}
    card = (artifact / "README.md").read_text()
    assert card.startswith("---\n") and ("epoch 1 of 1" if learned else "nothing is learned") in card
    if name in ONNX_TRAINERS:
        _check_onnx(artifact, classifier, images)
    elif document["method"]["onnx_refused_because"]:
        with pytest.raises(UserError, match=r"--onnx: .* not exported to ONNX"):
            export_run(run_dir, artifact.with_name(f"{name}-onnx"), onnx=True)


def _check_onnx(artifact: Path, classifier: torch.nn.Module, images: torch.Tensor) -> None:
    import onnx
    import onnxruntime

    path = artifact / "model.onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        logits = classifier(images)
    assert abs(outputs[0] - logits.numpy()).max() <= 1e-4
    weights = classifier.router_weights()
    if weights is not None:  # AMPT: the router weights are the graph's second output
        assert abs(outputs[1] - weights.numpy()).max() <= 1e-4


def test_set_classes_reencodes_unified_prompts_and_refuses_class_specific(runs):
    classifier = load_classifier(runs["AMPT"][1])
    images = _images()
    with torch.no_grad():
        before = classifier(images)
        classifier.set_classes(TOY_SETS["AptToy"][1])
        same = classifier(images)
        classifier.set_classes(["dark", "light", "yellow"])
        other = classifier(images)
    assert (same - before).abs().max().item() <= 1e-5
    assert other.shape == (5, 3) and classifier.classnames == ["dark", "light", "yellow"]
    assert classifier.router_weights().shape == (5, 4)
    csc = load_classifier(runs["CoOp-CSC"][1])
    with pytest.raises(UserError, match="class-specific prompts"):
        csc.set_classes(["dark", "light", "yellow"])


def test_evaluate_accepts_an_exported_folder(runs, demo_shape_env):
    import evaluate

    run_dir, artifact, _ = runs["AMPT"]
    args = ["--attack", "clean", "pgd", "--eps", "4", "--steps", "2", "--seed", "1"]
    assert evaluate.main([str(run_dir), *args, "--force"]) == 0
    copy = artifact.with_name("AMPT-evaluated")
    shutil.copytree(artifact, copy)
    assert evaluate.main([str(copy), *args, "--root", str(demo_shape_env[0])]) == 0
    key = lambda r: (r["attack"], r["eps"], r.get("steps"), r["n_samples"], r.get("seed"))  # noqa: E731
    ran = {key(r): r for r in RunResults(run_dir).records if r.get("seed") == 1}
    exported = RunResults(copy).records
    assert len(exported) == 2
    for record in exported:
        assert record["accuracy"] == ran[key(record)]["accuracy"]
        assert record["weights"] == ran[key(record)]["weights"]  # the same trained weights, by the same digest


def test_tampered_truncated_or_foreign_files_are_refused_in_one_line(runs, tmp_path):
    artifact = runs["APT"][1]
    edited = shutil.copytree(artifact, tmp_path / "edited")
    document = json.loads((edited / METADATA_FILE).read_text())
    document["classes"][0] = "purple"
    (edited / METADATA_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    with pytest.raises(UserError, match="edited or replaced after the export"):
        load_classifier(edited)
    cut = shutil.copytree(artifact, tmp_path / "cut")
    data = (cut / TENSORS_FILE).read_bytes()
    (cut / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or damaged") as err:
        load_classifier(cut)
    assert "\n" not in str(err.value)
    (cut / METADATA_FILE).write_text('{"format": "ampt-mo')
    with pytest.raises(UserError, match="not valid JSON"):
        load_classifier(cut)
    other = save_clip_state_dict(build_tiny_clip(seed=5, **DEMO_SHAPE), tmp_path / "other.pt")
    with pytest.raises(UserError, match="other weights than the ones"):
        load_classifier(artifact, backbone=str(other))


def test_unfinished_run_and_existing_folder_need_force(runs, tmp_path):
    run_dir, artifact, _ = runs["CoOp"]
    with pytest.raises(UserError, match="already holds an exported model"):
        export_run(run_dir, artifact)
    unfinished = shutil.copytree(run_dir, tmp_path / "unfinished")
    RunResults(unfinished).mark_finished(False)
    with pytest.raises(UserError, match="has not finished training"):
        export_run(unfinished, tmp_path / "out")
    export_run(unfinished, tmp_path / "out", force=True)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "NOT finished" in card


def test_predict_writes_a_csv_and_skips_an_unreadable_image(runs, demo_shape_env, tmp_path, capsys):
    from ampt.predict import main

    folder = shutil.copytree(demo_shape_env[0] / "apt_toy" / "test" / "2", tmp_path / "images")
    (folder / "broken.png").write_text("not an image")
    assert main([str(runs["AMPT"][1]), str(folder), "--topk", "2", "--csv", str(tmp_path / "out.csv")]) == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "image,class_1,prob_1,class_2,prob_2,router_w1,router_w2,router_w3,router_w4"
    assert len(lines) == 1 + 3 and all(line.split(",")[1] in TOY_SETS["AptToy"][1] for line in lines[1:])
    assert f"skipped {folder / 'broken.png'}" in capsys.readouterr().err


def test_model_card_is_a_hub_model_card(runs):
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs["AMPT"][1] / "README.md")
    assert card.data.license == "other" and "adversarial-robustness" in card.data.tags
    records = json.loads((runs["AMPT"][1] / METADATA_FILE).read_text())["results"]["records"]
    assert [r.metric_value for r in card.data.eval_results] == [r["accuracy"] for r in records]


def test_a_fresh_process_loads_with_torch_safetensors_clip_only(runs):
    artifact = runs["APT"][1]
    code = (
        "import sys, torch, safetensors, clip, ampt\n"
        f"c = ampt.load_classifier({str(artifact)!r})\n"
        "x = torch.rand(2, 3, 32, 32)\n"
        "print(tuple(c(x).shape))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('yacs', 'trainers', 'ampt_plugins')"
        " or m.startswith(('ampt.config', 'ampt.trainer_base', 'ampt.plugins', 'ampt.engine', 'ampt.evaluation')))\n"
        "print('forbidden:', bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(2, 4)" in out.stdout and "forbidden: []" in out.stdout, out.stdout
