"""Per-layer token statistics of the image tower (TAPT's alignment targets and test-time statistics).

TAPT reads, at each image block, the block's input tokens (after the
block's deep prompts are put in): ``[L, N, D]``. Over the N images (views)
it keeps, per token position and channel, the mean and the variance
(:func:`batch_statistics`). Its reference statistics come from the
training images, computed once per run and cached (:func:`reference_statistics`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..utils.io import atomic_path

logger = logging.getLogger(__name__)

Stats = List[Tuple[Tensor, Tensor]]  # per layer: (mean [L, D], variance [L, D])


@contextlib.contextmanager
def block_inputs(model: nn.Module, layers: range) -> Iterator[List[Tensor]]:
    """Collects, during the ``with`` body, the inputs of the image blocks in ``layers``, as ``[N, L, D]`` each."""
    blocks, batch_dim = model.image_blocks()
    captured: List[Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        x = args[0]
        captured.append(x if batch_dim == 0 else x.transpose(0, 1))

    handles = [blocks[i].register_forward_pre_hook(hook) for i in layers if i < len(blocks)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def batch_statistics(tokens: List[Tensor], unbiased: bool = False) -> Stats:
    """Per layer, the mean and variance over the batch of ``[N, L, D]`` tokens (TAPT: biased at test time)."""
    return [(t.float().mean(dim=0), t.float().var(dim=0, unbiased=unbiased)) for t in tokens]


def alignment_distance(stats: Stats, reference: Stats) -> Tensor:
    """TAPT's ``onestage_align_loss`` (``l1``): ``sum_layers 0.5 L1(mean, ref mean) + 0.5 L1(var, ref var)``."""
    total = stats[0][0].new_zeros(())
    for (mean, var), (ref_mean, ref_var) in zip(stats, reference):
        total = total + 0.5 * (mean - ref_mean).abs().mean() + 0.5 * (var - ref_var).abs().mean()
    return total


@torch.no_grad()
def reference_statistics(model: nn.Module, batches: Callable[[], Iterator[Tensor]], layers: range) -> Stats:
    """Mean and sample variance (``n - 1``) per layer, token and channel over every image of ``batches()``.

    Two passes, as TAPT's calibration: the running mean, then the squared deviations from it.
    """
    total, sums = 0, None
    for images in batches():
        with block_inputs(model, layers) as captured:
            model.encode_image(images)
        sums = [t.float().sum(dim=0) for t in captured] if sums is None else \
            [s + t.float().sum(dim=0) for s, t in zip(sums, captured)]
        total += images.shape[0]
    if not total:
        raise RuntimeError("No images to compute the reference statistics on")
    means = [s / total for s in sums]
    squares: Optional[List[Tensor]] = None
    for images in batches():
        with block_inputs(model, layers) as captured:
            model.encode_image(images)
        deviations = [((t.float() - m) ** 2).sum(dim=0) for t, m in zip(captured, means)]
        squares = deviations if squares is None else [a + b for a, b in zip(squares, deviations)]
    return [(m, q / max(total - 1, 1)) for m, q in zip(means, squares)]


def save_statistics(stats: Stats, path: Path) -> None:
    """A plain tensor file (loaded with ``weights_only=True``), written atomically."""
    with atomic_path(path) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            torch.save({"mean": [m.cpu() for m, _ in stats], "var": [v.cpu() for _, v in stats]}, f)


def load_statistics(path: Path, device: torch.device) -> Stats:
    state = torch.load(path, map_location=device, weights_only=True)
    return list(zip(state["mean"], state["var"]))
