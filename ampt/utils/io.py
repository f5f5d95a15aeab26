"""Small file helpers (Dassl names); writes are atomic and honour the umask."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Tuple, Union

PathLike = Union[str, Path]
_UMASK_LOCK = threading.Lock()


def mkdir_if_missing(path: PathLike) -> None:
    os.makedirs(path, exist_ok=True)


def read_json(path: PathLike) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (``mkstemp`` gives 0o600)."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Tuple[int, str]]:
    """Yield ``(fd, tmp)`` of a temporary file beside ``path``; renamed over ``path`` on success.

    The temporary file gets the umask's mode, so a group-shared folder stays
    readable; on any error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path: PathLike) -> None:
    """Write ``text`` to a temporary file in the same folder, then rename it over ``path``."""
    with atomic_path(path) as (fd, _):
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(obj: Any, path: PathLike, indent: int = 2) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    # one-shot C encoder: ~3x faster than json.dump
    write_text_atomic(json.dumps(obj, indent=indent) + "\n", path)


def listdir_nohidden(path: PathLike, sort: bool = False) -> List[str]:
    """Entries of ``path`` that do not start with a dot."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items
