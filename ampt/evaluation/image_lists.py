"""Fixed lists of test images: ``evaluate.py --image-ids FILE`` and the list a ``--n-samples`` subset writes.

Format (RobustBench's): one image path per line, relative to some folder of
the dataset (``n01440764/ILSVRC2012_val_00000293.JPEG``; RobustBench's
5,000-image ImageNet list, which APT also evaluates on, is the file
``robustbench/data/imagenet_test_image_ids.txt`` of the ``robustbench``
package). A line names the test image whose path ends with it, component by
component; blank lines and lines starting with ``#`` are skipped. A list is
identified by the SHA-256 of its normalized lines (:func:`list_digest`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..errors import UserError, UserFileNotFoundError
from ..utils.io import write_text_atomic

LIST_DIR = "image_lists"


def read_image_ids(path: Path) -> List[str]:
    """The normalized lines of a list file (forward slashes, no leading ``./``)."""
    if not path.is_file():
        raise UserFileNotFoundError(f"--image-ids {path} does not exist: give a text file with one image path per line")
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip().replace("\\", "/")
        if not line or line.startswith("#"):
            continue
        while line.startswith("./"):
            line = line[2:]
        lines.append(line.strip("/"))
    if not lines:
        raise UserError(f"--image-ids {path} lists no image (one path per line; # starts a comment)")
    return lines


def list_digest(ids: Sequence[str]) -> str:
    """SHA-256 (hex) of the list, one id per line: what records name a list by."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8")).hexdigest()


def match_image_ids(ids: Sequence[str], impaths: Sequence[str], list_path: Path) -> List[int]:
    """The dataset indices of ``ids`` (in list order); a missing, ambiguous or repeated id is one line naming it."""
    by_suffix: Dict[Tuple[str, ...], int] = {}
    ambiguous = set()
    for index, impath in enumerate(impaths):
        parts = tuple(Path(impath).parts)
        for start in range(len(parts)):
            suffix = parts[start:]
            if suffix in by_suffix and by_suffix[suffix] != index:
                ambiguous.add(suffix)
            by_suffix[suffix] = index
    indices, seen = [], {}
    for line_no, image_id in enumerate(ids, 1):
        suffix = tuple(Path(image_id).parts)
        if suffix in ambiguous:
            raise UserError(f"{list_path}: {image_id} names several test images; give more of its path")
        if suffix not in by_suffix:
            missing = sum(tuple(Path(i).parts) not in by_suffix for i in ids)
            raise UserError(f"{list_path}: {image_id} is not in the test set ({missing} of {len(ids)} listed images "
                            "are missing); check the dataset, --subsample and the list")
        index = by_suffix[suffix]
        if index in seen:
            raise UserError(f"{list_path}: {image_id} is listed twice (entries {seen[index]} and {line_no})")
        seen[index] = line_no
        indices.append(index)
    return indices


def relative_ids(impaths: Sequence[str], root: str) -> List[str]:
    """Paths relative to the dataset root (forward slashes): the lines of a written list."""
    out = []
    for impath in impaths:
        try:
            rel = os.path.relpath(impath, root) if root else impath
        except ValueError:
            rel = impath
        out.append(Path(rel).as_posix() if not rel.startswith("..") else Path(impath).as_posix())
    return out


def write_image_list(run_dir: Path, name: str, ids: Sequence[str]) -> Path:
    """Write ``ids`` to ``RUN_DIR/image_lists/<name>.txt`` (atomically; the same content is left as it is)."""
    path = run_dir / LIST_DIR / f"{name}.txt"
    text = "".join(f"{i}\n" for i in ids)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(text, path)
    return path
