"""``build_lr_scheduler``: Dassl's per-epoch LR values, as closed forms.

Dassl wraps a PyTorch scheduler (the *successor*) in a warm-up scheduler. On
PyTorch >= 2.7 its constructor raises ``TypeError`` (it passes the removed
``verbose`` argument), and its ``state_dict`` pickles the successor object.
Here one scheduler computes the LR of epoch index ``k`` (0-based, the number
of ``step()`` calls so far) directly, reproducing what Dassl's chain yields
when stepped once per epoch:

- ``k < W`` (warm-up of ``W = WARMUP_EPOCH`` epochs): ``constant`` gives
  ``WARMUP_CONS_LR``; ``linear`` gives ``WARMUP_MIN_LR`` at ``k = 0`` and
  ``base * k / W`` after.
- ``k >= W``: the successor at ``t = k - W`` (``WARMUP_RECOUNT`` True) or
  ``t = k`` anchored at ``W`` (False: Dassl starts the successor's count at
  ``W``, and its first value is still the base LR). So with CoOp's settings
  (W = 1, constant), epoch 1 runs at 1e-5 and epoch ``e >= 2`` at
  ``cosine(e - 2)`` with ``T_max = MAX_EPOCH``: the cosine lags one epoch.

Successors: cosine ``base * (1 + cos(pi t / T)) / (1 + cos(pi a / T))``
(``a`` the anchor; eta_min 0 as in Dassl), single step ``base * gamma **
(t // s - a // s)``, multi step ``base * gamma ** (#milestones in (a, t])``.
"""
from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Dict, List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..registry import unknown_name_message
from ..errors import UserError

logger = logging.getLogger(__name__)

AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]
AVAI_WARMUPS = ["constant", "linear"]


class Decay:
    """A successor schedule: the factor applied to the base LR at step ``t``."""

    kind = ""

    def factor(self, t: int, anchor: int) -> float:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in vars(self).items()}}


class CosineDecay(Decay):
    kind = "cosine"

    def __init__(self, max_epoch: int) -> None:
        if max_epoch <= 0:
            raise UserError(f"The cosine schedule needs OPTIM.MAX_EPOCH > 0 (got {max_epoch})")
        self.max_epoch = int(max_epoch)

    def factor(self, t: int, anchor: int) -> float:
        cos = lambda x: 1.0 + math.cos(math.pi * x / self.max_epoch)  # noqa: E731
        return cos(t) / cos(anchor)


class StepDecay(Decay):
    kind = "single_step"

    def __init__(self, step_size: int, gamma: float) -> None:
        self.step_size = int(step_size)
        self.gamma = float(gamma)

    def factor(self, t: int, anchor: int) -> float:
        return self.gamma ** (t // self.step_size - anchor // self.step_size)


class MultiStepDecay(Decay):
    kind = "multi_step"

    def __init__(self, milestones: Sequence[int], gamma: float) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def factor(self, t: int, anchor: int) -> float:
        count = bisect.bisect_right(self.milestones, t) - bisect.bisect_right(self.milestones, anchor)
        return self.gamma ** count


class WarmupLR(LRScheduler):
    """Warm-up for ``warmup_epoch`` steps, then ``successor``; stepped once per epoch.

    ``state_dict()`` holds plain values only (the successor as a nested dict).
    On load, the position (``last_epoch``) comes from the checkpoint and the
    schedule's settings from the current config; a difference is logged, so
    resuming with a larger ``MAX_EPOCH`` extends the run on the new schedule.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        successor: Decay,
        warmup_epoch: int = 0,
        warmup_type: str = "constant",
        warmup_lr: float = 1e-5,
        recount: bool = True,
        last_epoch: int = -1,
    ) -> None:
        if warmup_epoch > 0 and warmup_type not in AVAI_WARMUPS:
            raise UserError(unknown_name_message("warm-up type (OPTIM.WARMUP_TYPE)", warmup_type, AVAI_WARMUPS))
        self.successor = successor
        self.warmup_epoch = max(int(warmup_epoch), 0)
        self.warmup_type = warmup_type
        self.warmup_lr = float(warmup_lr)
        self.recount = bool(recount)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, k: int) -> List[float]:
        """The LR of every param group at epoch index ``k`` (0-based)."""
        w = self.warmup_epoch
        if k < w:
            if self.warmup_type == "constant" or k == 0:
                return [self.warmup_lr for _ in self.base_lrs]
            return [float(base) * k / w for base in self.base_lrs]
        anchor = 0 if (self.recount or w == 0) else w
        t = k - w + anchor
        f = self.successor.factor(t, anchor)
        return [float(base) * f for base in self.base_lrs]

    def get_lr(self) -> List[float]:  # type: ignore[override]
        return self.lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> List[float]:
        return self.lr_at(self.last_epoch)

    def _settings(self) -> Dict[str, Any]:
        return {
            "warmup_epoch": self.warmup_epoch,
            "warmup_type": self.warmup_type,
            "warmup_lr": self.warmup_lr,
            "recount": self.recount,
            "successor": self.successor.state_dict(),
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_epoch": int(self.last_epoch),
            "_step_count": int(self._step_count),
            "base_lrs": [float(b) for b in self.base_lrs],
            "_last_lr": [float(v) for v in self._last_lr],
            **self._settings(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = {k: state_dict.get(k) for k in self._settings()}
        if saved != self._settings():
            logger.warning(
                "LR schedule settings differ from the checkpoint's (checkpoint %s, config %s); "
                "continuing at epoch index %s on the config's schedule",
                saved,
                self._settings(),
                state_dict["last_epoch"],
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        values = self.lr_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = list(values)


def _build_successor(optim_cfg: Any) -> Decay:
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    if name not in AVAI_SCHEDS:
        raise UserError(unknown_name_message("LR scheduler (OPTIM.LR_SCHEDULER)", name, AVAI_SCHEDS))
    if name == "cosine":
        return CosineDecay(optim_cfg.MAX_EPOCH)
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(f"OPTIM.STEPSIZE must be an integer for single_step (got {stepsize!r})")
        return StepDecay(stepsize if stepsize > 0 else optim_cfg.MAX_EPOCH, optim_cfg.GAMMA)
    if not isinstance(stepsize, (list, tuple)):
        raise TypeError(f"OPTIM.STEPSIZE must be a list of epochs for multi_step (got {stepsize!r})")
    return MultiStepDecay(stepsize, optim_cfg.GAMMA)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any) -> WarmupLR:
    """Build the scheduler of ``optim_cfg`` (Dassl's keys); call ``step()`` once per epoch."""
    warmup_type = optim_cfg.WARMUP_TYPE
    warmup_lr = optim_cfg.WARMUP_CONS_LR if warmup_type == "constant" else optim_cfg.WARMUP_MIN_LR
    return WarmupLR(
        optimizer,
        _build_successor(optim_cfg),
        warmup_epoch=optim_cfg.WARMUP_EPOCH,
        warmup_type=warmup_type,
        warmup_lr=warmup_lr,
        recount=optim_cfg.WARMUP_RECOUNT,
    )
