"""Locks where several processes meet: one trainer per run folder, serialized results.json edits.

Both use ``fcntl.flock`` on a small lock file. The OS releases such a lock
when its holder exits, however it dies (kill -9 included), so there are no
stale locks to clean up, and lock files are never deleted (deleting one
while another process waits on it would let two holders in). On NFS, Linux
emulates ``flock`` with byte-range locks that work across clients only when
the server runs lock management (NFSv4, or NFSv3 with lockd); where the
filesystem refuses locks (ENOLCK, EOPNOTSUPP) a warning says that the run
folder is unprotected and the work goes on.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Tuple, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
RUN_LOCK_FILE = ".run.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunLockedError(RuntimeError):
    """The run folder is locked by another live process (a trainer)."""


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies


def _flock(fd: int, path: Path, blocking: bool) -> bool:
    """Lock ``fd``; False when another holder has it (non-blocking only). Unsupported: warn, True."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError as err:
        if err.errno in _BUSY and not blocking:
            return False
        if err.errno in _UNSUPPORTED:
            logger.warning("The filesystem of %s does not support file locks (%s): it is NOT protected "
                           "against concurrent writers", path, os.strerror(err.errno))
            return True
        raise


@contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for a read-modify-write; waits for it."""
    path = Path(path)
    fd = _open_lock_file(path)
    try:
        _flock(fd, path, blocking=True)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------- the run lock
_held: Dict[str, Tuple[int, int]] = {}  # real path of the lock file -> (fd, depth)
_held_guard = threading.Lock()


def _holder_description(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:
        return "another process"
    since = f", since {info['started']}" if info.get("started") else ""
    return f"process {info['pid']} on host {info.get('host', '?')}{since}"


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)


def acquire_run_lock(run_dir: PathLike) -> None:
    """Take the exclusive lock of ``run_dir`` (re-entrant within a process), or raise RunLockedError."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / RUN_LOCK_FILE
    key = os.path.realpath(path)
    with _held_guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            return
        fd = _open_lock_file(path)
        if not _flock(fd, path, blocking=False):
            holder = _holder_description(fd)
            os.close(fd)
            raise RunLockedError(
                f"{run_dir} is being trained by {holder}; wait for it to end, or train into another --output-dir"
            )
        _record_holder(fd)
        _held[key] = (fd, 1)


def release_run_lock(run_dir: PathLike) -> None:
    """Undo one :func:`acquire_run_lock`; the last release unlocks the folder."""
    key = os.path.realpath(Path(run_dir) / RUN_LOCK_FILE)
    with _held_guard:
        if key not in _held:
            return
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
        os.ftruncate(fd, 0)
        os.close(fd)


@contextmanager
def run_lock(run_dir: PathLike) -> Iterator[None]:
    """Hold the run folder's lock for the block: a second trainer into ``run_dir`` is refused."""
    acquire_run_lock(run_dir)
    try:
        yield
    finally:
        release_run_lock(run_dir)
