"""Checkpoints: Dassl's layout, plain state dicts, loaded with ``weights_only=True``.

Layout: ``<dir>/<model name>/model.pth.tar-<epoch>`` plus a text file
``checkpoint`` naming the latest epoch file, and ``model-best.pth.tar``
(``TEST.FINAL_MODEL best_val``). A checkpoint is
``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`` where
``epoch`` counts finished epochs. Unlike Dassl, saving the best model does not
repoint ``checkpoint`` (resume always continues from the latest epoch), and
every file (the pointer included) is written to a temporary name first, then
renamed, with the umask's mode. When resuming training, an empty or dangling
pointer falls back, with a warning, on the newest complete ``model.pth.tar-N``
(:func:`latest_checkpoint`); loading a model to evaluate it never does
(:func:`written_checkpoint`): the file it names is loaded or named in the
error. A file that cannot be
loaded (empty, truncated, not a PyTorch file, of another model's shape) is
reported in one line naming the file and the cause.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
from ..errors import UserError, UserFileNotFoundError

from ..utils.io import atomic_path, write_text_atomic
from ..utils.torchfile import CheckpointFileError, check_torch_file, load_error, write_error

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
LATEST_FILE = "checkpoint"
BEST_FILE = "model-best.pth.tar"
EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holding Python objects that would run code when loaded."""


class CheckpointMissingError(UserFileNotFoundError):
    """A run folder whose checkpoint files exist but none can be resumed or loaded."""


def epoch_file(epoch: int) -> str:
    return f"model.pth.tar-{epoch}"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    try:
        with atomic_path(path) as (fd, tmp):
            os.close(fd)
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as err:  # a full disk: "[enforce fail at inline_container.cc] ..."
        raise write_error(path, err) from None


def _atomic_copy(src: Path, dst: Path) -> None:
    try:
        with atomic_path(dst) as (fd, tmp):
            os.close(fd)
            shutil.copyfile(src, tmp)
    except OSError as err:
        raise write_error(dst, err) from None


