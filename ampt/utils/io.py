"""Small file helpers (Dassl names); writes are atomic and honour the umask."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Tuple, Union

from ..errors import UserError

PathLike = Union[str, Path]
_UMASK_LOCK = threading.Lock()
# Write failures a user fixes (space, quota, file-size limit, a read-only or too long path), with the fix.
USER_WRITE_ERRORS = {
    errno.ENOSPC: "free space on that disk and run the command again",
    errno.EDQUOT: "free space within your quota and run the command again",
    errno.EFBIG: "the file-size limit (ulimit -f) is too low for it: raise it and run the command again",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENAMETOOLONG: "a name in the path is longer than the file system allows (255 bytes): shorten it",
}
NAME_MAX = 255
PATH_MAX = 4096


def check_path_fits(path: PathLike, what: str) -> None:
    """Refuse, in one line, a path with a name over 255 bytes or a total over 4096 bytes (before anything is written)."""
    text = os.fsencode(os.path.abspath(path))
    if len(text) > PATH_MAX:
        raise UserError(f"{what} is {len(text)} bytes long; file systems allow {PATH_MAX}: choose a shorter path")
    for part in Path(os.path.abspath(path)).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(f"{what}: the name {part[:40]}... is {len(os.fsencode(part))} bytes; file systems allow "
                            f"{NAME_MAX} per name: shorten it")


def user_write_error(err: OSError, path: PathLike) -> UserError:
    """A one-line :class:`UserError` for a write failure the user must fix, or None for any other (a bug)."""
    fix = USER_WRITE_ERRORS.get(err.errno)
    if fix is None:
        return None  # type: ignore[return-value]
    return UserError(f"cannot write {path}: {err.strerror}; {fix} (the previous file, if any, is left as it was)")


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (user_write_error(err, path) or err) from None
    try:
        os.fchmod(fd, file_mode())
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and user_write_error(err, path) is not None:
            raise user_write_error(err, path) from None
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
