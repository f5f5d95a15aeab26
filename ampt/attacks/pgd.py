"""L-inf projected gradient descent: the loop every iterative attack and trainer shares.

:func:`pgd_linf` is the low-level loop, in pixel units (fractions of 1), that
adversarial trainers call with a closure reusing cached text features.
:class:`PGD` is the evaluation attack built on it, in 1/255 units.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attack, fmt_255, make_generator

LossFn = Callable[[Tensor, Tensor], Tensor]

# Standard deviation of TRADES' random start (Zhang et al. 2019: 0.001 * randn).
TRADES_START_STD = 0.001


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy summed over the batch (the sum keeps each sample's gradient its own)."""
    return F.cross_entropy(logits, labels, reduction="sum")


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """CW margin ``max_{j != y} z_j - z_y``, summed over the batch (no confidence clamp)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return (other.amax(dim=1) - true).sum()


LOSSES: Dict[str, LossFn] = {"ce": ce_loss, "cw": margin_loss}


def _resolve_loss(loss: Union[str, LossFn]) -> LossFn:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f'Unknown PGD loss "{loss}"; valid: {", ".join(sorted(LOSSES))} or a callable')
    return LOSSES[loss]


def _start(images: Tensor, eps: float, random_start: Union[bool, str],
           generator: Optional[torch.Generator]) -> Tensor:
    """Starting point: uniform in [-eps, eps] (True/"uniform"), TRADES' "normal", or clean (False)."""
    if random_start is False:
        return images.clone()
    if random_start is True or random_start == "uniform":
        noise = torch.empty_like(images).uniform_(-eps, eps, generator=generator)
    elif random_start == "normal":
        noise = TRADES_START_STD * torch.randn(
            images.shape, generator=generator, device=images.device, dtype=images.dtype)
    else:
        raise ValueError(f'random_start must be True, False, "uniform" or "normal" (got {random_start!r})')
    return torch.clamp(images + noise, 0, 1)


def _project(adv: Tensor, images: Tensor, eps: float) -> Tensor:
    delta = torch.clamp(adv - images, min=-eps, max=eps)
    return torch.clamp(images + delta, 0, 1)


def pgd_linf(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: Optional[torch.Generator] = None,
    random_start: Union[bool, str] = True,
    loss: Union[str, LossFn] = "ce",
    start: Optional[Tensor] = None,
    eot_iter: int = 1,
) -> Tensor:
    """L-inf PGD (Madry et al. 2018): maximise ``loss(forward(x_adv), labels)``.

    ``eps`` and ``alpha`` are in **pixel units** (fractions of 1: 4/255 is
    ``4 / 255``), unlike the attack classes, which take 1/255 units.
    ``forward`` maps [0, 1] pixels to logits; it is the only thing called, so a
    trainer passes a closure that reuses its cached, detached text features.
    ``loss`` is "ce", "cw" (margin) or a callable ``(logits, labels) -> scalar``
    summed over the batch. ``random_start``: True/"uniform" (uniform in
    [-eps, eps]), "normal" (TRADES' 0.001 * N(0, 1)) or False. ``generator``
    seeds the start; None uses the global RNG. ``start`` (optional) is a given
    starting point, e.g. :func:`~ampt.attacks.per_sample.uniform_start`, used
    instead of ``random_start``. ``eot_iter > 1`` (Expectation over
    Transformation, for a model with random parts) sums the gradient of
    ``eot_iter`` forward passes per step. The model's train/eval mode is
    the caller's business. Returns detached images in the eps-ball and [0, 1].
    """
    if steps < 0 or eps < 0 or alpha < 0 or eot_iter < 1:
        raise ValueError(f"need eps, alpha, steps >= 0 and eot_iter >= 1 (got {eps}, {alpha}, {steps}, {eot_iter})")
    loss_fn = _resolve_loss(loss)
    images = images.detach()
    if eps == 0:
        return images.clone()
    adv = _project(_start(images, eps, random_start, generator) if start is None else start.detach(), images, eps)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad = torch.zeros_like(adv)
        with torch.enable_grad():
            for _ in range(eot_iter):
                cost = loss_fn(forward(adv), labels)
                grad += torch.autograd.grad(cost, adv)[0]
        adv = _project(adv.detach() + alpha * grad.sign(), images, eps)
    return adv.detach()


