"""The contract every attack follows, in one base class.

Inputs and outputs are pixels in [0, 1]; the model normalizes inside its
forward. ``eps`` and ``alpha`` are in 1/255 units (``eps=4`` means 4/255).
During an attack the model is in eval mode under ``torch.enable_grad()`` with
its parameters' ``requires_grad`` switched off (gradients are taken w.r.t. the
input only), and every module's training flag and every parameter's
``requires_grad`` are restored afterwards, also on an exception.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.parts import straight_through

# An eps this large is certainly a unit mistake (it exceeds the pixel range).
_MAX_EPS = 255.0


def check_eps(eps: float, name: str = "eps") -> float:
    """Validate a budget given in 1/255 units; refuse what looks like a fraction of 1."""
    eps = float(eps)
    if eps != eps or eps < 0:
        raise UserError(f"{name} must be >= 0 in 1/255 units (got {eps})")
    if 0 < eps < 1:
        raise UserError(
            f"{name}={eps:g} looks like a fraction of 1, but {name} is in 1/255 units "
            f"(4 means 4/255). Did you mean {name}={eps * 255:g}?"
        )
    if eps > _MAX_EPS:
        raise UserError(f"{name}={eps:g} exceeds the pixel range (1/255 units, at most 255)")
    return eps


def check_pixels(images: Tensor) -> None:
    """Attacks work in pixel space: refuse inputs that were normalized in the data pipeline."""
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be a float tensor of pixels in [0, 1] (got {images.dtype})")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"attacks expect pixels in [0, 1], got values in [{images.min().item():.3f}, "
            f"{images.max().item():.3f}]; normalization belongs inside the model, "
            "not in the data pipeline"
        )


def fmt_255(value: float) -> str:
    """``4.0 -> '4/255'``: how hyper-parameters in 1/255 units are shown."""
    return f"{value:.4g}/255"


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters and ``enable_grad`` for the duration of an attack.

    Each module's own ``training`` flag is restored (not ``model.train(mode)``,
    which would overwrite submodules deliberately kept in another mode).
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on the images' device, so the global RNG is never touched."""
    return torch.Generator(device=device).manual_seed(int(seed))


class Attack:
    """Base class: ``attack(images, labels) -> adversarial images``.

    Subclasses implement :meth:`forward` and call the model only through
    :meth:`get_logits`. With ``bpda`` the model's declared non-differentiable
    parts (:mod:`ampt.models.parts`) take their declared backward during the
    attack (their forward values are unchanged).

    What an attack accepts is declared by class attributes, which
    :func:`~ampt.attacks.build_attack` checks: ``default_steps`` (None: takes
    no step count), ``takes_alpha``, ``takes_restarts``, ``takes_eot``,
    ``takes_options``; ``access`` is its threat model's access
    (``white-box``, ``black-box`` or both). Each call draws its randomness from a fresh generator
    seeded with ``seed``, so the output depends only on the inputs and the seed
    (batches can be re-run or resumed in any order with the same result).
    ``eps == 0`` returns the clean images without calling the model.
    """

    parameter_free = False
    default_steps: Optional[int] = 100
    takes_alpha = False
    takes_restarts = False
    takes_eot = False
    takes_options = False
    access = "white-box"
    library = "ampt"

    def __init__(self, model: nn.Module, eps: float, seed: int = 0, bpda: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module mapping [0, 1] pixels to logits (got {type(model)})")
        self.model = model
        self.eps = check_eps(eps)
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0 (got {seed})")
        self.seed = int(seed)
        self.bpda = bool(bpda)

    @classmethod
    def check_num_classes(cls, num_classes: int) -> None:
        """Raise :class:`~ampt.errors.UserError` when the attack cannot run on a task of this many classes.

        Called before anything is trained or evaluated; every attack runs on 2+ classes by default.
        """

    def get_logits(self, images: Tensor) -> Tensor:
        """The one place where the model is called."""
        return self.model(images)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        check_pixels(images)
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape [{images.shape[0]}] (got {tuple(labels.shape)})"
            )
        images = images.detach()
        if self.eps == 0:
            return images.clone()
        with attack_mode(self.model), straight_through(self.model, self.bpda):
            adv = self.forward(images, labels.detach())
        return adv.detach()

    def hparams(self) -> Dict[str, Any]:
        """Hyper-parameters shown by ``repr`` (eps-like values in 1/255 units)."""
        return {"eps": fmt_255(self.eps), "seed": self.seed}

    def config(self) -> Dict[str, Any]:
        """The record's ``attack_config``: everything that produced the number (eps-like values in 1/255 units)."""
        out: Dict[str, Any] = {"class": type(self).__name__, "library": self.library, "eps": self.eps,
                               "seed": self.seed, "access": self.access, "bpda": self.bpda}
        for name in ("steps", "alpha", "restarts", "eot_iter"):
            if getattr(self, name, None) is not None:
                out[name] = getattr(self, name)
        return out

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v}" if isinstance(v, str) and v.endswith("/255") else f"{k}={v!r}"
            for k, v in self.hparams().items()
        )
        return f"{type(self).__name__}({args})"
