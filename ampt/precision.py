"""Precision policy: what may run in reduced precision, and what must stay fp32.

Training (``TRAINER.<X>.PREC``): ``fp32``; ``bf16`` (autocast); ``fp16``
(autocast with a gradient scaler; ``amp`` is the same). Autocast runs the
frozen CLIP towers' matrix products in half precision while every weight
stays fp32: the learned parameters (prompts, router) and their optimizer
state are fp32 and updated in fp32. ``fp16`` falls back to fp32 on CPU.

Evaluation (``evaluate.py --precision``, ``TEST.PRECISION`` for a run's own
tests): ``fp32`` by default. ``bf16`` and ``fp16`` are allowed, written into
every record (``precision``) and warned about: attack gradients taken
through fp16 logits at CLIP's logit scale (100) can underflow or saturate,
so a weaker attack reports a higher robust accuracy than fp32 would.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, ContextManager, Optional

import torch
from torch import Tensor, nn
from .errors import UserError

logger = logging.getLogger(__name__)

TRAIN_PRECISIONS = ("fp32", "bf16", "fp16", "amp")
EVAL_PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REDUCED_EVAL_WARNING = (
    "evaluating in {prec}: attack gradients through reduced-precision logits can vanish at CLIP's "
    "logit scale and overstate robustness; the record says precision {prec}. Use fp32 for reported numbers."
)


def add_precision_key(node: Any) -> None:
    """Declare ``PREC`` in a trainer's config node (``TRAINER.<X>.PREC``, read by ``ClipTrainer.load_clip_model``)."""
    node.PREC = "fp16"  # training compute: fp32 | bf16 | fp16 (= amp: autocast + grad scaler; fp32 on CPU); weights stay fp32


def resolve_train_precision(prec: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` (``amp`` is ``fp16``); fp16 falls back to fp32 on CPU with a warning."""
    if prec not in TRAIN_PRECISIONS:
        raise UserError(f'Unknown precision "{prec}" (TRAINER.<X>.PREC). Valid: {", ".join(TRAIN_PRECISIONS)}')
    prec = "fp16" if prec == "amp" else prec
    if prec == "fp16" and torch.device(device).type == "cpu":
        warnings.warn(f'Precision "{prec}" is not supported on CPU; using fp32 (bf16 works on CPU)', stacklevel=2)
        return "fp32"
    return prec


def check_eval_precision(prec: str, name: str = "--precision") -> str:
    if prec not in EVAL_PRECISIONS:
        raise UserError(f'{name} "{prec}" is not one of {", ".join(EVAL_PRECISIONS)}')
    return prec


def autocast(prec: str, device: torch.device) -> ContextManager:
    """Autocast to ``prec``'s dtype on ``device``; a no-op for fp32."""
    if prec == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[prec])


def grad_scaler(prec: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for fp16 training (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(torch.device(device).type) if prec == "fp16" else None


def check_fp32_parameters(module: nn.Module) -> None:
    """Learned parameters must be fp32 (master weights), whatever the compute precision."""
    bad = [n for n, p in module.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if bad:
        raise RuntimeError(f"Learned parameters must be fp32 (master weights); these are not: {bad}")


def warn_reduced(prec: str) -> None:
    if prec != "fp32":
        logger.warning(REDUCED_EVAL_WARNING.format(prec=prec))


class AutocastModel(nn.Module):
    """``model``'s forward under autocast to ``prec``, logits returned in fp32 (what attacks receive)."""

    def __init__(self, model: nn.Module, prec: str) -> None:
        super().__init__()
        self.model = model
        self.precision = check_eval_precision(prec, "precision")

    def forward(self, x: Tensor) -> Tensor:
        with autocast(self.precision, x.device):
            return self.model(x).float()


def at_precision(model: nn.Module, prec: str) -> nn.Module:
    """``model`` itself for fp32, else wrapped in :class:`AutocastModel`."""
    return model if check_eval_precision(prec, "precision") == "fp32" else AutocastModel(model, prec)