class IterativeAttack(Attack):
    """Shared hyper-parameters of the sign-gradient attacks (1/255 units).

    ``restarts > 1`` re-runs the attack from new random starts (seeds
    ``seed + 1``, ``seed + 2``, ...) on the images every earlier run left
    correctly classified, and keeps each image's first misclassified result
    (restart 0 is the one-run attack exactly). ``eot_iter`` is passed to
    :func:`pgd_linf`.
    """

    takes_alpha = True
    takes_restarts = True
    takes_eot = True

    def __init__(self, model: nn.Module, eps: float, alpha: Optional[float] = None,
                 steps: int = 100, seed: int = 0, restarts: int = 1, eot_iter: int = 1,
                 bpda: bool = False) -> None:
        super().__init__(model, eps, seed, bpda=bpda)
        if int(restarts) < 1 or int(eot_iter) < 1:
            raise ValueError(f"restarts and eot_iter must be >= 1 (got {restarts}, {eot_iter})")
        self.restarts = int(restarts)
        self.eot_iter = int(eot_iter)
        # Default step size of the evaluation protocol (docs/method.md section 5): eps / 4.
        self.alpha = self.eps / 4 if alpha is None else float(alpha)
        if self.alpha < 0 or self.alpha > 255:
            raise ValueError(f"alpha must be in [0, 255] in 1/255 units (got {alpha})")
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0 (got {steps})")
        self.steps = int(steps)

    def _run(self, images: Tensor, labels: Tensor, loss: Union[str, LossFn],
             random_start: Union[bool, str]) -> Tensor:
        adv = self._one_run(images, labels, loss, random_start, self.seed)
        if self.restarts == 1:
            return adv
        with torch.no_grad():
            robust = self.get_logits(adv).argmax(dim=1) == labels
        for restart in range(1, self.restarts):
            index = robust.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            subset_loss = loss if isinstance(loss, str) else _subset_loss(loss, index)
            candidate = self._one_run(images[index], labels[index], subset_loss, random_start, self.seed + restart)
            with torch.no_grad():
                fooled = self.get_logits(candidate).argmax(dim=1) != labels[index]
            adv[index[fooled]] = candidate[fooled]
            robust[index[fooled]] = False
        return adv

    def _one_run(self, images: Tensor, labels: Tensor, loss: Union[str, LossFn],
                 random_start: Union[bool, str], seed: int) -> Tensor:
        return pgd_linf(
            self.get_logits, images, labels, self.eps / 255, self.alpha / 255, self.steps,
            generator=make_generator(images.device, seed), random_start=random_start,
            loss=loss, eot_iter=self.eot_iter,
        )

    def hparams(self) -> Dict[str, Any]:
        out = {"eps": fmt_255(self.eps), "alpha": fmt_255(self.alpha), "steps": self.steps, "seed": self.seed}
        if self.restarts > 1:
            out["restarts"] = self.restarts
        if self.eot_iter > 1:
            out["eot_iter"] = self.eot_iter
        if self.bpda:
            out["bpda"] = True
        return out


def _subset_loss(loss: LossFn, index: Tensor) -> LossFn:
    """A per-batch loss built for the whole batch (TPGD's clean targets), restricted to the rows ``index``."""
    restrict = getattr(loss, "restrict", None)
    if restrict is None:
        raise ValueError("restarts need a string loss or a loss with a restrict(index) method")
    return restrict(index)


class PGD(IterativeAttack):
    """PGD of Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks" (ICLR 2018). Threat model: white-box, untargeted, L-inf ball of
    radius ``eps``/255 in pixel space.

    Uniform random start in [-eps, eps] (clamped to [0, 1]), then ``steps``
    sign-gradient steps of size ``alpha``/255 on the cross-entropy, each
    followed by projection to the eps-ball and [0, 1]. ``alpha`` defaults to
    eps / 4. Same algorithm as ``torchattacks.PGD``.
    """

    def __init__(self, model: nn.Module, eps: float, alpha: Optional[float] = None,
                 steps: int = 100, seed: int = 0, random_start: bool = True, **kwargs: Any) -> None:
        super().__init__(model, eps, alpha, steps, seed, **kwargs)
        self.random_start = bool(random_start)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        return self._run(images, labels, loss="ce", random_start=self.random_start)

    def hparams(self) -> Dict[str, Any]:
        return {**super().hparams(), "random_start": self.random_start}


__all__ = ["pgd_linf", "ce_loss", "margin_loss", "IterativeAttack", "PGD"]
