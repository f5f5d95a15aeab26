"""CLIP loading from files, robust visual weights, precision and the image normalizer."""
from __future__ import annotations

import argparse
import warnings

import pytest
import torch

from ampt.models import ImageNormalizer, build_tiny_clip, load_clip
from ampt.models.backbone import BackboneError
from ampt.models.clip_loader import clip, is_torchscript_archive
from ampt.models.normalizer import CLIP_MEAN, CLIP_STD
from ampt.models.tiny import save_clip_state_dict


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_clip(seed=0)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    return save_clip_state_dict(tiny, tmp_path_factory.mktemp("clip") / "tiny.pt")


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_file_round_trip(tiny, tiny_file):
    model = load_clip(str(tiny_file))
    assert isinstance(model, clip.model.CLIP)
    assert model.visual.input_resolution == 32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert _same_weights(model, tiny)


def test_nested_state_dict_with_module_prefix(tiny, tmp_path):
    nested = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}
    torch.save(nested, tmp_path / "nested.pth.tar")
    assert _same_weights(load_clip(str(tmp_path / "nested.pth.tar")), tiny)
    torch.save({"model": tiny.state_dict()}, tmp_path / "model_key.pt")
    assert _same_weights(load_clip(str(tmp_path / "model_key.pt")), tiny)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_archive(tiny, tmp_path):
    text = clip.tokenize(["a photo of a dog.", "a cat"])
    traced = torch.jit.trace(tiny, (_images(2), text), check_trace=False)
    traced.save(str(tmp_path / "jit.pt"))
    assert is_torchscript_archive(tmp_path / "jit.pt")
    model = load_clip(str(tmp_path / "jit.pt"))
    assert _same_weights(model, tiny)


def test_file_that_needs_code_is_refused(tmp_path):
    torch.save({"state_dict": argparse.Namespace(lr=1)}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="not a plain weights file"):
        load_clip(str(tmp_path / "evil.pt"))


def test_not_a_clip_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RuntimeError, match="does not hold the weights of a CLIP model"):
        load_clip(str(tmp_path / "other.pt"))


def test_unknown_name_lists_models_and_mentions_paths():
    with pytest.raises(FileNotFoundError) as info:
        load_clip("ViT-B/33")
    message = str(info.value)
    assert "ViT-B/32" in message and "RN50" in message and "path" in message


def _perturbed_visual_state(tiny) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in tiny.visual.state_dict().items()}


@pytest.mark.parametrize("layout", ["tecoa", "plain", "visual_prefix"])
def test_robust_weights_replace_the_image_encoder(tiny, tiny_file, tmp_path, layout):
    visual = _perturbed_visual_state(tiny)
    if layout == "tecoa":
        payload = {"epoch": 10, "vision_encoder_state_dict": visual, "best_acc1": torch.tensor(50.0)}
    elif layout == "plain":
        payload = visual
    else:
        payload = {f"visual.{k}": v for k, v in visual.items()}
    torch.save(payload, tmp_path / "robust.pt")
    standard = load_clip(str(tiny_file))
    robust = load_clip(str(tiny_file), robust_weights=str(tmp_path / "robust.pt"))
    with torch.no_grad():
        assert not torch.allclose(standard.encode_image(_images()), robust.encode_image(_images()))
    for key, value in visual.items():
        assert torch.equal(robust.visual.state_dict()[key], value)
    assert _same_weights(robust.transformer, standard.transformer)  # text side untouched


def test_mismatched_robust_weights_name_the_keys(tiny, tiny_file, tmp_path):
    visual = dict(tiny.visual.state_dict())
    visual.pop("proj")
    visual["extra.weight"] = torch.zeros(1)
    torch.save({"vision_encoder_state_dict": visual}, tmp_path / "bad.pt")
    with pytest.raises(BackboneError) as info:
        load_clip(str(tiny_file), robust_weights=str(tmp_path / "bad.pt"))
    assert "missing keys [proj]" in str(info.value)
    assert "unexpected keys [extra.weight]" in str(info.value)


def test_missing_robust_weights_file(tiny_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="ROBUST_WEIGHTS"):
        load_clip(str(tiny_file), robust_weights=str(tmp_path / "absent.pt"))


def test_image_normalizer_uses_clip_statistics():
    norm = ImageNormalizer()
    x = torch.rand(2, 3, 4, 4)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), (x - mean) / std)
    assert norm.state_dict() == {}  # constants, not checkpoint content
