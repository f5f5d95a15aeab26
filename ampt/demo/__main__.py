"""``python -m ampt.demo``: the embedded Digits demo (see :mod:`ampt.demo.run`)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from .pretrain import BACKBONE_KINDS
from .run import DEFAULT_METHODS, SUMMARY_FILE, run_demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ampt.demo", description=__doc__)
    p.add_argument("--root", default="data", help="data root; Digits is written to <root>/digits once")
    p.add_argument("--output-dir", default="output/demo", help="runs, the cached backbone and the table")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of every method (>= 0)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="trainer names")
    p.add_argument("--shots", type=int, default=4, help="training images per class")
    p.add_argument("--standard", action="store_true",
                   help="pretrain the backbone without adversarial images (default: TeCoA-style, eps 4/255)")
    p.add_argument("--backbone-kind", choices=BACKBONE_KINDS, default="clip",
                   help="build the tiny CLIP with the clip package (default) or open_clip; open_clip runs "
                        "and the table go to <output-dir>/open_clip")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides passed to every train.py run")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    table = run_demo(args.root, args.output_dir, seeds=args.seeds, methods=args.methods, shots=args.shots,
                     adversarial=not args.standard, force=args.force, opts=args.opts,
                     backbone_kind=args.backbone_kind)
    print(table)
    out_dir = Path(args.output_dir) / ("open_clip" if args.backbone_kind == "open_clip" else "")
    print(f"\nTable written to {out_dir / 'results.md'} and {out_dir / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    from ampt.utils.cli import exit_process, run_cli

    exit_process(run_cli(main))
