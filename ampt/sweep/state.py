"""Per-cell state files and locks under ``<output_root>/.sweep/``.

``cells/<id>.json`` holds a cell's last state (running / done / failed), its
attempts, log path and error tail; it is written atomically and only by the
process that holds ``cells/<id>.lock`` (``fcntl.flock``, released by the
kernel when that process dies, so a killed or pre-empted worker never leaves
a cell stuck). Lock files stay in place: deleting one would let two
processes hold "the same" lock.

A run folder is also held by its ``train.py`` (``<run>/.run.lock``,
:mod:`ampt.utils.locks`), be it the sweep's, a user's own or one a killed
runner left behind: :func:`run_is_locked` tells ``status`` that it runs.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..utils.io import read_json, write_json
from ..utils.locks import RUN_LOCK_FILE

SWEEP_DIR = ".sweep"


class LockBusy(RuntimeError):
    """Another process holds the lock."""


class FileLock:
    """An exclusive ``flock`` on ``path``; ``blocking=False`` raises :class:`LockBusy` when held."""

    def __init__(self, path: Path, blocking: bool = False) -> None:
        self.path, self.blocking, self._fd = Path(path), blocking, -1

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self._fd)
            raise LockBusy(str(self.path)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock now (probed without waiting)."""
    if not Path(path).exists():
        return False
    try:
        with FileLock(path):
            return False
    except LockBusy:
        return True


def run_is_locked(run_dir: str) -> bool:
    """Whether a ``train.py`` holds the run folder's lock now.

    Probed only when the lock file names a holder (it does from acquisition
    until release, or until its holder was killed): probing takes the lock
    for an instant, which would refuse a ``train.py`` starting right then.
    """
    path = Path(run_dir) / RUN_LOCK_FILE
    try:
        if path.stat().st_size == 0:
            return False
    except FileNotFoundError:
        return False
    return is_locked(path)


class CellState:
    """The state file, lock and log of one cell (keyed by its run folder)."""

    def __init__(self, output_root: str, run_dir: str) -> None:
        root = Path(output_root)
        try:
            rel = str(Path(run_dir).resolve().relative_to(root.resolve()))
        except ValueError:
            rel = str(Path(run_dir).resolve())
        cell_id = hashlib.sha1(rel.encode()).hexdigest()[:16]
        self.run_dir = run_dir
        self.path = root / SWEEP_DIR / "cells" / f"{cell_id}.json"
        self.lock_path = self.path.with_suffix(".lock")
        self.log_path = root / SWEEP_DIR / "logs" / f"{cell_id}.log"

    def read(self) -> Dict[str, Any]:
        try:
            return read_json(self.path)
        except (FileNotFoundError, ValueError):
            return {}

    def write(self, state: str, **fields: Any) -> Dict[str, Any]:
        """Replace the file atomically (call only while holding the cell lock)."""
        data = {**self.read(), **fields, "state": state, "run_dir": self.run_dir, "log": str(self.log_path),
                "host": socket.gethostname(), "pid": os.getpid(), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(data, self.path)
        return data

    def lock(self) -> FileLock:
        return FileLock(self.lock_path)

    def running(self) -> bool:
        return is_locked(self.lock_path)

    def failed(self) -> Optional[Dict[str, Any]]:
        data = self.read()
        return data if data.get("state") == "failed" else None
