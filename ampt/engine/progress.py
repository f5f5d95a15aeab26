"""Meters, the per-epoch progress bar, and Dassl's periodic training log line."""
from __future__ import annotations

import datetime
import os
import logging
import sys
import warnings
from collections import defaultdict
from typing import Any, Dict, Iterable, Mapping, Optional

import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)


class AverageMeter:
    """Current value and running average."""

    def __init__(self, ema: bool = False) -> None:
        self.ema = ema
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: Any, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = float(val)
        self.sum += self.val * n
        self.count += n
        self.avg = self.avg * 0.9 + self.val * 0.1 if self.ema else self.sum / self.count


class MetricMeter:
    """One :class:`AverageMeter` per key of the dicts ``forward_backward`` returns."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: Dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict: Optional[Mapping[str, Any]]) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, Mapping):
            raise TypeError(f"forward_backward must return a dict of floats, got {type(input_dict).__name__}")
        for k, v in input_dict.items():
            self.meters[k].update(v)

    def __str__(self) -> str:
        return self.delimiter.join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in self.meters.items())


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def progress_disabled() -> Optional[bool]:
    """True with ``AMPT_NO_PROGRESS=1``; else None: tqdm draws bars only on a terminal.

    Runs redirected to a file keep their ETA in the periodic log lines instead.
    """
    return True if os.environ.get("AMPT_NO_PROGRESS", "") in ("1", "true", "yes") else None


def progress_bar(iterable: Iterable[Any], total: Optional[int] = None, desc: str = "", leave: bool = False) -> tqdm:
    """A tqdm bar on stderr with rate and ETA (terminal only; ``AMPT_NO_PROGRESS=1`` turns it off)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=leave,
        dynamic_ncols=True,
        mininterval=1.0,
        file=sys.stderr,
        disable=progress_disabled(),
    )


def train_log_line(
    epoch: int,
    max_epoch: int,
    batch_idx: int,
    num_batches: int,
    batch_time: AverageMeter,
    data_time: AverageMeter,
    losses: MetricMeter,
    lr: float,
) -> str:
    """Dassl's line: ``epoch [e/E] batch [b/B] time .. data .. <losses> lr .. eta ..``.

    ETA covers the rest of the run (this epoch's remaining batches plus the
    remaining epochs) at the average batch time.
    """
    remaining = num_batches - batch_idx - 1 + (max_epoch - epoch - 1) * num_batches
    return " ".join(
        [
            f"epoch [{epoch + 1}/{max_epoch}]",
            f"batch [{batch_idx + 1}/{num_batches}]",
            f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
            f"data {data_time.val:.3f} ({data_time.avg:.3f})",
            f"{losses}",
            f"lr {lr:.4e}",
            f"eta {format_eta(batch_time.avg * remaining)}",
        ]
    )


class ScalarWriterMixin:
    """Dassl's tensorboard hooks; without tensorboard they warn once and write nothing."""

    def init_writer(self, log_dir: str) -> None:
        if getattr(self, "_writer", None) is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: scalars are not written (pip install tensorboard)")
            self._writer = None
            return
        logger.info("Initialize tensorboard (log_dir=%s)", log_dir)
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value: float, global_step: Optional[int] = None) -> None:
        if getattr(self, "_writer", None) is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)
