#!/usr/bin/env python
"""Time one adversarial training step of FAP, AdvMaPLe, AdvVLP and AdvVP against APT's, under FAP's attack.

Every trainer is the registered one, built from its FAP-protocol config
(``configs/trainers/<Name>/vit_b32_ep10.yaml``; APT from ``vit_b32_eps1.yaml``
with FAP's alpha 1/255 and 2 steps) on the same random-weight backbone, class
count and batch, with the data loader replaced by one fixed random batch: the
timed call is ``trainer.forward_backward(batch)`` (text pass, 2-step PGD,
loss, backward, optimizer step). Steps are interleaved across trainers so
that load from other processes hits all alike; medians after warm-up are
printed with their ratio to APT's. Prompt depths are cut to the backbone's
block counts (the tiny backbone has 2 text and 3 image blocks).

    python scripts/bench_zoo_step_time.py [--arch tiny|vit-b32] [--classes 100] [--batch 32] [--repeats 10]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ampt.config import get_cfg_default, merge_from_file, merge_from_list  # noqa: E402
from ampt.config_paths import find_config  # noqa: E402
from ampt.engine.select import active_api  # noqa: E402
from ampt.models import build_tiny_clip, save_clip_state_dict  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402
from bench_step_time import names_only_trainer  # noqa: E402  (this script's folder is on sys.path)

ARCHS = {  # build_tiny_clip arguments
    "tiny": dict(vision_width=96, vision_layers=3),
    "vit-b32": dict(image_resolution=224, vision_width=768, vision_layers=12, vision_patch_size=32,
                    text_width=512, text_layers=12, embed_dim=512),
}


def settings(text_blocks: int, vision_blocks: int) -> Dict[str, tuple]:
    """name -> (trainer, config file, overrides); FAP's 9 blocks, or fewer on a smaller backbone."""
    j, jv = str(min(9, text_blocks)), str(min(9, vision_blocks))
    return {
        "APT (16 tokens)": ("APT", "vit_b32_eps1.yaml", ["ADV.TRAIN.ALPHA", "1.0", "ADV.TRAIN.STEPS", "2"]),
        "FAP": ("FAP", "vit_b32_ep10.yaml", ["TRAINER.FAP.PROMPT_DEPTH", j]),
        "AdvMaPLe": ("AdvMaPLe", "vit_b32_ep10.yaml", ["TRAINER.ADVMAPLE.PROMPT_DEPTH", j]),
        "AdvVLP": ("AdvVLP", "vit_b32_ep10.yaml", ["TRAINER.ADVVLP.PROMPT_DEPTH_TEXT", j,
                                                   "TRAINER.ADVVLP.PROMPT_DEPTH_VISION", jv]),
        "AdvVP": ("AdvVP", "vit_b32_ep10.yaml", []),
    }


def build(trainer_name: str, config: str, overrides: List[str], args: argparse.Namespace, backbone: str) -> Any:
    cls = active_api().TRAINER_REGISTRY.get(trainer_name)
    cfg = get_cfg_default()
    cls.add_config(cfg)
    merge_from_file(cfg, str(find_config("trainers", trainer_name, Path(config).stem)))
    pad = ["TRAINER.ADVVP.PAD_SIZE", str(max(1, args.image_size * 30 // 224))] if trainer_name == "AdvVP" else []
    merge_from_list(cfg, ["MODEL.BACKBONE.NAME", backbone, "INPUT.SIZE", f"({args.image_size}, {args.image_size})",
                          f"TRAINER.{trainer_name.upper()}.PREC", "fp32", "USE_CUDA", "False",
                          "OUTPUT_DIR", tempfile.mkdtemp(prefix="bench_zoo_"), *overrides, *pad])
    cfg.freeze()
    return names_only_trainer(cls, cfg, args.classes)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.image_size = ARCHS[args.arch].get("image_resolution", 32)
    load_plugins("builtin")
    shape = ARCHS[args.arch]
    with tempfile.TemporaryDirectory() as tmp:
        backbone = str(save_clip_state_dict(build_tiny_clip(**shape), Path(tmp) / "clip.pt"))
        table = settings(shape.get("text_layers", 2), shape.get("vision_layers", 2))
        trainers = {name: build(*spec, args, backbone) for name, spec in table.items()}
    g = torch.Generator().manual_seed(0)
    batch = {"img": torch.rand(args.batch, 3, args.image_size, args.image_size, generator=g),
             "label": torch.randint(args.classes, (args.batch,), generator=g),
             "domain": torch.zeros(args.batch, dtype=torch.long)}
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    for i in range(args.warmup + args.repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.forward_backward(batch)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    apt = medians["APT (16 tokens)"]
    print(f"{args.arch} (random weights) at {args.image_size} px, {args.classes} classes, batch {args.batch}, "
          f"2-step PGD at 1/255, fp32, cpu, {torch.get_num_threads()} threads; median of {args.repeats} steps")
    for name, t in times.items():
        print(f"  {name:16s} {1000 * medians[name]:8.1f} ms/step (min {1000 * min(t):.1f}, max {1000 * max(t):.1f}); "
              f"x {medians[name] / apt:.2f} APT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