def save_checkpoint(
    state: Dict[str, Any],
    save_dir: PathLike,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> Path:
    """Save ``state`` to ``save_dir/model_name`` (default ``model.pth.tar-<epoch>``).

    A default-named (per-epoch) save also updates the ``checkpoint`` file;
    ``is_best`` copies the file to ``model-best.pth.tar``.
    """
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if remove_module_from_keys:
        state = dict(state)
        state["state_dict"] = OrderedDict(
            (k[7:] if k.startswith("module.") else k, v) for k, v in state["state_dict"].items()
        )
    fpath = save_dir / (model_name or epoch_file(state["epoch"]))
    _atomic_torch_save(state, fpath)
    logger.info("Checkpoint saved to %s", fpath)
    if not model_name:
        try:
            write_text_atomic(f"{fpath.name}\n", save_dir / LATEST_FILE)
        except OSError as err:
            raise write_error(save_dir / LATEST_FILE, err) from None
    if is_best:
        _atomic_copy(fpath, save_dir / BEST_FILE)
        logger.info("Best checkpoint saved to %s", save_dir / BEST_FILE)
    return fpath


def load_checkpoint(fpath: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; code-running pickles and broken files are refused."""
    if fpath is None:
        raise ValueError("Checkpoint path is None")
    fpath = Path(fpath)
    if not fpath.is_file():
        raise UserFileNotFoundError(f'No checkpoint file at "{fpath}"')
    check_torch_file(fpath)
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise load_error(fpath, err) from None
        raise UnsafeCheckpointError(
            f'Refusing to load "{fpath}": it holds Python objects beyond tensors and plain '
            "containers, which could run code when unpickled. Checkpoints of this toolkit never do. "
            "If you trust where the file comes from, load it yourself with torch.load(..., "
            "weights_only=False) and re-save only its state dicts. Details: "
            f"{str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError) as err:
        raise load_error(fpath, err) from None


def epoch_files(model_dir: PathLike) -> Dict[int, Path]:
    """``{epoch: path}`` of the ``model.pth.tar-N`` files in ``model_dir``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found = {}
    for path in model_dir.iterdir():
        match = EPOCH_FILE.match(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def is_complete(path: Path) -> bool:
    """A non-empty file whose zip archive is whole (torch.save's format)."""
    return path.stat().st_size > 0 and zipfile.is_zipfile(path)


def newest_complete_checkpoint(model_dir: PathLike) -> Optional[Path]:
    """The ``model.pth.tar-N`` with the largest N whose zip archive is whole, or None."""
    for _, path in sorted(epoch_files(model_dir).items(), reverse=True):
        if is_complete(path):
            return path
    return None


def has_leftover_state(model_dir: PathLike) -> bool:
    """Whether ``model_dir`` holds a pointer or epoch files (loadable or not)."""
    return (Path(model_dir) / LATEST_FILE).exists() or bool(epoch_files(model_dir))


def read_pointer(pointer: Path) -> str:
    """The file name the ``checkpoint`` pointer holds; "" when it is missing, empty or unreadable."""
    try:
        lines = pointer.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    return lines[0].strip() if lines else ""


def latest_checkpoint(model_dir: PathLike) -> Optional[Path]:
    """The file named by ``model_dir/checkpoint``, or None when there is none.

    An empty or unreadable pointer, or one naming a missing or incomplete
    file, falls back on the newest complete ``model.pth.tar-N``, with a warning.
    """
    model_dir = Path(model_dir)
    pointer = model_dir / LATEST_FILE
    if not pointer.is_file():
        fallback = newest_complete_checkpoint(model_dir)
        if fallback is not None:
            logger.warning("%s has no '%s' file: using the newest complete checkpoint %s",
                           model_dir, LATEST_FILE, fallback.name)
        return fallback
    name = read_pointer(pointer)
    path = model_dir / name if name else None
    if path is not None and path.is_file() and is_complete(path):
        return path
    fallback = newest_complete_checkpoint(model_dir)
    problem = "is empty" if not name else f"names {name}, which is missing or incomplete"
    logger.warning("%s %s: using the newest complete checkpoint (%s)", pointer, problem,
                   fallback.name if fallback is not None else "none found")
    return fallback


def written_checkpoint(model_dir: PathLike) -> Optional[Path]:
    """The file the ``checkpoint`` pointer names, without a fallback on an older epoch (evaluation).

    Without a pointer, the newest ``model.pth.tar-N`` (a folder copied without
    it); None when there is neither. A missing or broken file it names is
    refused in one line naming it.
    """
    model_dir = Path(model_dir)
    pointer = model_dir / LATEST_FILE
    if not pointer.exists():
        epochs = epoch_files(model_dir)
        return epochs[max(epochs)] if epochs else None
    name = read_pointer(pointer)
    path = model_dir / name
    if not name or not path.is_file() or not is_complete(path):
        problem = "is empty or unreadable" if not name else f"names {path}, which is {_state(path)}"
        whole = sorted(e for e, p in epoch_files(model_dir).items() if is_complete(p))
        raise CheckpointMissingError(
            f"{pointer} {problem}: the latest checkpoint, which no older epoch stands in for (whole epochs "
            f"there: {', '.join(map(str, whole)) or 'none'}). Restore the file, load another epoch "
            "(--load-epoch N), or re-train (--force)")
    return path


def _state(path: Path) -> str:
    if not path.is_file():
        return "missing"
    return "empty" if path.stat().st_size == 0 else "truncated or not a PyTorch file"


def resume_from_checkpoint(
    fdir: PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
) -> int:
    """Load the latest checkpoint of ``fdir`` into model/optimizer/scheduler; returns its epoch."""
    fpath = latest_checkpoint(fdir)
    if fpath is None:
        raise UserFileNotFoundError(f"No '{LATEST_FILE}' file (or the file it names) in {fdir}")
    logger.info('Loading checkpoint from "%s"', fpath)
    checkpoint = load_checkpoint(fpath)
    load_state_dict_checked(model, checkpoint["state_dict"], fpath)
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    logger.info("Previous epoch: %d", checkpoint["epoch"])
    return int(checkpoint["epoch"])


def load_state_dict_checked(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: PathLike) -> None:
    """``model.load_state_dict`` whose key or shape mismatch is one line naming ``source``."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise mismatch_error(model, source, err) from None


def mismatch_error(model: nn.Module, source: PathLike, err: RuntimeError) -> CheckpointFileError:
    """One line for PyTorch's multi-line "Error(s) in loading state_dict" (missing keys, size mismatch)."""
    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return CheckpointFileError(
        f'"{source}" does not fit the {type(model).__name__} this config builds '
        f"({'; '.join(problems[:3]) or str(err).splitlines()[0]}): it was saved with other settings "
        "(e.g. N_CTX, N_PROMPTS, CSC, backbone); use the config it was trained with"
    )


def load_pretrained_weights(model: nn.Module, weight_path: PathLike) -> None:
    """Load matching keys (same name and shape) from a checkpoint or a bare state dict."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint)
    own = model.state_dict()
    matched = OrderedDict()
    for k, v in state_dict.items():
        k = k[7:] if k.startswith("module.") else k
        if k in own and own[k].size() == v.size():
            matched[k] = v
    if not matched:
        raise UserError(f"No key of {weight_path} matches the model (name and shape); nothing loaded")
    own.update(matched)
    model.load_state_dict(own)
    skipped = len(state_dict) - len(matched)
    logger.info("Loaded %d tensors from %s (%d skipped: name or shape differ)", len(matched), weight_path, skipped)


def weights_digest(trainer: Any) -> str:
    """A hash of the trainer's registered (trained) weights: which model a record or progress file measured."""
    import hashlib

    digest = hashlib.sha256()
    for name in trainer.get_model_names():
        for key, value in sorted(trainer._models[name].state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


class CheckpointMixin:
    """Trainer methods over ``_models/_optims/_scheds`` (Dassl's names), with safe loading."""

    def save_model(
        self, epoch: int, directory: str, is_best: bool = False,
        val_result: Optional[float] = None, model_name: str = "",
    ) -> None:
        """Save every registered model as ``directory/<name>/model.pth.tar-<epoch + 1>``."""
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": None if val_result is None else float(val_result),
            }
            save_checkpoint(state, Path(directory) / name, is_best=is_best, model_name=model_name)

    def has_checkpoints(self, directory: str) -> bool:
        """Whether every registered model has a latest (or newest complete) checkpoint under ``directory``."""
        names = self.get_model_names()
        return bool(names) and all(latest_checkpoint(Path(directory) / n) is not None for n in names)

    def unusable_model_dirs(self, directory: str) -> List[str]:
        """Model folders under ``directory`` that hold checkpoint files of which none can be resumed."""
        names = self.get_model_names()
        usable = [n for n in names if latest_checkpoint(Path(directory) / n) is not None]
        return [str(Path(directory) / n) for n in names
                if n not in usable and (usable or has_leftover_state(Path(directory) / n))]

    def resume_model_if_exist(self, directory: str) -> int:
        """Load the latest checkpoints of ``directory``; returns the epoch to start from (0 if none)."""
        if not self.has_checkpoints(directory):
            logger.info("No checkpoint found in %s, train from scratch", directory)
            return 0
        start_epoch = 0
        for name in self.get_model_names():
            start_epoch = resume_from_checkpoint(
                Path(directory) / name, self._models[name], self._optims[name], self._scheds[name]
            )
        return start_epoch

    def _checkpoint_file(self, model_dir: Path, epoch: Optional[int]) -> Path:
        if epoch is not None:
            path = model_dir / epoch_file(epoch)
        elif (model_dir / BEST_FILE).is_file():
            path = model_dir / BEST_FILE
        else:
            path = written_checkpoint(model_dir) or model_dir / BEST_FILE
        if not path.is_file():
            found = sorted(p.name for p in model_dir.glob("model*")) if model_dir.is_dir() else []
            raise UserFileNotFoundError(f"No model at {path}; files there: {', '.join(found) or 'none'}")
        return path

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights of every registered model: epoch ``epoch``, else best, else latest."""
        if not directory:
            logger.info("load_model() skipped: no model directory given")
            return
        for name in self.get_model_names():
            path = self._checkpoint_file(Path(directory) / name, epoch)
            checkpoint = load_checkpoint(path)
            val = checkpoint.get("val_result")
            logger.info(
                "Load %s to %s (epoch=%s%s)", path, name, checkpoint.get("epoch"),
                "" if val is None else f", val_result={val:.1f}",
            )
            try:
                self.load_state_dict_into(name, checkpoint["state_dict"])
            except RuntimeError as err:
                raise mismatch_error(self._models[name], path, err) from None
            self.loaded_checkpoint = {"checkpoint_epoch": checkpoint.get("epoch"),
                                      "model_dir": str(Path(directory).resolve())}

    def load_state_dict_into(self, name: str, state_dict: Dict[str, torch.Tensor]) -> None:
        """Hook: put a checkpoint's weights into model ``name`` (CLIP trainers drop frozen buffers)."""
        self._models[name].load_state_dict(state_dict)
