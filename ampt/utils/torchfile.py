"""Say what a file is when it cannot be loaded as a PyTorch file (empty, truncated, an image, text).

``torch.load`` reports these cases as an "unsafe pickle", ``KeyError: 101``
or a miniz error; :func:`check_torch_file` looks at the bytes first and
:func:`load_error` turns what ``torch.load`` raised into one line that names
the file and the cause. Used for run checkpoints and for CLIP backbones.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Union

from ..errors import UserError

PathLike = Union[str, Path]
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"  # torch.save's legacy (pre-1.6) format is a pickle stream
_KNOWN_FORMATS = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file"),
)


class CheckpointFileError(UserError):
    """A file given as a checkpoint or as weights that is not a readable PyTorch file."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint that could not be written (full disk, quota, file size limit)."""


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def describe_foreign(head: bytes) -> str:
    """What the first bytes of a file that is not a PyTorch file look like."""
    for magic, name in _KNOWN_FORMATS:
        if head.startswith(magic):
            return name
    if _looks_like_text(head):
        return f"a text file (it starts with {head[:24].decode('utf-8', 'replace')!r})"
    return f"unknown binary data (it starts with bytes {head[:8].hex(' ')})"


def check_torch_file(path: PathLike, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointFileError` when ``path`` is empty, truncated or not a PyTorch file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(
            f'{what} "{path}" is empty (0 bytes): its write was interrupted or the disk was full; '
            "delete it and use another file"
        )
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointFileError(
                f'{what} "{path}" is truncated ({size} bytes, the end of its zip archive is missing): '
                "an interrupted copy or write; copy it again or use another file"
            )
        return
    if not head.startswith(PICKLE_PROTO):
        raise CheckpointFileError(f'{what} "{path}" is not a PyTorch file: it is {describe_foreign(head)}')


def load_error(path: PathLike, err: BaseException, what: str = "checkpoint") -> CheckpointFileError:
    """The one-line error for a ``torch.load`` failure that is not a refused pickle."""
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointFileError(
        f'{what} "{path}" is corrupt: torch.load cannot read it ({type(err).__name__}: {detail}); '
        "copy it again or use another file"
    )


def write_error(path: PathLike, err: BaseException) -> CheckpointWriteError:
    """The one-line error for a failed ``torch.save`` (a full disk shows up as an inline_container error)."""
    import shutil

    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointWriteError(
        f'Could not write "{path}" ({free}): the disk is full, over quota or the file size limit, '
        f"or not writable; the previous file is kept. Free space and re-run (resume continues). "
        f"Details: {detail}"
    )
