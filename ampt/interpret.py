"""Nearest vocabulary words of learned context vectors (CoOp's ``interpret_prompt``).

``python -m ampt.interpret RUN_DIR [--topk 5] [--epoch N] [--backbone NAME_OR_PATH]``

The run is rebuilt from its folder (``config.yaml`` and checkpoints; the
dataset named there must be readable, ``--root`` moves it) and its model is
asked, through the declared interface, for its learned vectors in the
token-embedding space (``word_prompts()``: CoOp/APT/AMPT's ``ctx``, the
first-layer text tokens of deep prompts; none for visual-only prompts). For
each prompt, per context position, prints the ``topk`` vocabulary tokens
whose embeddings are nearest in Euclidean distance, decoded with the ``clip``
tokenizer. Learned vectors rarely sit on a word embedding: the distances say
how far they are.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from yacs.config import CfgNode as CN

from .models.clip_loader import clip, load_clip
from .models.backbone import pretrained_setting
from .models.text_tower import text_tower

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"

Neighbours = List[List[Tuple[str, float]]]  # per context position: (token, distance) pairs


def nearest_tokens(ctx: torch.Tensor, token_embedding: torch.Tensor, topk: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices and distances ``[..., L, topk]`` of the nearest rows of ``token_embedding [V, d]``."""
    flat = ctx.reshape(-1, ctx.shape[-1]).float()
    distances = torch.cdist(flat, token_embedding.float())
    values, indices = distances.topk(topk, dim=-1, largest=False)
    shape = tuple(ctx.shape[:-1]) + (topk,)
    return indices.reshape(shape), values.reshape(shape)


def decode_token(tokenizer: "clip.simple_tokenizer.SimpleTokenizer", index: int) -> str:
    """One BPE token as text; a trailing space-less piece is shown as is (e.g. ``photo``, ``ing``)."""
    return tokenizer.decode([int(index)]).strip()


def interpret_ctx(ctx: torch.Tensor, token_embedding: torch.Tensor, topk: int = 5) -> List[Neighbours]:
    """Per prompt, per context position, the ``topk`` nearest (token, distance) pairs.

    ``ctx`` is ``[L, d]`` (one prompt), ``[K, L, d]`` (a bank of K prompts) or
    ``[K, C, L, d]`` (class-specific prompts: each (k, c) is one prompt).
    """
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0)
    ctx = ctx.reshape(-1, ctx.shape[-2], ctx.shape[-1])
    indices, distances = nearest_tokens(ctx, token_embedding, topk)
    tokenizer = clip.simple_tokenizer.SimpleTokenizer()
    return [
        [
            [(decode_token(tokenizer, i), float(d)) for i, d in zip(idx_row.tolist(), dist_row.tolist())]
            for idx_row, dist_row in zip(prompt_idx, prompt_dist)
        ]
        for prompt_idx, prompt_dist in zip(indices, distances)
    ]


def run_backbone(run_dir: Path) -> CN:
    """``MODEL.BACKBONE`` of the run's saved config."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_FILE} in {run_dir}; pass --backbone NAME_OR_PATH")
    with open(path, "r", encoding="utf-8") as f:
        cfg = CN.load_cfg(f)
    return cfg.MODEL.BACKBONE


def format_report(neighbours: Sequence[Neighbours]) -> str:
    lines = []
    for k, prompt in enumerate(neighbours):
        words = " ".join(position[0][0] for position in prompt)
        lines.append(f"prompt {k + 1}: {words}")
        for j, position in enumerate(prompt):
            pairs = ", ".join(f"{word} ({dist:.3f})" for word, dist in position)
            lines.append(f"  ctx {j + 1}: {pairs}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ampt.interpret", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="output folder of a training run")
    parser.add_argument("--topk", type=int, default=5, help="nearest tokens per context vector (default 5)")
    parser.add_argument("--epoch", type=int, default=None, help="checkpoint epoch (default: the latest)")
    parser.add_argument("--backbone", default="", help="CLIP name or file (default: the run's config)")
    parser.add_argument("--root", default="", help="data root (default: the run's DATASET.ROOT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.topk < 1:
        parser.error("--topk must be >= 1")

    from .evaluation.run_loader import load_run

    run = load_run(args.run_dir, root=args.root, load_epoch=args.epoch)
    model = run.trainer.model
    prompts = model.word_prompts()
    if not prompts:
        raise ValueError(f"{type(model).__name__} (run {args.run_dir}) has no learned vectors in the "
                         "token-embedding space to interpret (visual prompts have no words)")
    if args.backbone:
        clip_model = load_clip(args.backbone)
    else:
        backbone = run_backbone(args.run_dir)
        clip_model = load_clip(backbone.NAME, download_root=backbone.DOWNLOAD_ROOT,
                               pretrained=pretrained_setting(backbone))
    token_embedding = text_tower(clip_model).token_embedding.weight.detach()
    for name, vectors in prompts.items():
        neighbours = interpret_ctx(vectors.detach().cpu(), token_embedding, args.topk)
        sys.stdout.write(f"[{name}] {args.run_dir}\n{format_report(neighbours)}\n")
    return 0


if __name__ == "__main__":
    from .utils.cli import exit_process

    exit_process(main())
