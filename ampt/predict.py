"""``python -m ampt.predict ARTIFACT IMAGES... [--topk 5] [--csv OUT]``: classify image files with an exported model.

Examples::

    python -m ampt.predict exported/ampt-digits data/digits/images/seven --topk 3
    python -m ampt.predict exported/apt-digits a.png b.jpg --csv predictions.csv

IMAGES are files or folders (searched recursively for .png .jpg .jpeg .bmp
.gif .webp .tif .tiff). Each image is preprocessed as the run's test images
were. The table (and the CSV) gives the top-k classes and probabilities,
and for a model with a router (AMPT) its weights per image. An image that
cannot be read is named on stderr and skipped.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from .deploy import load_classifier
from .deploy.classifier import Classifier
from .engine.progress import progress_bar
from .errors import UserError, UserFileNotFoundError
from .utils.cli import DEBUG_FLAG, DEBUG_HELP, OneLineArgumentParser, exit_process, run_cli
from .utils.io import write_text_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m ampt.predict", description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="a folder written by python -m ampt.export")
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders of images")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5, at most the number of classes)")
    p.add_argument("--csv", type=Path, default=None, metavar="OUT", help="also write the table as CSV to OUT")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return p


def image_files(paths: Sequence[Path]) -> List[Path]:
    """The files named, and the image files under the folders named (sorted), in the order given."""
    found: List[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise UserFileNotFoundError(f"{path} does not exist: IMAGES are image files or folders of images")
    if not found:
        raise UserError(f"No image files ({' '.join(IMAGE_SUFFIXES)}) under {' '.join(map(str, paths))}")
    return found


def _read(classifier: Classifier, path: Path) -> Optional[torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return classifier.preprocess(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        print(f"skipped {path}: cannot read it as an image ({' '.join(str(err).split())[:160]})", file=sys.stderr)
        return None


def _batches(classifier: Classifier, files: Sequence[Path], size: int) -> Iterator[Tuple[List[Path], torch.Tensor]]:
    paths: List[Path] = []
    tensors: List[torch.Tensor] = []
    for path in progress_bar(files, total=len(files), desc="predict", leave=True):
        tensor = _read(classifier, path)
        if tensor is not None:
            paths.append(path)
            tensors.append(tensor)
        if len(tensors) == size:
            yield paths, torch.stack(tensors)
            paths, tensors = [], []
    if tensors:
        yield paths, torch.stack(tensors)


@torch.no_grad()
def predict(classifier: Classifier, files: Sequence[Path], topk: int = 5, batch_size: int = 32) -> List[dict]:
    """One row per readable image: ``image``, ``top`` [(class, probability)], and ``router_weights`` or None."""
    device = classifier.text_features.device
    k = min(topk, len(classifier.classnames))
    rows = []
    for paths, images in _batches(classifier, files, batch_size):
        probabilities = classifier(images.to(device)).softmax(dim=-1).cpu()
        weights = classifier.router_weights()
        values, indices = probabilities.topk(k, dim=-1)
        for i, path in enumerate(paths):
            top = [(classifier.classnames[int(j)], float(v)) for v, j in zip(values[i], indices[i])]
            rows.append({"image": str(path), "top": top,
                         "router_weights": None if weights is None else [float(w) for w in weights[i].cpu()]})
    return rows


def _columns(rows: List[dict], k: int) -> Tuple[List[str], List[List[str]]]:
    n_router = len(rows[0]["router_weights"] or []) if rows else 0
    header = ["image"] + [f"{name}{r}" for r in range(1, k + 1) for name in ("class_", "prob_")]
    header += [f"router_w{i}" for i in range(1, n_router + 1)]
    body = []
    for row in rows:
        cells = [row["image"]]
        for name, probability in row["top"]:
            cells += [name, f"{probability:.4f}"]
        cells += [f"{w:.4f}" for w in row["router_weights"] or []]
        body.append(cells)
    return header, body


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        raise UserError(f"--topk and --batch-size must be >= 1 (got {args.topk}, {args.batch_size})")
    logging.getLogger("ampt").setLevel(logging.WARNING)
    files = image_files(args.images)
    classifier = load_classifier(args.artifact, device=args.device)
    rows = predict(classifier, files, args.topk, args.batch_size)
    header, body = _columns(rows, min(args.topk, len(classifier.classnames)))
    from tabulate import tabulate

    print(tabulate(body, headers=header))
    skipped = len(files) - len(rows)
    print(f"{len(rows)} image(s) predicted{f', {skipped} skipped (named above)' if skipped else ''}", file=sys.stderr)
    if args.csv is not None:
        import io

        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(body)
        write_text_atomic(text.getvalue(), args.csv)
    return 0 if rows else 1


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    exit_process(cli())
