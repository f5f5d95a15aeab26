"""APT's training PGD, step for step as in APT's published trainer (Li et al., CVPR 2024).

It differs from :func:`~ampt.attacks.pgd.pgd_linf` (torchattacks' semantics,
used by every evaluation attack) in what it keeps between steps: APT keeps
an **unclamped** perturbation ``delta`` in [-eps, eps] and clamps only the
image it feeds the model, ``clamp(x + delta, 0, 1)``, while torchattacks
re-projects the image itself every step. The two differ on pixels within
eps of 0 or 1. Per step:

    adv   = clamp(x + delta, 0, 1)                  (the leaf the gradient is taken at)
    loss  = mean cross-entropy(forward(adv), y)
    delta = clamp(delta + alpha * sign(d loss / d adv), -eps, eps)

with ``delta ~ U(-eps, eps)`` drawn from the global RNG at the start and
``clamp(x + delta, 0, 1)`` returned at the end. ``params`` (APT's
"perturbed" prompt mode) receive the gradient of the same loss at every
step, handed to ``param_step`` after the image step.

``projection="fap"`` is the update of FAP's ``attack/pgd.py`` (Zhou et al.,
NeurIPS 2024), which the FAP family trains with: ``delta`` itself is kept
inside the pixel range, ``delta = min(max(delta, -x), 1 - x)``, after the
random start and after every step, the model sees ``x + delta`` (no clamp),
and ``x + delta`` is returned. The two rules differ on pixels within eps of
0 or 1 from the first step.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ParamStep = Callable[[Sequence[Tensor]], None]
PROJECTIONS = ("apt", "fap")  # the training attack's rule for the pixel range (module docstring)


def _into_pixel_range(delta: Tensor, images: Tensor) -> Tensor:
    """FAP's projection: ``delta`` clamped elementwise to [-x, 1 - x]."""
    return torch.max(torch.min(delta, 1 - images), -images)


def apt_pgd(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    params: Sequence[nn.Parameter] = (),
    param_step: Optional[ParamStep] = None,
    delta: Optional[Tensor] = None,
    loss: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    projection: str = "apt",
) -> Tensor:
    """APT's L-inf PGD in pixel units (fractions of 1); returns detached images in [0, 1].

    ``forward`` maps [0, 1] pixels to logits. ``params`` and ``param_step``
    come together: the gradients of the loss w.r.t. ``params`` (in order)
    are passed to ``param_step`` once per step. ``delta`` (optional) is the
    initial perturbation in [-eps, eps] (e.g. drawn per image under torchrun,
    :func:`~ampt.attacks.per_sample.uniform_noise`). ``loss`` replaces APT's
    mean cross-entropy (``(logits, labels) -> scalar``, e.g. TRADES' KL for
    ``ADV.TRAIN.LOSS trades``). ``projection``: ``apt`` or ``fap`` (module
    docstring). The model's mode and ``requires_grad`` flags are the caller's business.
    """
    if steps < 0 or eps < 0 or alpha < 0:
        raise ValueError(f"need eps, alpha, steps >= 0 (got {eps}, {alpha}, {steps})")
    if bool(params) != (param_step is not None):
        raise ValueError("params and param_step are given together")
    if projection not in PROJECTIONS:
        raise ValueError(f'projection must be one of {", ".join(PROJECTIONS)}, got {projection!r}')
    fap = projection == "fap"
    images = images.detach()
    if eps == 0:
        return images.clone()
    if delta is None:
        delta = torch.empty_like(images).uniform_(-eps, eps)
    if fap:
        delta = _into_pixel_range(delta, images)
    for _ in range(steps):
        adv = (images + delta if fap else torch.clamp(images + delta, 0, 1)).requires_grad_(True)
        with torch.enable_grad():
            logits = forward(adv)
            value = F.cross_entropy(logits, labels) if loss is None else loss(logits, labels)
            grads = torch.autograd.grad(value, [adv, *params])
        delta = torch.clamp(delta + alpha * grads[0].sign(), -eps, eps)
        if fap:
            delta = _into_pixel_range(delta, images)
        if param_step is not None:
            param_step(grads[1:])
    return (images + delta if fap else torch.clamp(images + delta, 0, 1)).detach()


__all__ = ["PROJECTIONS", "apt_pgd"]
