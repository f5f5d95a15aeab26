#!/usr/bin/env python
"""Time building ImageNet (1.28M train + 50k val entries) and its 16-shot subset.

Writing 1.33M real files would take longer than the thing measured, so the
script writes what the ImageNet plug-in reads on every build after the
first: ``classnames.txt``, the 2000 class folders of ``images/{train,val}``
(empty) and the image index ``ampt_image_index.json`` listing the file
names, with the folders' real modification times so the index is accepted
as current. Timed, each in the same process:

1. ``full``: ``ImageNet(cfg)`` with all shots: one ``os.scandir`` of each
   split folder plus a stat per class folder (2000), reading the index
   JSON, building 1.33M ``Datum`` objects and the label checks.
2. ``16-shot (sample)``: the same plus Dassl's per-class sampling and
   writing ``split_fewshot/shot_16-seed_1.json``.
3. ``16-shot (cached)``: the same with the few-shot cache read back.

``--scan-classes``/``--scan-files`` add a cold build (no index) of a real
tree of empty files, to show what listing costs per file on this disk.

    python scripts/bench_dataset_index.py [--root DIR] [--keep]
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ampt.config import get_cfg_default  # noqa: E402
from ampt.plugins import load_plugins  # noqa: E402


def imagenet_plugin():
    """The ImageNet class and its module (for the index format)."""
    load_plugins()
    from ampt.api import DATASET_REGISTRY

    cls = DATASET_REGISTRY.get("ImageNet")
    return cls, sys.modules[cls.__module__]


def write_tree(root: Path, n_classes: int, files_per_class: Callable[[int, str], List[str]],
               create_files: bool) -> Tuple[Dict[str, list], Dict[str, list]]:
    """``classnames.txt`` and ``images/{train,val}/<wnid>/``; returns the index of both splits."""
    dataset = root / "imagenet"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    dataset.mkdir(parents=True, exist_ok=True)
    (dataset / "classnames.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    index: Dict[str, Dict[str, list]] = {"train": {}, "val": {}}
    for split in ("train", "val"):
        for label, wnid in enumerate(wnids):
            folder = dataset / "images" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            names = files_per_class(label, split)
            if create_files:
                for name in names:
                    (folder / name).touch()
            index[split][wnid] = [folder.stat().st_mtime_ns, names]
    return index["train"], index["val"]


def build(cls, root: Path, shots: int, seed: int):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "ImageNet"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    start = time.perf_counter()
    dataset = cls(cfg)
    return dataset, time.perf_counter() - start


def counts(n_total: int, n_classes: int) -> List[int]:
    """``n_total`` spread over ``n_classes`` as evenly as possible."""
    base, extra = divmod(n_total, n_classes)
    return [base + (1 if i < extra else 0) for i in range(n_classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="", help="scratch folder (default: a temporary one)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train", type=int, default=1_281_167, help="train entries in total")
    parser.add_argument("--val", type=int, default=50_000, help="val (test) entries in total")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scan-classes", type=int, default=100,
                        help="classes of the real tree timed without an index (0: skip)")
    parser.add_argument("--scan-files", type=int, default=100, help="empty files per class and split there")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    cls, module = imagenet_plugin()
    scratch = Path(args.root or tempfile.mkdtemp(prefix="ampt_bench_"))
    try:
        root = scratch / "indexed"
        train_n, val_n = counts(args.train, args.classes), counts(args.val, args.classes)
        start = time.perf_counter()
        def names(label: int, split: str) -> List[str]:
            return [f"x{label}_{i}.JPEG" for i in range((train_n if split == "train" else val_n)[label])]

        train, val = write_tree(root, args.classes, names, create_files=False)
        module.write_index(str(root / "imagenet" / module.INDEX_FILE), train, val)
        del train, val
        setup = time.perf_counter() - start
        index_mb = (root / "imagenet" / module.INDEX_FILE).stat().st_size / 2**20
        print(f"generated index: {args.train:,} train + {args.val:,} val entries, {args.classes} classes, "
              f"{index_mb:.1f} MiB ({setup:.1f} s)")

        full, t_full = build(cls, root, -1, args.seed)
        assert len(full.train_x) == args.train and len(full.test) == args.val
        assert full.num_classes == args.classes
        del full
        few, t_sample = build(cls, root, args.shots, args.seed)
        few_again, t_cached = build(cls, root, args.shots, args.seed)
        assert len(few.train_x) == args.shots * args.classes
        assert [d.impath for d in few.train_x] == [d.impath for d in few_again.train_x]
        print(f"ImageNet, all images      : {t_full:6.2f} s")
        print(f"ImageNet, {args.shots}-shot (sample) : {t_sample:6.2f} s")
        print(f"ImageNet, {args.shots}-shot (cached) : {t_cached:6.2f} s")
        del few, few_again
        gc.collect()

        if args.scan_classes > 0:
            cold = scratch / "scanned"
            write_tree(cold, args.scan_classes,
                       lambda label, split: [f"x{label}_{i}.JPEG" for i in range(args.scan_files)],
                       create_files=True)
            n_files = 2 * args.scan_classes * args.scan_files
            _, t_cold = build(cls, cold, -1, args.seed)
            _, t_warm = build(cls, cold, -1, args.seed)
            print(f"cold scan of {n_files:,} real files: {t_cold:.3f} s "
                  f"({t_cold / n_files * 1e6:.1f} us/file); from the index: {t_warm:.3f} s")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"peak RSS: {peak:.0f} MiB; python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
