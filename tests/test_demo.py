"""The embedded Digits default: data writer, tiny CLIP pretraining, dataset plug-in, demo table."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ampt.demo import pretrain
from ampt.demo.digits_data import CLASSNAMES, prepare_digits
from ampt.demo.pretrain import pretrain_tiny_clip, sidecar_path
from ampt.demo.run import demo_report, evaluate_command, train_command
from ampt.report import render
from ampt.results import RunResults

N_DIGITS = 1797  # images in scikit-learn's digits
TINY = dict(steps=2, clean_steps=1, batch_size=8, warmup_steps=1)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_digits(root)
    return root


def _parts(dataset_dir: Path) -> dict:
    parts = json.loads((dataset_dir / "split_zhou_Digits.json").read_text())
    parts["pretrain"] = json.loads((dataset_dir / "pretrain.json").read_text())["pretrain"]
    return parts


def test_prepare_digits_writes_coop_layout(digits_root):
    dataset_dir = digits_root / "digits"
    parts = _parts(dataset_dir)
    assert {k: len(v) for k, v in parts.items()} == {"train": 217, "val": 80, "test": 600, "pretrain": 900}
    pngs = sorted((dataset_dir / "images").glob("*/*.png"))
    assert len(pngs) == N_DIGITS
    for relpath, label, classname in (e for part in parts.values() for e in part):
        assert classname == CLASSNAMES[label] and relpath.startswith(classname + "/")
        assert (dataset_dir / "images" / relpath).is_file()
    for part in ("test", "pretrain"):
        counts = np.bincount([e[1] for e in parts[part]], minlength=10)
        assert counts.tolist() == [60 if part == "test" else 90] * 10
    image = Image.open(pngs[0])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_pretraining_part_is_disjoint_from_the_split(digits_root):
    parts = _parts(digits_root / "digits")
    paths = {name: {e[0] for e in entries} for name, entries in parts.items()}
    for name in ("train", "val", "test"):
        assert not paths["pretrain"] & paths[name], name
    assert not paths["train"] & paths["test"] and not paths["val"] & paths["test"]
    assert sum(len(p) for p in paths.values()) == N_DIGITS


def test_prepare_digits_is_idempotent_and_repairs(digits_root):
    dataset_dir = digits_root / "digits"
    split = dataset_dir / "split_zhou_Digits.json"
    before = split.stat().st_mtime_ns
    assert prepare_digits(digits_root) == dataset_dir
    assert split.stat().st_mtime_ns == before  # complete: nothing rewritten

    victim = dataset_dir / "images" / _parts(dataset_dir)["test"][0][0]
    original = victim.read_bytes()
    victim.unlink()
    prepare_digits(digits_root)  # incomplete: written again, identically (deterministic)
    assert victim.read_bytes() == original


def test_short_pretraining_saves_loadable_weights_and_caches(digits_root, tmp_path, monkeypatch):
    from clip.model import build_model

    from ampt.models import load_clip
    from ampt.models.clip_loader import clip

    out = tmp_path / "tiny.pt"
    assert pretrain_tiny_clip(digits_root, out, seed=0, adversarial=True, **TINY) == out
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["settings"]["steps"] == 2 and meta["settings"]["adversarial"] is True
    assert meta["num_pretrain_images"] == 900

    model = build_model(torch.load(out, weights_only=True)).float().eval()
    width = meta["settings"]["arch"]["embed_dim"]
    with torch.no_grad():
        image_features = model.encode_image(torch.rand(2, 3, 32, 32))
        text_features = model.encode_text(clip.tokenize(["a photo of a three.", "zero"]))
    assert image_features.shape == (2, width) and text_features.shape == (2, width)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
    assert load_clip(str(out)).visual.input_resolution == 32  # the toolkit's loading path

    def no_training(*args, **kwargs):
        raise AssertionError("a cached backbone was trained again")

    monkeypatch.setattr(pretrain, "_train", no_training)
    mtime = out.stat().st_mtime_ns
    pretrain_tiny_clip(digits_root, out, seed=0, adversarial=True, **TINY)
    assert out.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="trained again"):  # other settings: not the cached file
        pretrain_tiny_clip(digits_root, out, seed=1, adversarial=True, **TINY)


def test_pretraining_is_deterministic(digits_root, tmp_path):
    first = pretrain_tiny_clip(digits_root, tmp_path / "a.pt", adversarial=False, **TINY)
    second = pretrain_tiny_clip(digits_root, tmp_path / "b.pt", adversarial=False, **TINY)
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = pretrain.build_tiny_clip(**dict(pretrain.PretrainSettings().arch)).state_dict()
    assert not torch.equal(a["visual.conv1.weight"], initial["visual.conv1.weight"])  # it trained


def test_digits_dataset_builds_through_the_registry(tmp_path):
    from ampt.config import get_cfg_default
    from ampt.data import build_dataset
    from ampt.plugins import load_plugins

    load_plugins()
    cfg = get_cfg_default()
    cfg.DATASET.NAME, cfg.DATASET.ROOT = "Digits", str(tmp_path / "fresh")  # a fresh root populates itself
    cfg.DATASET.NUM_SHOTS, cfg.SEED = 4, 1
    dataset = build_dataset(cfg)
    assert dataset.classnames == list(CLASSNAMES) and dataset.num_classes == 10
    assert np.bincount([d.label for d in dataset.train_x]).tolist() == [4] * 10
    assert len(dataset.val) == 40 and len(dataset.test) == 600
    again = build_dataset(cfg)
    assert [d.impath for d in again.train_x] == [d.impath for d in dataset.train_x]


def _write_run(run_dir: Path, clean: float, robust: float, seed: int) -> None:
    results = RunResults(run_dir)
    results.set_run(trainer="CoOp", dataset="Digits", shots=4, seed=seed, train_eps=0, finished=True)
    base = {"dataset": "Digits", "split": "test", "n_samples": 600}
    results.add({**base, "attack": "clean", "eps": 0, "steps": 0, "accuracy": clean})
    results.add({**base, "attack": "pgd", "eps": 4, "steps": 10, "accuracy": robust})


def test_demo_table_is_the_report_of_its_runs(tmp_path):
    _write_run(tmp_path / "CoOp" / "seed1", 90.0, 80.0, 1)
    _write_run(tmp_path / "CoOp" / "seed2", 92.0, 70.0, 2)
    _write_run(tmp_path / "CoOp" / "seed3", 10.0, 10.0, 3)  # a seed the demo was not asked for
    report = demo_report(tmp_path, ["CoOp", "ZeroshotCLIP"], [1, 2])
    assert report.columns == ["clean", "pgd-10@4"] and len(report.rows) == 1  # no ZeroshotCLIP run: no row
    (row,) = report.rows
    assert row.method == "CoOp" and row.seeds == [1, 2]
    assert row.get("clean").values == [90.0, 92.0]
    table = render(report, "markdown")
    assert "91.0 ± 1.4" in table and "75.0 ± 7.1" in table and "pgd-10@4" in table


def test_train_command_uses_coops_cli(tmp_path):
    cmd = train_command("CoOp", tmp_path, tmp_path / "out", 3, tmp_path / "b.pt", 4)
    assert cmd[cmd.index("--trainer") + 1] == "CoOp" and cmd[cmd.index("--seed") + 1] == "3"
    assert cmd[-4:] == ["MODEL.BACKBONE.NAME", str(tmp_path / "b.pt"), "DATASET.NUM_SHOTS", "4"]
    assert cmd[cmd.index("--config-file") + 1].endswith(os.path.join("CoOp", "digits.yaml"))
    assert "--force" in train_command("CoOp", tmp_path, tmp_path, 1, tmp_path, 4, force=True)
    evaluate = evaluate_command(tmp_path / "out", eps=4, steps=10)
    assert evaluate[1].endswith("evaluate.py") and evaluate[2] == str(tmp_path / "out")
    assert evaluate[evaluate.index("--eps") + 1] == "4" and evaluate[evaluate.index("--steps") + 1] == "10"


@pytest.mark.skipif(not os.environ.get("AMPT_DEMO_E2E"),
                    reason="end to end through train.py/evaluate.py (about a minute); run with AMPT_DEMO_E2E=1")
def test_run_demo_end_to_end(digits_root, tmp_path, monkeypatch):
    from ampt.demo import run

    out = tmp_path / "demo"
    opts = ["OPTIM.MAX_EPOCH", "1"]
    methods = ("ZeroshotCLIP", "CoOp")
    table = run.run_demo(digits_root, out, seeds=(1,), methods=methods, opts=opts, eval_steps=1,
                         pretrain_overrides=TINY)
    summary = json.loads((out / run.SUMMARY_FILE).read_text())["report"]
    assert [r["method"] for r in summary["rows"]] == list(methods)
    for row in summary["rows"]:
        assert row["seeds"] == [1] and set(row["columns"]) >= {"clean", "pgd-1@4"}
        assert 0 <= row["columns"]["pgd-1@4"]["mean"] <= row["columns"]["clean"]["mean"] <= 100
    assert "pgd-1@4" in table and table in (out / "results.md").read_text()

    calls = []
    monkeypatch.setattr(run, "_run", lambda cmd: calls.append(cmd))
    run.run_demo(digits_root, out, seeds=(1,), methods=methods, opts=opts, eval_steps=1, pretrain_overrides=TINY)
    assert calls == []  # finished and evaluated runs are not run again


def test_open_clip_pretraining_saves_a_hub_style_folder(digits_root, tmp_path):
    """``backbone_kind="open_clip"``: open_clip's tiny CLIP, saved as a folder open_clip itself reads,
    loaded by the toolkit through the path a user's open_clip model takes."""
    import open_clip

    from ampt.demo.__main__ import build_parser
    from ampt.models import load_clip
    from ampt.models.backbone import backbone_info

    assert build_parser().parse_args(["--backbone-kind", "open_clip"]).backbone_kind == "open_clip"
    folder = pretrain_tiny_clip(digits_root, tmp_path / "tiny_oc", adversarial=True,
                                backbone_kind="open_clip", **TINY)
    assert (folder / "open_clip_config.json").is_file() and sidecar_path(folder).is_file()
    theirs = open_clip.create_model(f"local-dir:{folder}")
    ours = load_clip(str(folder))
    assert type(ours) is type(theirs) is open_clip.CLIP and backbone_info(ours).input_resolution == 32
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    initial = pretrain.build_tiny_open_clip(pretrain._open_clip_cfg(dict(pretrain.PretrainSettings().arch)))
    assert not torch.equal(theirs.visual.conv1.weight, initial.visual.conv1.weight)  # it trained


