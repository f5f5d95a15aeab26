#!/usr/bin/env python
"""Time one adversarial training step of APT (one 16-token prompt) and AMPT (K=4 prompts of 4 tokens).

Both trainers are the registered ones, built from their ``vit_b32_eps4.yaml``
configs (3-step PGD at 4/255, SGD) on the same backbone, class count and
batch; only the data loading is replaced by a fixed random batch, so the
timed call is exactly ``trainer.forward_backward(batch)``: one text pass
(all K x C prompts, trimmed), the 3-step attack through the whole model
(router included), the loss on the adversarial images, backward and the
optimizer step. Steps of the two trainers are interleaved (APT, AMPT, APT,
...) so that load from other processes hits both alike; the medians after
warm-up are printed with their ratio.

    python scripts/bench_step_time.py [--classes 100] [--batch 32] [--repeats 15]
    python scripts/bench_step_time.py --arch vit-b32 --repeats 3 --warmup 1   # ViT-B/32 shapes, 224 px
    python scripts/bench_step_time.py --backbone ViT-B/32 --device cuda --prec fp16  # real weights

``--arch tiny`` (default) is the tests' tiny ViT CLIP (``ampt.models.build_tiny_clip``:
32 px, patch 8, width 64, 2 layers per tower); ``--arch vit-b32`` has
ViT-B/32's shapes (224 px, 12 x 768 image, 12 x 512 text) with random
weights: step time does not depend on the weights, and nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ampt.config import get_cfg_default, merge_from_file, merge_from_list  # noqa: E402
from ampt.engine.select import active_api  # noqa: E402
from ampt.models import build_tiny_clip, load_clip, save_clip_state_dict  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402

ARCHS = {  # build_tiny_clip arguments
    "tiny": {},
    "vit-b32": dict(image_resolution=224, vision_width=768, vision_layers=12, vision_patch_size=32,
                    text_width=512, text_layers=12, embed_dim=512),
}
SETTINGS = {  # name -> (trainer, config overrides)
    "APT (K=1, 16 tokens)": ("APT", ["TRAINER.APT.N_CTX", "16"]),
    "AMPT (K=4 x 4 tokens)": ("AMPT", ["TRAINER.AMPT.N_PROMPTS", "4", "TRAINER.AMPT.N_CTX", "4"]),
}


def bench_trainer(trainer_name: str, overrides: List[str], args: argparse.Namespace, backbone: str) -> Any:
    """The registered trainer on ``args.classes`` synthetic class names, without a data loader."""
    cls = active_api().TRAINER_REGISTRY.get(trainer_name)
    cfg = get_cfg_default()
    cls.add_config(cfg)
    merge_from_file(cfg, str(REPO_ROOT / "configs" / "trainers" / trainer_name / "vit_b32_eps4.yaml"))
    node = trainer_name.upper()
    merge_from_list(cfg, [
        "MODEL.BACKBONE.NAME", backbone, "INPUT.SIZE", f"({args.image_size}, {args.image_size})",
        f"TRAINER.{node}.PREC", args.prec, "ADV.TRAIN.STEPS", str(args.steps),
        "USE_CUDA", str(args.device == "cuda"), "OUTPUT_DIR", tempfile.mkdtemp(prefix="bench_step_"),
        *overrides,
    ])
    cfg.freeze()
    classnames = [f"object {i}" for i in range(args.classes)]

    def build_data_loader(self: Any) -> None:  # names only: the batch is given
        self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=classnames))
        self.train_loader_x = self.val_loader = self.test_loader = None
        self.num_classes, self.lab2cname = len(classnames), dict(enumerate(classnames))

    bench_cls = type(f"Bench{cls.__name__}", (cls,), {"build_data_loader": build_data_loader})
    trainer = bench_cls(cfg)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the epoch's last batch: no LR step
    return trainer


def count_text_passes(trainer: Any, batch: Dict[str, torch.Tensor]) -> int:
    calls = []
    handle = trainer.model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        trainer.forward_backward(batch)
    finally:
        handle.remove()
    return len(calls)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100, help="number of classes (default 100)")
    p.add_argument("--batch", type=int, default=32, help="training batch size (default 32)")
    p.add_argument("--steps", type=int, default=3, help="PGD steps of the training attack (default 3)")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per trainer (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer first (default 3)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="tiny", help="random-weight CLIP to build (default tiny)")
    p.add_argument("--backbone", default="", help="CLIP name or file instead of --arch")
    p.add_argument("--prec", default="fp32", help="fp32 | fp16 | amp (default fp32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", default="", help="also write the numbers to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.image_size = ARCHS[args.arch].get("image_resolution", 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_plugins("builtin")

    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or str(save_clip_state_dict(build_tiny_clip(**ARCHS[args.arch]), Path(tmp) / "clip.pt"))
        if args.backbone:
            args.image_size = load_clip(args.backbone).visual.input_resolution
        trainers = {name: bench_trainer(t, o, args, backbone) for name, (t, o) in SETTINGS.items()}
    device = next(iter(trainers.values())).device
    generator = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device),
        "label": torch.randint(args.classes, (args.batch,), generator=generator).to(device),
        "domain": torch.zeros(args.batch, dtype=torch.long, device=device),
    }
    passes = {name: count_text_passes(t, batch) for name, t in trainers.items()}
    times: Dict[str, List[float]] = {name: [] for name in trainers}
    for i in range(args.warmup + args.repeats):
        for name, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.forward_backward(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    apt, ampt = medians.values()
    print(f"backbone {args.backbone or args.arch + ' (random weights)'} at {args.image_size} px, {args.classes} classes, batch {args.batch}, "
          f"{args.steps}-step PGD, {args.prec}, {device}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} steps after {args.warmup} warm-up")
    for name in trainers:
        t = times[name]
        print(f"  {name:24s} {1000 * medians[name]:8.1f} ms/step  (min {1000 * min(t):.1f}, max {1000 * max(t):.1f}; "
              f"text passes per step: {passes[name]})")
    print(f"  ratio AMPT / APT: {ampt / apt:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "median_s": medians, "times_s": times,
                                               "text_passes": passes, "ratio": ampt / apt}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
