"""``python -m ampt.export RUN OUT_DIR [--onnx] [--force]``: export a trained run (docs/export.md).

Examples::

    python -m ampt.export output/demo/AMPT/seed1 exported/ampt-digits
    python -m ampt.export output/demo/APT/seed1 exported/apt-digits --onnx
    python -m ampt.export RUN OUT --force              # replace OUT, or export an unfinished run's latest epoch

OUT_DIR gets model.safetensors (the learned tensors, no pickle),
ampt_model.json (what the model is, its backbone and results) and
README.md (a model card, ready for huggingface_hub.upload_folder).
Load it with ampt.load_classifier(OUT_DIR).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from ..deploy.artifact_format import CARD_FILE, METADATA_FILE, ONNX_FILE, TENSORS_FILE
from ..utils import setup_logger
from ..utils.cli import DEBUG_FLAG, DEBUG_HELP, OneLineArgumentParser, exit_process, run_cli
from .artifact import export_run


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m ampt.export", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    p.add_argument("out_dir", type=Path, help="the folder to write (created; replaced only with --force)")
    p.add_argument("--onnx", action="store_true",
                   help="also write model.onnx (fixed-prompt methods and AMPT), checked with onnx and onnxruntime")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT_DIR, and export a run that has not finished (its latest checkpoint)")
    p.add_argument("--load-epoch", type=int, default=None, help="checkpoint epoch (default: the model the run deployed)")
    p.add_argument("--license", default="", metavar="ID",
                   help="the backbone weights' license for the model card (a Hugging Face license id, e.g. mit); "
                        "default: MIT for OpenAI's CLIP names, else 'other' (not recorded)")
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logger(None, level=logging.WARNING)
    out = export_run(args.run_dir, args.out_dir, force=args.force, onnx=args.onnx, load_epoch=args.load_epoch,
                     license_id=args.license)
    for name in (TENSORS_FILE, METADATA_FILE, CARD_FILE, ONNX_FILE):
        path = out / name
        if path.is_file():
            print(f"{path}  {path.stat().st_size / 1024:.1f} KiB")
    return 0


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    exit_process(cli())