@pytest.mark.skipif(not os.environ.get("AMPT_DEMO_E2E"),
                    reason="end to end through train.py/evaluate.py (about a minute); run with AMPT_DEMO_E2E=1")
def test_open_clip_backbone_kind_end_to_end(digits_root, tmp_path):
    """``--backbone-kind open_clip``: the methods run on the open_clip tiny CLIP through train.py."""
    from ampt.demo import run

    out = tmp_path / "demo"
    table = run.run_demo(digits_root, out, seeds=(1,), methods=("CoOp",), opts=["OPTIM.MAX_EPOCH", "1"],
                         eval_steps=1, pretrain_overrides=TINY, backbone_kind="open_clip")
    rows = json.loads((out / "open_clip" / run.SUMMARY_FILE).read_text())["report"]["rows"]
    assert [r["method"] for r in rows] == ["CoOp"] and 0 <= rows[0]["columns"]["clean"]["mean"] <= 100
    assert "open_clip" in (out / "open_clip" / "results.md").read_text() and table
    folder = out / "open_clip" / "backbone" / "tiny_open_clip_digits_tecoa"
    assert RunResults(out / "open_clip" / "CoOp" / "seed1").run["backbone"] == str(folder)


def test_demo_command_reports_a_missing_config_in_one_line_before_writing_data(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ampt.demo", "--root", str(tmp_path / "data"), "--output-dir",
                             str(tmp_path / "out"), "--methods", "NoSuchTrainer"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No trainers/NoSuchTrainer/digits.yaml"), lines
    assert not (tmp_path / "data").exists()
