"""The open_clip backend: loading, text towers, prompts, trainers and robust visual weights.

A tiny open_clip model (config registered with open_clip, random weights) is
saved the way users meet open_clip models: a folder laid out like a hub
repository (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``, what
``hf-hub:`` downloads) and an ``open_clip:<arch>`` + weights file pair. Both
are loaded by open_clip's own ``create_model`` through ``load_clip``; the
toolkit's logits are compared with open_clip's ``encode_image``/``encode_text``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ampt.models import FixedPromptCLIP, PromptLearner, PromptedCLIP, TextEncoder, load_clip
from ampt.models.backbone import BackboneError, backbone_info
from ampt.models.tiny import TINY_OPEN_CLIP_CFG, build_tiny_clip, build_tiny_open_clip, save_open_clip_folder

ARCH = "ampt-tiny-test"
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # not OpenAI's: the model's own must be used
NAMES = ["dog", "cat", "traffic light", "sea or lake"]
# open_clip text towers unlike OpenAI's: CustomTextCLIP with last-token pooling, no causal mask,
# LayerScale and a biased projection; and EOS-id pooling under the causal mask with LayerScale
VARIANTS = {
    "standard": TINY_OPEN_CLIP_CFG,
    "custom_last_bidirectional": {
        **TINY_OPEN_CLIP_CFG, "custom_text": True,
        "vision_cfg": {**TINY_OPEN_CLIP_CFG["vision_cfg"], "ls_init_value": 0.5},
        "text_cfg": {**TINY_OPEN_CLIP_CFG["text_cfg"], "pool_type": "last", "no_causal_mask": True,
                     "ls_init_value": 0.5, "proj_bias": True, "context_length": 20},
    },
    "eos_layerscale": {
        **TINY_OPEN_CLIP_CFG,
        "text_cfg": {**TINY_OPEN_CLIP_CFG["text_cfg"], "pool_type": "eos", "eos_id": 49407, "ls_init_value": 0.5},
    },
}


def _randomize_layer_scales(model: torch.nn.Module) -> None:
    """LayerScale starts as a constant; make it a real per-channel scale."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{variant: (open_clip model, folder)} plus the registered arch's weights file."""
    base = tmp_path_factory.mktemp("open_clip")
    (base / "configs").mkdir()
    (base / "configs" / f"{ARCH}.json").write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(base / "configs")
    out = {}
    for i, (variant, cfg) in enumerate(VARIANTS.items()):
        model = build_tiny_open_clip(cfg, seed=i)
        _randomize_layer_scales(model)
        out[variant] = (model, save_open_clip_folder(model, base / variant, cfg, mean=MEAN, std=STD))
    weights = base / "tiny_open_clip.pt"
    torch.save(out["standard"][0].state_dict(), weights)
    out["weights"] = weights
    return out


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _reference_logits(model, tokenizer, images, texts, mean=MEAN, std=STD):
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    image = model.encode_image((images - mean) / std, normalize=True)
    text = model.encode_text(tokenizer(texts), normalize=True)
    return model.logit_scale.exp() * image @ text.t()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero_shot_logits_equal_open_clip_own(saved, variant):
    model, folder = saved[variant]
    loaded = load_clip(str(folder))  # a folder as a hub repository is laid out; open_clip builds it
    info = backbone_info(loaded)
    assert (info.kind, info.input_resolution, info.mean, info.std) == ("open_clip", 32, MEAN, STD)
    assert info.tokenizer.context_length == VARIANTS[variant]["text_cfg"]["context_length"]
    zero_shot = FixedPromptCLIP(loaded, NAMES, "a photo of a {}.")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        ours = zero_shot(_images())
        theirs = _reference_logits(model, tokenizer, _images(), [f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_arch_and_weights_file_load_like_a_pretrained_tag(saved):
    loaded = load_clip(f"open_clip:{ARCH}", pretrained=str(saved["weights"]))
    model = saved["standard"][0]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    info = backbone_info(loaded)  # a bare file carries no preprocess config: open_clip's defaults
    assert info.mean == open_clip.OPENAI_DATASET_MEAN and info.name.endswith(f"({saved['weights']})")
    with torch.no_grad():
        ours = FixedPromptCLIP(loaded, NAMES)(_images())
        theirs = _reference_logits(model, open_clip.get_tokenizer(ARCH), _images(),
                                   [f"a photo of a {n}." for n in NAMES], info.mean, info.std)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_learner_with_word_context_equals_written_prompt(saved, variant, position):
    model, folder = saved[variant]
    loaded = load_clip(str(folder))
    learner = PromptLearner(loaded, NAMES, ctx_init="a photo of a", class_token_position=position)
    with torch.no_grad():
        features = TextEncoder(loaded)(*learner())
    if position == "end":
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        expected = model.encode_text(tokenizer([f"a photo of a {n}." for n in NAMES]))
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    else:  # the same words in another order: same shape, finite, and not the "end" features
        assert features.shape == (len(NAMES), 32) and torch.isfinite(features).all()


def test_prompted_model_gradients_reach_the_context(saved):
    loaded = load_clip(str(saved["custom_last_bidirectional"][1]))
    for p in loaded.parameters():
        p.requires_grad_(False)
    model = PromptedCLIP(loaded, PromptLearner(loaded, NAMES, n_ctx=3))
    loss = F.cross_entropy(model(_images(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shared_prefix_pass_equals_the_plain_pass(saved, variant):
    """open_clip towers (LayerScale, EOS pooling): the shared-prefix pass where the tower allows it."""
    from ampt.models.text_encoder import TextPassOptions

    loaded = load_clip(str(saved[variant][1]))
    for p in loaded.parameters():
        p.requires_grad_(False)
    model = PromptedCLIP(loaded, PromptLearner(loaded, NAMES, n_ctx=3, n_prompts=2))
    assert model.text_encoder.can_share_prefix == (variant != "custom_last_bidirectional")
    results = []
    for options in (TextPassOptions(shared_prefix=False), TextPassOptions(checkpoint=True, chunk_rows=2)):
        model.text_encoder.options = options
        model.prompt_learner.ctx.grad = None
        features = model.text_features()
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        results.append((features.detach(), model.prompt_learner.ctx.grad.clone()))
    (plain, plain_grad), (shared, shared_grad) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_grad, plain_grad, rtol=1e-4, atol=1e-4 * plain_grad.abs().max().item())


# ---------------------------------------------------------------- refusals

def _folder_with(tmp_path, text_cfg_update, name="bad") -> Path:
    cfg = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    cfg["text_cfg"].update(text_cfg_update)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return folder


def test_hugging_face_text_tower_refused_before_any_download(tmp_path):
    folder = _folder_with(tmp_path, {"hf_model_name": "roberta-base", "hf_tokenizer_name": "roberta-base"})
    with pytest.raises(BackboneError, match=r"Hugging Face transformer.*hf_model_name=roberta-base.*supported: "):
        load_clip(str(folder))


@pytest.mark.parametrize("update, reason", [
    ({"embed_cls": True}, "appends a class token"),
    ({"qk_norm": True}, r"text blocks are \['CustomResidualAttentionBlock'\]"),
])
def test_other_text_towers_refused(tmp_path, update, reason):
    cfg = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    cfg["text_cfg"].update(update)
    cfg["custom_text"] = True
    folder = save_open_clip_folder(build_tiny_open_clip(cfg), tmp_path / "m", cfg)
    with pytest.raises(BackboneError, match=reason) as info:
        load_clip(str(folder))
    assert "supported: the clip package's CLIP" in str(info.value) and "\n" not in str(info.value)


def test_open_clip_name_errors(saved, tmp_path):
    with pytest.raises(BackboneError, match="needs MODEL.BACKBONE.PRETRAINED"):
        load_clip(f"open_clip:{ARCH}")
    with pytest.raises(BackboneError, match="Did you mean: ViT-B-32"):
        load_clip("open_clip:ViT-B-33", pretrained="openai")
    with pytest.raises(FileNotFoundError, match=r"neither a pretrained tag of ViT-B-32 \(openai, laion"):
        load_clip("open_clip:ViT-B-32", pretrained=str(tmp_path / "absent.pt"))
    with pytest.raises(BackboneError, match="only read with MODEL.BACKBONE.NAME open_clip:<arch>"):
        load_clip(str(saved["standard"][1]), pretrained="laion2b_s34b_b79k")
    wrong = build_tiny_open_clip({**TINY_OPEN_CLIP_CFG, "embed_dim": 16})
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(BackboneError, match=r"open_clip could not load .*size mismatch"):
        load_clip(f"open_clip:{ARCH}", pretrained=str(tmp_path / "wrong.pt"))


# ---------------------------------------------------------------- robust visual weights

def _robust_visual(model) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in model.visual.state_dict().items()}


@pytest.mark.parametrize("source", ["open_clip", "clip"])
@pytest.mark.parametrize("layout", ["plain", "visual_prefix", "apt", "whole_checkpoint"])
@pytest.mark.parametrize("target", ["open_clip", "clip"])
def test_robust_visual_weights_load_on_both_backbones(saved, tmp_path, source, layout, target):
    """Visual state dicts in open_clip's naming (RobustVLM's files) and clip's, into either backbone."""
    donor = saved["standard"][0] if source == "open_clip" else build_tiny_clip(seed=5)
    visual = _robust_visual(donor)
    payload = {
        "plain": visual,
        "visual_prefix": {f"visual.{k}": v for k, v in visual.items()},
        "apt": {"vision_encoder_state_dict": visual, "epoch": 10},
        "whole_checkpoint": {"state_dict": {**{f"module.visual.{k}": v for k, v in visual.items()},
                                            "module.logit_scale": torch.ones(())}},
    }[layout]
    torch.save(payload, tmp_path / "robust.pt")
    if target == "open_clip":
        standard = load_clip(str(saved["standard"][1]))
        robust = load_clip(str(saved["standard"][1]), robust_weights=str(tmp_path / "robust.pt"))
    else:
        build_tiny_clip(seed=0)
        from ampt.models.tiny import save_clip_state_dict

        path = save_clip_state_dict(build_tiny_clip(seed=0), tmp_path / "tiny_clip.pt")
        standard, robust = load_clip(str(path)), load_clip(str(path), robust_weights=str(tmp_path / "robust.pt"))
    for key, value in visual.items():
        assert torch.equal(robust.visual.state_dict()[key], value)
    for key, value in standard.state_dict().items():
        if not key.startswith("visual."):
            assert torch.equal(robust.state_dict()[key], value)  # the text tower is untouched


def test_layer_scale_weights_refused_on_a_tower_without_it(saved, tmp_path):
    model = saved["custom_last_bidirectional"][0]  # vision LayerScale, gammas not ones
    torch.save(model.visual.state_dict(), tmp_path / "ls.pt")
    with pytest.raises(BackboneError, match=r"LayerScale gammas \(\[transformer.resblocks.0.ls_1.gamma"):
        load_clip(str(saved["standard"][1]), robust_weights=str(tmp_path / "ls.pt"))
    clip_model_weights = tmp_path / "clip.pt"
    from ampt.models.tiny import save_clip_state_dict

    save_clip_state_dict(build_tiny_clip(seed=0), clip_model_weights)
    with pytest.raises(BackboneError, match="LayerScale"):
        load_clip(str(clip_model_weights), robust_weights=str(tmp_path / "ls.pt"))


def test_wrong_robust_weights_are_named_precisely(saved, tmp_path):
    other = build_tiny_clip(vision_width=128, seed=0)  # another architecture
    torch.save({"vision_encoder_state_dict": other.visual.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(BackboneError) as info:
        load_clip(str(saved["standard"][1]), robust_weights=str(tmp_path / "other.pt"))
    message = str(info.value)
    assert str(tmp_path / "other.pt") in message and "missing keys []" in message
    assert "class_embedding [128] (backbone [64])" in message and "conv1.weight [128, 3, 8, 8]" in message
    partial = dict(saved["standard"][0].visual.state_dict())
    partial.pop("ln_post.weight")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(BackboneError, match=r"missing keys \[ln_post.weight\], unexpected keys \[\]"):
        load_clip(str(saved["standard"][1]), robust_weights=str(tmp_path / "partial.pt"))
    hf = {"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}
    torch.save(hf, tmp_path / "hf.pt")
    with pytest.raises(BackboneError, match="Hugging Face transformers naming"):
        load_clip(str(saved["standard"][1]), robust_weights=str(tmp_path / "hf.pt"))


# ---------------------------------------------------------------- trainers on the open_clip backbone

AMPT_DIGITS = Path(__file__).resolve().parent.parent / "configs" / "trainers" / "AMPT" / "digits.yaml"


@pytest.fixture(scope="module")
def open_clip_toy_env(saved, toy_root):
    """The APT tests' toy data (conftest) with the tiny open_clip folder as the backbone."""
    return toy_root, saved["standard"][1]


@pytest.mark.parametrize("trainer_name", ["CoOp", "APT", "AMPT"])
def test_trainers_train_two_steps_and_evaluate(open_clip_toy_env, tmp_path, monkeypatch, trainer_name):
    from toys import APT_DIGITS, COOP_DIGITS, make_cfg

    from ampt.api import build_trainer
    from ampt.results import RunResults
    from ampt.utils.logger import reset_logger

    monkeypatch.setenv("AMPT_NO_PROGRESS", "1")
    config = {"CoOp": COOP_DIGITS, "APT": APT_DIGITS, "AMPT": AMPT_DIGITS}[trainer_name]
    opts = ["OPTIM.MAX_EPOCH", "1", "ADV.TEST.STEPS", "2", "DATASET.NUM_SHOTS", "4"]  # 16 images, batch 8
    torch.manual_seed(0)
    trainer = build_trainer(make_cfg(open_clip_toy_env, tmp_path / "run", trainer=trainer_name,
                                     config=config, opts=opts))
    try:
        assert type(trainer.model.normalizer).__name__ == "ImageNormalizer"
        assert tuple(trainer.model.normalizer.mean.flatten().tolist()) == pytest.approx(MEAN)
        start = trainer.model.prompt_learner.ctx.detach().clone()
        steps = []
        trainer.model.text_encoder.register_forward_hook(lambda *_: steps.append(1))  # one text pass per step
        trainer.train()
    finally:
        reset_logger()
    assert not torch.equal(start, trainer.model.prompt_learner.ctx.detach())  # the context trained
    assert len(steps) >= 2
    results = RunResults(trainer.output_dir)
    assert results.finished and results.run["backbone"] == str(open_clip_toy_env[1])
    attacks = {r["attack"]: r for r in results.records}
    assert set(attacks) == ({"clean"} if trainer_name == "CoOp" else {"clean", "pgd"})
    assert all(0 <= r["accuracy"] <= 100 and r["n_samples"] == 12 for r in results.records)


def test_openai_tags_get_quick_gelu_as_their_weights_need():
    """open_clip's plain ViT configs use GELU; OpenAI's weights were trained with QuickGELU (no download)."""
    from ampt.models.open_clip_backend import _tag_needs_quick_gelu

    assert _tag_needs_quick_gelu(open_clip, "ViT-B-32", "openai")
    assert _tag_needs_quick_gelu(open_clip, "ViT-L-14", "openai")
    assert not _tag_needs_quick_gelu(open_clip, "ViT-B-32", "laion2b_s34b_b79k")
    assert not _tag_needs_quick_gelu(open_clip, "ViT-B-32-quickgelu", "openai")  # already in the config


def test_configs_saved_with_dassls_boolean_pretrained_still_merge_and_resume(tmp_path):
    """Run folders written before MODEL.BACKBONE.PRETRAINED named an open_clip tag hold ``True``."""
    from ampt.config import get_cfg_default, merge_from_file
    from ampt.engine.run_config import config_changes

    (tmp_path / "config.yaml").write_text("MODEL:\n  BACKBONE:\n    NAME: ViT-B/32\n    PRETRAINED: true\n")
    cfg = get_cfg_default()
    merge_from_file(cfg, str(tmp_path / "config.yaml"))
    assert cfg.MODEL.BACKBONE.PRETRAINED == ""
    assert config_changes({"MODEL": {"BACKBONE": {"PRETRAINED": True}}}, get_cfg_default()) == []
    assert config_changes({"MODEL": {"BACKBONE": {"PRETRAINED": "openai"}}}, get_cfg_default()) != []


def test_export_round_trip_on_an_open_clip_folder(open_clip_toy_env, tmp_path):
    """python -m ampt.export on a run over the hub-style folder: the record names it, its weights' hash is
    checked on loading, the loaded classifier and its ONNX graph give evaluate.py's logits."""
    import onnxruntime
    import train

    from ampt.config_paths import find_config
    from ampt.deploy import load_classifier
    from ampt.evaluation.evaluated_prompt import prompt_model
    from ampt.evaluation.run_loader import load_run
    from ampt.export import export_run

    root, folder = open_clip_toy_env
    argv = ["--root", str(root), "--seed", "1", "--trainer", "CoOp", "--config-file",
            str(find_config("trainers", "CoOp", "digits")), "--output-dir", str(tmp_path / "run"), "DATASET.NAME",
            "AptToy", "MODEL.BACKBONE.NAME", str(folder), "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]
    assert train.main(argv) == 0
    loaded = load_run(tmp_path / "run")
    images = _images()
    with torch.no_grad():
        expected = prompt_model(loaded.trainer).eval()(images)
    artifact = export_run(tmp_path / "run", tmp_path / "exported", onnx=True, loaded=loaded)
    document = json.loads((artifact / "ampt_model.json").read_text())
    assert document["backbone"]["kind"] == "open_clip" and document["backbone"]["name"] == str(folder)
    assert document["preprocess"]["mean"] == pytest.approx(list(MEAN))
    classifier = load_classifier(artifact)
    session = onnxruntime.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert (classifier(images) - expected).abs().max().item() <= 1e-6
    assert abs(session.run(None, {"images": images.numpy()})[0] - expected.numpy()).max() <= 1e-4
