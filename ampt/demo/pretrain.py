"""Pretrain the demo's tiny CLIP on the pretraining part of Digits.

The model is the ``clip`` package's own ViT CLIP (``build_tiny_clip``),
trained from scratch with a CE-to-text contrastive loss: each image's logits
are its scaled cosine similarities to one caption per class, as in TeCoA.
Captions are worded differently from the zero-shot template the demo uses
("a photo of a {}."), so the hand-written template is not already right and
prompt tuning has something to learn.

``adversarial=True`` trains TeCoA-style: after ``clean_steps`` clean steps,
each batch is replaced by its PGD adversarial images (L-inf, image side,
captions fixed during the attack), so the backbone is robust, as the TeCoA
weights APT starts from. Inputs are pixels in [0, 1]; CLIP's mean/std
normalization is applied inside, as the toolkit's model wrapper does.

The result is a flat state dict loadable with
``clip.model.build_model(torch.load(path, weights_only=True))``, plus a JSON
sidecar (``<out_path>.json``) with the settings; a later call with the same
settings reuses the file. With ``backbone_kind="open_clip"`` the same tiny
architecture is built by open_clip and saved as a folder laid out like a hub
repository (``open_clip_config.json`` + weights); it is trained after being
loaded through :func:`ampt.models.load_clip`, the path a user's open_clip
model takes.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..attacks import pgd_linf
from ..models import ImageNormalizer, TextEncoder, build_tiny_clip, load_clip, save_clip_state_dict
from ..models.tiny import build_tiny_open_clip, save_open_clip_folder
from ..utils.io import read_json, write_json
from .digits_data import CLASSNAMES, IMAGE_DIR, prepare_digits, read_pretrain_entries

logger = logging.getLogger(__name__)

BACKBONE_KINDS = ("clip", "open_clip")  # which package's model class the tiny CLIP is built with

# Pretraining captions; none of them is the demo's zero-shot template "a photo of a {}.".
CAPTIONS = (
    "handwritten {}",
    "the digit {} written by hand",
    "a scan of a handwritten {}",
    "{}, drawn with a pen",
)


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the pretrained weights (stored in the sidecar)."""

    seed: int = 0
    adversarial: bool = True
    steps: int = 500  # optimizer steps in all
    clean_steps: int = 100  # adversarial=True: clean steps before the PGD ones
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak learning rate, after a linear warm-up
    warmup_steps: int = 30
    weight_decay: float = 0.05
    eps: float = 4.0  # training PGD budget, in 1/255 units
    alpha: float = 2.0  # training PGD step, in 1/255 units
    attack_steps: int = 2
    max_shift: int = 2  # random translation of each image, in pixels
    captions: Tuple[str, ...] = CAPTIONS
    arch: Tuple[Tuple[str, int], ...] = (
        ("image_resolution", 32), ("vision_width", 96), ("vision_layers", 3),
        ("vision_patch_size", 8), ("text_width", 64), ("text_layers", 2), ("embed_dim", 64),
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.clean_steps < 0 or self.attack_steps < 0:
            raise ValueError(f"need steps >= 1, batch_size >= 1, clean_steps >= 0, attack_steps >= 0 ({self})")
        if self.eps < 0 or self.alpha < 0:
            raise ValueError(f"eps and alpha are in 1/255 units and >= 0 (got {self.eps}, {self.alpha})")

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["captions"] = list(self.captions)
        out["arch"] = dict(self.arch)
        return out


def sidecar_path(out_path: Union[str, Path]) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".json")


