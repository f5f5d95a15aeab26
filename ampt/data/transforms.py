"""Image transforms from ``INPUT.*`` with Dassl's semantics.

Train: resize to ``INPUT.SIZE`` unless a random crop is listed, then the
listed augmentations in Dassl's fixed order, ``ToTensor`` (pixels in
[0, 1]), then tensor-level ones (cutout, normalize, gaussian_noise,
instance_norm). Test: resize the short side to ``max(INPUT.SIZE)``, center
crop, ``ToTensor`` and ``normalize``/``instance_norm`` if listed. The CLIP
trainers normalize inside the model and refuse ``normalize``; it exists
for Dassl parity.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable, List, Optional, Sequence

import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import InterpolationMode
from ..errors import UserError

logger = logging.getLogger(__name__)

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
PIL_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
SUPPORTED_CHOICES = (
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop",
    "random_translation", "center_crop", "cutout", "gaussian_noise", "colorjitter",
    "randomgrayscale", "gaussian_blur",
)
DASSL_ONLY_CHOICES = ("imagenet_policy", "cifar10_policy", "svhn_policy", "randaugment",
                      "randaugment_fixmatch", "randaugment2")


class Random2DTranslation:
    """Dassl's: with probability ``p`` enlarge by 1/8 and crop a random ``height x width`` window."""

    def __init__(self, height: int, width: int, p: float = 0.5, interpolation: Any = Image.BILINEAR) -> None:
        self.height, self.width, self.p, self.interpolation = height, width, p, interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.uniform(0, 1) > self.p:
            return img.resize((self.width, self.height), self.interpolation)
        new_w, new_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        resized = img.resize((new_w, new_h), self.interpolation)
        x1 = int(round(random.uniform(0, new_w - self.width)))
        y1 = int(round(random.uniform(0, new_h - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` at random centers of a ``[C, H, W]`` tensor."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[1], img.shape[2]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y1, y2 = max(y - self.length // 2, 0), min(y + self.length // 2, h)
            x1, x2 = max(x - self.length // 2, 0), min(x + self.length // 2, w)
            mask[y1:y2, x1:x2] = 0.0
        return img * mask.expand_as(img)


class GaussianNoise:
    """With probability ``p``, add N(mean, std) noise to a tensor image."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


class InstanceNormalization:
    """Normalize each channel of one image by its own mean and std."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        flat = img.reshape(c, -1)
        mean, std = flat.mean(1).view(c, 1, 1), flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + self.eps)


def _check_choices(cfg: Any, choices: Sequence[str]) -> None:
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise UserError(
            f'INPUT.INTERPOLATION is "{cfg.INPUT.INTERPOLATION}"; valid: {", ".join(INTERPOLATION_MODES)}'
        )
    for choice in choices:
        if choice in DASSL_ONLY_CHOICES:
            raise UserError(
                f'INPUT.TRANSFORMS "{choice}" is not available in the built-in engine; '
                "use --engine dassl or one of: " + ", ".join(SUPPORTED_CHOICES)
            )
        if choice not in SUPPORTED_CHOICES:
            raise UserError(f'Unknown INPUT.TRANSFORMS "{choice}"; valid: {", ".join(SUPPORTED_CHOICES)}')


def build_transform(cfg: Any, is_train: bool = True, choices: Optional[Sequence[str]] = None) -> Optional[Callable]:
    """The train or test transform for ``cfg.INPUT``; ``None`` when ``INPUT.NO_TRANSFORM``."""
    if cfg.INPUT.NO_TRANSFORM:
        logger.info("Note: no transform is applied")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    _check_choices(cfg, choices)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    steps = _train_steps(cfg, choices, normalize) if is_train else _test_steps(cfg, choices, normalize)
    logger.info(f"Building transform_{'train' if is_train else 'test'}: {', '.join(_names(steps))}")
    return T.Compose(steps)


def _names(steps: List[Any]) -> List[str]:
    return [type(s).__name__ for s in steps]


def _train_steps(cfg: Any, choices: List[str], normalize: Any) -> List[Any]:
    inp = cfg.INPUT
    interp = INTERPOLATION_MODES[inp.INTERPOLATION]
    size = tuple(inp.SIZE)
    steps: List[Any] = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        steps.append(T.Resize(size, interpolation=interp))
    if "random_translation" in choices:
        steps.append(Random2DTranslation(size[0], size[1], interpolation=PIL_INTERPOLATION[inp.INTERPOLATION]))
    if "random_crop" in choices:
        steps.append(T.RandomCrop(size, padding=inp.CROP_PADDING))
    if "random_resized_crop" in choices:
        steps.append(T.RandomResizedCrop(size, scale=tuple(inp.RRCROP_SCALE), interpolation=interp))
    if "center_crop" in choices:
        steps.append(T.CenterCrop(size))
    if "random_flip" in choices:
        steps.append(T.RandomHorizontalFlip())
    if "colorjitter" in choices:
        steps.append(T.ColorJitter(brightness=inp.COLORJITTER_B, contrast=inp.COLORJITTER_C,
                                   saturation=inp.COLORJITTER_S, hue=inp.COLORJITTER_H))
    if "randomgrayscale" in choices:
        steps.append(T.RandomGrayscale(p=inp.RGS_P))
    if "gaussian_blur" in choices:
        steps.append(T.RandomApply([T.GaussianBlur(inp.GB_K)], p=inp.GB_P))
    steps.append(T.ToTensor())
    if "cutout" in choices:
        steps.append(Cutout(inp.CUTOUT_N, inp.CUTOUT_LEN))
    if "normalize" in choices:
        steps.append(normalize)
    if "gaussian_noise" in choices:
        steps.append(GaussianNoise(inp.GN_MEAN, inp.GN_STD))
    if "instance_norm" in choices:
        steps.append(InstanceNormalization())
    return steps


def _test_steps(cfg: Any, choices: List[str], normalize: Any) -> List[Any]:
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    steps: List[Any] = [T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
    if "normalize" in choices:
        steps.append(normalize)
    if "instance_norm" in choices:
        steps.append(InstanceNormalization())
    return steps
