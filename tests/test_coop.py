"""ClipTrainer, ZeroshotCLIP and CoOp end to end on a tiny CLIP file and a tiny EuroSAT tree.

The data tree has CoOp's EuroSAT layout (``eurosat/2750/<class>/*.jpg``) with
four classes of noisy solid colours, read by the real EuroSAT plug-in.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train
from ampt.config import setup_cfg
from ampt.models import build_tiny_clip, save_clip_state_dict
from ampt.models.clip_loader import clip
from ampt.models.normalizer import ImageNormalizer
from ampt.plugins import load_plugins
from ampt.results import RunResults
from ampt.utils import set_random_seed
from ampt.utils.logger import reset_logger

REPO = Path(__file__).resolve().parent.parent
COLOURS = {"Forest": (40, 160, 40), "River": (40, 80, 200), "SeaLake": (30, 200, 220), "Highway": (140, 140, 140)}


@pytest.fixture(scope="module")
def api():
    load_plugins("builtin")
    from ampt import api as engine_api

    return engine_api


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        folder = root / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg")
    save_clip_state_dict(build_tiny_clip(seed=0), root / "tiny_clip.pt")
    return root


def _argv(root: Path, out: Path, trainer: str = "CoOp", *extra: str) -> List[str]:
    config = "CoOp/vit_b32.yaml" if trainer == "CoOp" else "ZeroshotCLIP/vit_b32.yaml"
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", str(REPO / "configs/datasets/eurosat.yaml"),
        "--config-file", str(REPO / "configs/trainers" / config),
        "--output-dir", str(out), "--backbone", str(root / "tiny_clip.pt"),
        "DATASET.NUM_SHOTS", "4", "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "USE_CUDA", "False", "VERBOSE", "False",
        f"TRAINER.{trainer.upper()}.PREC", "fp32", *extra,
    ]


def _coop_overrides(epochs: int = 15) -> List[str]:
    return ["TRAINER.COOP.N_CTX", "4", "OPTIM.LR", "0.1", "OPTIM.MAX_EPOCH", str(epochs)]


def build(api, argv: List[str]):
    args = train.build_parser().parse_args(argv)
    cfg = setup_cfg(args, api.TRAINER_REGISTRY.get(args.trainer))
    set_random_seed(cfg.SEED)
    return api.build_trainer(cfg)


def _load(trainer, split: str):
    items = getattr(trainer.dm.dataset, split)
    images = torch.stack([trainer.dm.tfm_test(Image.open(d.impath).convert("RGB")) for d in items])
    return images, torch.tensor([d.label for d in items])


@torch.no_grad()
def _loss(trainer, images, labels) -> float:
    trainer.set_model_mode("eval")
    return F.cross_entropy(trainer.model_inference(images), labels).item()


def test_coop_learns_saves_the_prompt_and_eval_only_reloads_it(api, data_root, tmp_path):
    out = tmp_path / "coop"
    trainer = build(api, _argv(data_root, out, "CoOp", *_coop_overrides()))
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    images, labels = _load(trainer, "train_x")
    before = _loss(trainer, images, labels)
    clip_before = {k: v.clone() for k, v in trainer.model.image_encoder.state_dict().items()}
    trainer.train()
    after = _loss(trainer, images, labels)
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(v, clip_before[k]) for k, v in trainer.model.image_encoder.state_dict().items())

    checkpoint = torch.load(out / "prompt_learner" / "model.pth.tar-15", weights_only=True)
    assert list(checkpoint["state_dict"]) == ["ctx"]  # no frozen token buffers
    trained = RunResults(out)
    assert trained.finished and trained.records[0]["attack"] == "clean"

    test_images, _ = _load(trainer, "test")
    with torch.no_grad():
        expected = trainer.model_inference(test_images)
    fresh = build(api, _argv(data_root, tmp_path / "fresh", "CoOp", *_coop_overrides()))
    with torch.no_grad():
        assert not torch.equal(fresh.model_inference(test_images), expected)
        fresh.load_model(str(out))
        assert torch.equal(fresh.model_inference(test_images), expected)

    evaluated = tmp_path / "eval"
    try:
        argv = _argv(data_root, evaluated, "CoOp", *_coop_overrides())
        assert train.main(["--eval-only", "--model-dir", str(out), *argv]) == 0
    finally:
        reset_logger()
    assert "=> result\n* total: 12\n" in (evaluated / "log.txt").read_text()
    record = RunResults(evaluated).records[0]
    assert record["accuracy"] == trained.records[0]["accuracy"] and record["n_samples"] == 12


def test_zeroshot_clip_accuracy_and_results(api, data_root, tmp_path):
    out = tmp_path / "zs"
    trainer = build(api, _argv(data_root, out, "ZeroshotCLIP"))
    trainer.train()  # no epochs: straight to the final test
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["finished"] and results["run"]["trainer"] == "ZeroshotCLIP"
    (record,) = results["records"]
    template = "a centered satellite photo of {}."  # CoOp's EuroSAT template
    assert record["prompt"] == template and record["attack"] == "clean"

    clip_model = build_tiny_clip(seed=0)
    names = trainer.dm.dataset.classnames
    images, labels = _load(trainer, "test")
    with torch.no_grad():
        text = F.normalize(clip_model.encode_text(clip.tokenize([template.format(n) for n in names])), dim=-1)
        image = F.normalize(clip_model.encode_image(ImageNormalizer()(images)), dim=-1)
    expected = 100.0 * ((image @ text.t()).argmax(dim=1) == labels).float().mean().item()
    assert record["accuracy"] == pytest.approx(expected, abs=1e-3)
    assert record["n_samples"] == len(labels)

    evaluated = tmp_path / "zs_eval"  # CoOp's scripts run zero-shot CLIP with --eval-only
    try:
        assert train.main(["--eval-only", *_argv(data_root, evaluated, "ZeroshotCLIP")]) == 0
    finally:
        reset_logger()
    assert RunResults(evaluated).records == [record]


def test_zeroshot_template_override(api, data_root, tmp_path):
    trainer = build(api, _argv(data_root, tmp_path / "zs", "ZeroshotCLIP",
                               "TRAINER.ZEROSHOTCLIP.TEMPLATE", "a satellite image of {}."))
    assert trainer.template == "a satellite image of {}."
    with pytest.raises(ValueError, match="exactly one"):
        build(api, _argv(data_root, tmp_path / "zs2", "ZeroshotCLIP", "TRAINER.ZEROSHOTCLIP.TEMPLATE", "no slot"))


def test_normalize_in_transforms_is_refused(api, data_root, tmp_path):
    argv = _argv(data_root, tmp_path / "o", "CoOp", "INPUT.TRANSFORMS", "['random_flip', 'normalize']")
    with pytest.raises(ValueError, match=r"remove it.*\['random_flip'\]"):
        build(api, argv)


def test_input_size_must_match_the_backbone(api, data_root, tmp_path):
    argv = _argv(data_root, tmp_path / "o", "CoOp", "INPUT.SIZE", "(224, 224)")
    with pytest.raises(ValueError, match=r"INPUT.SIZE \(224, 224\).*32 x 32 px"):
        build(api, argv)


def test_allow_list_is_enforced(api, data_root, tmp_path):
    trainer = build(api, _argv(data_root, tmp_path / "o", "CoOp", "TRAINER.COOP.N_CTX", "2"))
    assert trainer.check_trainable() == ["prompt_learner.ctx"]
    trainer.model.image_encoder.proj.requires_grad_(True)
    with pytest.raises(RuntimeError, match="image_encoder.proj"):
        trainer.check_trainable()


def test_half_precision_falls_back_on_cpu(api, data_root, tmp_path):
    argv = _argv(data_root, tmp_path / "o", "CoOp", "TRAINER.COOP.N_CTX", "2")
    argv[argv.index("TRAINER.COOP.PREC") + 1] = "fp16"
    with pytest.warns(UserWarning, match="not supported on CPU"):
        trainer = build(api, argv)
    assert trainer.precision == "fp32"
    assert trainer.model.image_encoder.conv1.weight.dtype == torch.float32