def _open_clip_cfg(arch: Dict[str, int]) -> Dict[str, Any]:
    """``PretrainSettings.arch`` (``build_tiny_clip``'s arguments) as an open_clip model config."""
    return {
        "embed_dim": arch["embed_dim"], "quick_gelu": True,  # the clip package's activation
        "vision_cfg": {"image_size": arch["image_resolution"], "layers": arch["vision_layers"],
                       "width": arch["vision_width"], "patch_size": arch["vision_patch_size"], "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": arch["text_width"],
                     "heads": max(1, arch["text_width"] // 64), "layers": arch["text_layers"]},
    }


def _initial_model(kind: str, arch: Dict[str, int], seed: int, out_path: Path) -> torch.nn.Module:
    """The randomly initialised tiny CLIP; open_clip's goes through a saved folder and ``load_clip``."""
    if kind == "clip":
        return build_tiny_clip(seed=seed, **arch)
    cfg = _open_clip_cfg(arch)
    save_open_clip_folder(build_tiny_open_clip(cfg, seed=seed), out_path, cfg)
    return load_clip(str(out_path))


def _cached(out_path: Path, settings: PretrainSettings) -> bool:
    side = sidecar_path(out_path)
    if not (out_path.exists() and side.is_file()):
        return False
    return read_json(side).get("settings") == settings.to_json()


def load_images(dataset_dir: Path, entries: list) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images listed in ``entries`` as pixels in [0, 1] ``[N, 3, H, W]`` and labels ``[N]``."""
    image_dir = dataset_dir / IMAGE_DIR
    arrays = [np.asarray(Image.open(image_dir / e[0]).convert("RGB")) for e in entries]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)
    return images, torch.tensor([int(e[1]) for e in entries])


@functools.lru_cache(maxsize=None)
def _normalizer(device: torch.device) -> ImageNormalizer:
    return ImageNormalizer().to(device)


def class_logits(model: torch.nn.Module, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Scaled cosine logits of pixels ``images`` against normalized ``text_features [C, D]``."""
    image_features = F.normalize(model.encode_image(_normalizer(images.device)(images)), dim=-1)
    return model.logit_scale.exp().clamp(max=100.0) * image_features @ text_features.t()


def caption_tokens(text_encoder: TextEncoder, captions: Tuple[str, ...]) -> torch.Tensor:
    """Token ids ``[P, C, 77]`` of every caption phrasing for every class."""
    return torch.stack([text_encoder.tokenizer.tokenize([c.format(n) for n in CLASSNAMES]) for c in captions])


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding, the background)."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _lr_at(step: int, s: PretrainSettings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return 0.5 * s.lr * (1 + math.cos(math.pi * progress))


def _train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
           s: PretrainSettings, device: torch.device) -> Dict[str, float]:
    generator = torch.Generator().manual_seed(s.seed)  # batches, shifts, captions (CPU)
    attack_generator = torch.Generator(device=device).manual_seed(s.seed + 1)  # PGD random starts
    text_encoder = TextEncoder(model)
    tokens = caption_tokens(text_encoder, s.captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    classes = torch.arange(len(CLASSNAMES))
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(s.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, s)
        index = torch.randint(0, len(images), (s.batch_size,), generator=generator)
        x = _shift(images[index], s.max_shift, generator).to(device)
        y = labels[index].to(device)
        phrasing = torch.randint(0, len(s.captions), (len(CLASSNAMES),), generator=generator)
        ids = tokens[phrasing, classes].to(device)
        text_features = F.normalize(text_encoder(text_encoder.token_embedding(ids), ids), dim=-1)
        if s.adversarial and step >= s.clean_steps:
            fixed = text_features.detach()
            x = pgd_linf(lambda v: class_logits(model, v, fixed), x, y, s.eps / 255,
                         s.alpha / 255, s.attack_steps, generator=attack_generator)
        logits = class_logits(model, x, text_features)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= s.steps - 50:  # statistics of the last 50 steps
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if (step + 1) % 100 == 0 or step + 1 == s.steps:
            logger.info("pretrain step %d/%d loss %.4f", step + 1, s.steps, loss.item())
    model.eval()
    return {"final_train_loss": loss_sum / seen, "final_train_accuracy": 100.0 * correct / seen}


def pretrain_tiny_clip(root: Union[str, Path], out_path: Union[str, Path], seed: int = 0,
                       adversarial: bool = True, num_threads: int = 1,
                       device: Optional[str] = None, force: bool = False, backbone_kind: str = "clip",
                       **overrides: Any) -> Path:
    """Pretrain (or reuse) the tiny Digits CLIP and return the state-dict path (open_clip: the folder).

    ``overrides`` are :class:`PretrainSettings` fields (``steps``, ``lr``, ...).
    ``num_threads`` sets torch's intra-op threads during training and is
    restored afterwards. The default, 1, is the fastest for this tiny model:
    on 2 cores shared with one other busy process, 2 threads took 84 s for
    what 1 thread did in 5.6 s. ``device`` defaults to CUDA when
    available (the weights then differ slightly from CPU-trained ones). The
    pretraining images are the ``pretrain.json`` part of Digits, disjoint
    from train/val/test.
    """
    out_path = Path(out_path)
    if backbone_kind not in BACKBONE_KINDS:
        raise ValueError(f'Unknown backbone kind "{backbone_kind}". Valid: {", ".join(BACKBONE_KINDS)}')
    settings = PretrainSettings(seed=seed, adversarial=adversarial, **overrides)
    if not force and _cached(out_path, settings):
        logger.info("Reusing the pretrained tiny CLIP %s", out_path)
        return out_path
    dataset_dir = prepare_digits(root)
    images, labels = load_images(dataset_dir, read_pretrain_entries(dataset_dir))
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        model = _initial_model(backbone_kind, dict(settings.arch), seed, out_path).to(target)
        start = time.perf_counter()
        stats = _train(model, images, labels, settings, target)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    if backbone_kind == "open_clip":
        save_open_clip_folder(model, out_path, _open_clip_cfg(dict(settings.arch)))
    else:
        save_clip_state_dict(model, out_path)
    write_json({"settings": settings.to_json(), "seconds": round(seconds, 1), "device": str(target),
                "num_pretrain_images": len(labels), **stats}, sidecar_path(out_path))
    logger.info("Pretrained the tiny CLIP in %.1f s -> %s", seconds, out_path)
    return out_path
