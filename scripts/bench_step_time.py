#!/usr/bin/env python
"""Each prompt trainer's training step and PGD evaluation, as multiples of the image-encoder floor.

The floor is the cost no implementation can avoid: a training step with an
S-step attack runs the image tower forward and backward (to the pixels)
S + 1 times on the batch, and a PGD-N evaluation N times plus one forward.
Both are timed here on the same backbone, batch and precision, interleaved
with the trainers' steps (so load from other processes hits all alike), and
every median is printed as ``x floor``.

Trainers: every registered trainer with something to train (``--trainers``
picks some), built from its own config defaults with the training attack
``ADV.TRAIN`` (``--steps`` PGD steps at 4/255) on ``--classes`` synthetic class
names; the timed call is exactly ``trainer.forward_backward(batch)`` on a fixed
random batch. Evaluation: the run's learned prompts with fixed text features
(what ``evaluate.py`` attacks) under ``--eval-steps``-step PGD; throughput in
images/s.

    python scripts/bench_step_time.py --threads 1                       # tiny CLIP, 100 classes
    python scripts/bench_step_time.py --arch vit-b32 --classes 1000 --repeats 3 --warmup 1 --eval-steps 0
    python scripts/bench_step_time.py --arch vit-b16 --device cuda --precision bf16 --json out.json

``--arch tiny`` is the tests' tiny ViT CLIP (32 px, width 64, 2 layers per
tower); ``vit-b32`` / ``vit-b16`` have those models' shapes (224 px, 12 x 768
image, 12 x 512 text) with random weights, built with the ``clip`` package's
model class: step time does not depend on the weights and nothing is
downloaded. ``--backbone`` takes a CLIP name or weights file instead.
Memory: on CUDA the peak allocated per trainer; on CPU the process's peak
RSS (all trainers so far: run one trainer per process to compare them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from ampt.attacks import build_attack  # noqa: E402
from ampt.config import get_cfg_default, merge_from_file, merge_from_list  # noqa: E402
from ampt.config_paths import find_config  # noqa: E402
from ampt.engine.select import active_api  # noqa: E402
from ampt.evaluation.evaluated_prompt import prompt_model  # noqa: E402
from ampt.models import ImageNormalizer, build_tiny_clip, load_clip, save_clip_state_dict  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402

ARCHS = {  # build_tiny_clip arguments
    "tiny": dict(vision_width=96, vision_layers=3),  # the demo's tiny CLIP, which trainers' digits.yaml fit
    "vit-b32": dict(image_resolution=224, vision_width=768, vision_layers=12, vision_patch_size=32,
                    text_width=512, text_layers=12, embed_dim=512),
    "vit-b16": dict(image_resolution=224, vision_width=768, vision_layers=12, vision_patch_size=16,
                    text_width=512, text_layers=12, embed_dim=512),
}
PRECISIONS = ("fp32", "bf16")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="tiny", help="random-weight CLIP to build (default tiny)")
    p.add_argument("--backbone", default="", help="CLIP name or weights file instead of --arch")
    p.add_argument("--trainers", nargs="+", default=[], help="trainer names (default: every trainable one)")
    p.add_argument("--classes", type=int, default=100, help="number of classes (default 100)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--steps", type=int, default=3, help="PGD steps of the training attack (default 3)")
    p.add_argument("--k", type=int, default=0, help="N_PROMPTS of trainers that have it (0 = their default)")
    p.add_argument("--eval-steps", type=int, default=100, help="PGD steps of the evaluation timing (0 = skip it)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32, or bf16 autocast (default fp32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of everything (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats first (default 1)")
    p.add_argument("--text-checkpoint", action="store_true", help="MODEL.TEXT_ENCODER.CHECKPOINT True")
    p.add_argument("--chunk-size", type=int, default=0, help="MODEL.TEXT_ENCODER.CHUNK_SIZE (default 0)")
    p.add_argument("--no-shared-prefix", action="store_true", help="MODEL.TEXT_ENCODER.SHARED_PREFIX False")
    p.add_argument("--json", default="", help="also write the numbers to this file")
    p.add_argument("--markdown", default="", help="append one table row per trainer to this file")
    p.add_argument("opts", nargs="*", default=[], help="further config overrides, KEY VALUE ...")
    return p.parse_args(argv)


def autocast(args: argparse.Namespace, device: torch.device) -> ContextManager:
    if args.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_trainer(name: str, args: argparse.Namespace, backbone: str, image_size: int) -> Any:
    """The registered trainer ``name`` on ``args.classes`` synthetic class names, without a data loader."""
    cls = active_api().TRAINER_REGISTRY.get(name)
    cfg = get_cfg_default()
    cls.add_config(cfg)
    node_name = getattr(cls, "cfg_node", "") or name.upper()
    node = cfg.TRAINER.get(node_name)
    tiny_config = find_config("trainers", name, "digits", required=False)  # the repository's or a plug-in's
    if args.arch == "tiny" and tiny_config is not None:  # settings sized for the tiny CLIP (e.g. prompt depths)
        merge_from_file(cfg, str(tiny_config))
    overrides = [
        "MODEL.BACKBONE.NAME", backbone, "INPUT.SIZE", f"({image_size}, {image_size})",
        "ADV.TRAIN.EPS", "4.0", "ADV.TRAIN.STEPS", str(args.steps), "ADV.TEST.ATTACK", "",
        "USE_CUDA", str(args.device.startswith("cuda")), "OUTPUT_DIR", tempfile.mkdtemp(prefix="bench_step_"),
        "MODEL.TEXT_ENCODER.CHECKPOINT", str(args.text_checkpoint),
        "MODEL.TEXT_ENCODER.CHUNK_SIZE", str(args.chunk_size),
        "MODEL.TEXT_ENCODER.SHARED_PREFIX", str(not args.no_shared_prefix),
    ]
    if node is not None and "PREC" in node:
        overrides += [f"TRAINER.{node_name}.PREC", "fp32"]  # bf16 is autocast around the step
    if node is not None and "N_PROMPTS" in node and args.k:
        overrides += [f"TRAINER.{node_name}.N_PROMPTS", str(args.k)]
    merge_from_list(cfg, overrides + list(args.opts))
    cfg.freeze()
    return names_only_trainer(cls, cfg, args.classes, cfg_node=node_name)


def names_only_trainer(cls: type, cfg: Any, n_classes: int, **attributes: Any) -> Any:
    """``cls`` built from ``cfg`` on class names "object 0" ... without data (the timed batch is given)."""
    classnames = [f"object {i}" for i in range(n_classes)]

    def build_data_loader(self: Any) -> None:
        self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=classnames))
        self.train_loader_x = self.val_loader = self.test_loader = None
        self.num_classes, self.lab2cname = len(classnames), dict(enumerate(classnames))

    trainer = type(f"Bench{cls.__name__}", (cls,), {"build_data_loader": build_data_loader, **attributes})(cfg)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the epoch's last batch: no LR step
    return trainer


def trainable(trainer: Any) -> bool:
    return any(p.requires_grad for p in trainer.model.parameters())


def default_trainers() -> List[str]:
    from ampt.trainer_base.clip import ClipTrainer

    registry = active_api().TRAINER_REGISTRY
    return [n for n in registry.registered_names() if issubclass(registry.get(n), ClipTrainer)]


class Floor:
    """The image tower alone: ``passes`` forward + backward-to-pixels runs (+ ``forwards`` forwards)."""

    def __init__(self, clip_model: torch.nn.Module, device: torch.device) -> None:
        self.visual = clip_model.visual.to(device).eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self.normalizer = ImageNormalizer().to(device)

    def __call__(self, images: torch.Tensor, passes: int, forwards: int = 0) -> None:
        for _ in range(passes):
            x = images.clone().requires_grad_(True)
            self.visual(self.normalizer(x)).float().sum().backward()
        with torch.no_grad():
            for _ in range(forwards):
                self.visual(self.normalizer(images))


def pgd_eval(trainer: Any, steps: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """What ``evaluate.py --attack pgd --steps N`` does per batch: attack, then predict."""
    trainer.set_model_mode("eval")
    module = prompt_model(trainer)
    attack = build_attack("pgd", module, eps=4.0, steps=steps, num_classes=trainer.num_classes)

    def run(images: torch.Tensor, labels: torch.Tensor) -> None:
        adversarial = attack(images, labels)
        with torch.no_grad():
            module(adversarial).argmax(dim=1)

    return run


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    image_size = ARCHS[args.arch].get("image_resolution", 32)
    with tempfile.TemporaryDirectory() as tmp:
        if args.backbone:
            backbone = args.backbone
            image_size = load_clip(backbone).visual.input_resolution
        else:
            backbone = str(save_clip_state_dict(build_tiny_clip(**ARCHS[args.arch]), Path(tmp) / "clip.pt"))
        names = args.trainers or default_trainers()
        trainers = {n: build_trainer(n, args, backbone, image_size) for n in names}
        skipped = [n for n, t in trainers.items() if not trainable(t)]
        trainers = {n: t for n, t in trainers.items() if n not in skipped}
        if not trainers:
            raise SystemExit(f"error: none of {names} has anything to train")
        device = next(iter(trainers.values())).device
        floor = Floor(load_clip(backbone, device=device), device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(args.classes, (args.batch,), generator=generator).to(device)
    batch = {"img": images, "label": labels, "domain": torch.zeros_like(labels)}
    evals = {n: pgd_eval(t, args.eval_steps) for n, t in trainers.items()} if args.eval_steps else {}
    for t in trainers.values():
        t.set_model_mode("train")
    jobs: Dict[str, Callable[[], Any]] = {"floor train": lambda: floor(images, args.steps + 1)}
    if args.eval_steps:
        jobs["floor eval"] = lambda: floor(images, args.eval_steps, forwards=1)
    memory: Dict[str, float] = {}
    for n, t in trainers.items():
        jobs[f"{n} train"] = lambda t=t: t.forward_backward(batch)
        if args.eval_steps:
            jobs[f"{n} eval"] = lambda n=n: evals[n](images, labels)
    times: Dict[str, List[float]] = {job: [] for job in jobs}
    with autocast(args, device):
        for i in range(args.warmup + args.repeats):
            for job, fn in jobs.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                elapsed = timed(fn, device)
                memory[job] = max(memory.get(job, 0.0), peak_memory_mib(device))
                if i >= args.warmup:
                    times[job].append(elapsed)
    medians = {job: statistics.median(t) for job, t in times.items()}
    return {"args": vars(args), "device": str(device), "threads": torch.get_num_threads(), "image_size": image_size,
            "skipped": skipped, "median_s": medians, "times_s": times, "peak_memory_mib": memory,
            "memory_kind": "max allocated (CUDA)" if device.type == "cuda" else "process peak RSS (CPU)",
            "trainers": list(trainers)}


def report(result: Dict[str, Any]) -> str:
    args, med = result["args"], result["median_s"]
    lines = [f"backbone {args['backbone'] or args['arch'] + ' (random weights)'} at {result['image_size']} px, "
             f"{args['classes']} classes, batch {args['batch']}, {args['steps']}-step PGD training attack, "
             f"{args['precision']}, {result['device']}, {result['threads']} threads; median of {args['repeats']} "
             f"after {args['warmup']} warm-up; memory: {result['memory_kind']}"]
    floor_train = med["floor train"]
    lines.append(f"  floor: {args['steps'] + 1} image fwd+bwd {1000 * floor_train:.1f} ms")
    if "floor eval" in med:
        lines.append(f"  floor: PGD-{args['eval_steps']} {args['batch'] / med['floor eval']:.1f} images/s")
    for name in result["trainers"]:
        train = med[f"{name} train"]
        line = (f"  {name:12s} step {1000 * train:10.1f} ms = {train / floor_train:5.2f} x floor, "
                f"peak {result['peak_memory_mib'][name + ' train']:.0f} MiB")
        if f"{name} eval" in med:
            ev = med[f"{name} eval"]
            line += (f"; PGD-{args['eval_steps']} {args['batch'] / ev:.1f} images/s = "
                     f"{ev / med['floor eval']:.2f} x floor time")
        lines.append(line)
    if result["skipped"]:
        lines.append(f"  not timed (nothing to train): {', '.join(result['skipped'])}")
    return "\n".join(lines)


MARKDOWN_HEADER = ("| backbone | precision | device | classes | batch | trainer | step ms | step x floor "
                   "| PGD-N images/s | PGD-N x floor | peak MiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")


def markdown_rows(result: Dict[str, Any]) -> str:
    """One table row per trainer (:data:`MARKDOWN_HEADER`'s columns)."""
    args, med = result["args"], result["median_s"]
    rows = []
    for name in result["trainers"]:
        train, ev = med[f"{name} train"], med.get(f"{name} eval")
        pgd = (f"{args['batch'] / ev:.1f} (N={args['eval_steps']})", f"{ev / med['floor eval']:.2f}") if ev else ("-", "-")
        rows.append(f"| {args['backbone'] or args['arch']} | {args['precision']} | {result['device']} | {args['classes']} "
                    f"| {args['batch']} | {name} | {1000 * train:.1f} | {train / med['floor train']:.2f} | {pgd[0]} "
                    f"| {pgd[1]} | {result['peak_memory_mib'][name + ' train']:.0f} |\n")
    return "".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_plugins("builtin")
    result = run_benchmark(args)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        with path.open("a") as table:
            table.write(("" if path.stat().st_size else MARKDOWN_HEADER) + markdown_rows(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
