"""Rebuild a trained run's trainer from its run folder: ``config.yaml``, plug-ins, engine and weights.

:func:`load_run` is how ``evaluate.py`` and ``python -m ampt.interpret``
get a finished run back: the trainer the run's config names, built by the
engine the run was trained with, its checkpoint loaded, in eval mode. It may
swap the test set for another dataset or the other half of the classes
(base-to-new), which a class-specific prompt refuses.

The checkpoint is never a silent stand-in: a finished run's deployed model
(``model-best.pth.tar``, else its final epoch) and an unfinished run's latest
checkpoint (the one its ``checkpoint`` file names) must be there and whole,
or the error names the file. Falling back on an older epoch is for resuming
training only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from yacs.config import CfgNode

from ..config import check_eps_units, merge_from_file
from ..config_paths import find_config
from ..data.splits import SUBSAMPLE_CHOICES
from ..engine.checkpoint import (BEST_FILE, EPOCH_FILE, CheckpointMissingError, epoch_file, epoch_files,
                                  is_complete, written_checkpoint)
from ..engine.select import active_api
from ..errors import UserError, UserFileNotFoundError
from ..plugins import load_plugins
from ..results import RunResults
from ..utils.seed import set_random_seed


@dataclass
class LoadedRun:
    """What :func:`load_run` rebuilt."""

    trainer: Any
    epoch: Optional[int]  # the checkpoint epoch loaded (None: the best-val model)
    train_dataset: str  # the dataset the run was trained on
    adversarial: bool


def resolve_dataset_name(name: str) -> str:
    """A registered dataset name; a config id (``configs/datasets/<id>.yaml``, the repository's or a
    plug-in folder's, :func:`ampt.config_paths.find_config`) is accepted too."""
    registry = active_api().DATASET_REGISTRY
    if name in registry.registered_names():
        return name
    yaml_path = find_config("datasets", name, required=False)
    if yaml_path is not None:
        with open(yaml_path, "r", encoding="utf-8") as f:
            configured = (CfgNode.load_cfg(f).get("DATASET") or {}).get("NAME", "")
        if configured:
            return configured
    registry.get(name)  # raises with the valid names and the closest one
    return name


class DeployedCheckpointError(CheckpointMissingError):
    """The checkpoint a finished run deployed is missing or broken; no other epoch stands in for it."""


def _checkpoint_epoch(run_dir: Path, model_names: Sequence[str], final_epoch: Optional[int],
                      best_val: bool) -> Optional[int]:
    """The epoch to load (None: ``model-best.pth.tar``), checked to be there and whole for every model.

    ``final_epoch``: a finished run's last epoch; None for an unfinished run (its latest checkpoint).
    """
    if not model_names:
        return None
    if best_val and all((run_dir / name / BEST_FILE).is_file() for name in model_names):
        return None  # the trainer loads it; a broken one is named there
    if final_epoch is not None:
        for name in model_names:
            _check_final(run_dir / name / epoch_file(final_epoch))
        return final_epoch
    epochs = []
    for name in model_names:
        path = written_checkpoint(run_dir / name)
        if path is None:
            raise UserFileNotFoundError(f"No checkpoint of model '{name}' under {run_dir / name}: was the run trained?")
        epochs.append(int(EPOCH_FILE.match(path.name).group(1)))
    return min(epochs)


def _check_final(path: Path) -> None:
    if path.is_file() and is_complete(path):
        return
    state = "is missing" if not path.is_file() else "is empty or truncated"
    whole = sorted(e for e, p in epoch_files(path.parent).items() if is_complete(p))
    raise DeployedCheckpointError(
        f"{path} {state}: it is the finished run's final checkpoint (results.json says finished), and no "
        f"earlier epoch stands in for it (whole epochs there: {', '.join(map(str, whole)) or 'none'}). Restore "
        "the file, pass --load-epoch N to evaluate an earlier epoch, or re-train (train.py --force)")


def _class_specific(cfg: Any) -> bool:
    node = cfg.TRAINER.get(str(cfg.TRAINER.NAME).upper())
    return node is not None and "CSC" in node and bool(node.CSC)


def _check_prompt_transfers(cfg: Any, train_dataset: str, target: str) -> None:
    if _class_specific(cfg):
        raise UserError(
            f"This run learned a class-specific prompt (TRAINER.{cfg.TRAINER.NAME.upper()}.CSC True) for the "
            f"classes of {train_dataset}; it has no context for the classes of {target}. Only a unified "
            "prompt (CSC False) transfers to another dataset."
        )


def _set_subsample(cfg: Any, subsample: str) -> None:
    """Evaluate on the ``subsample`` half of the classes (CoOp's base-to-new); a CSC prompt cannot change classes."""
    if subsample not in SUBSAMPLE_CHOICES:
        raise UserError(f'--subsample "{subsample}" is not valid; valid: {", ".join(SUBSAMPLE_CHOICES)}')
    trained = cfg.DATASET.SUBSAMPLE_CLASSES
    if subsample != trained and _class_specific(cfg):
        raise UserError(
            f"This run learned a class-specific prompt (TRAINER.{cfg.TRAINER.NAME.upper()}.CSC True) for its "
            f'"{trained}" classes; it has no context for the "{subsample}" classes. Only a unified prompt '
            "(CSC False) is evaluated on other classes."
        )
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample


def apply_test_overrides(cfg: Any, root: str, batch_size: Optional[int]) -> None:
    """``--root`` and ``--batch-size`` of an evaluation, over the run's config."""
    if root:
        cfg.DATASET.ROOT = root
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
        cfg.DATALOADER.TEST.BATCH_SIZE = batch_size


def load_run(run_dir: Path, dataset: Optional[str] = None, root: str = "", batch_size: Optional[int] = None,
             load_epoch: Optional[int] = None, seed: int = 0, subsample: Optional[str] = None) -> LoadedRun:
    """Rebuild the trainer of ``run_dir`` (its ``config.yaml``) in eval mode with the run's weights.

    ``dataset`` swaps the test set for another registered dataset (its own
    class names; a unified prompt transfers, a class-specific one cannot).
    ``subsample`` ("base", "new", "all") picks the classes of the test set
    (CoOp's base-to-new; default: the run's own ``DATASET.SUBSAMPLE_CLASSES``).
    ``load_epoch`` picks a checkpoint; by default the model the run deployed
    (best-val with ``TEST.FINAL_MODEL best_val``, else the latest epoch),
    which must be there and whole (:class:`DeployedCheckpointError`).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserFileNotFoundError(f"{cfg_path} not found: RUN_DIR must be a folder written by train.py")
    run_info = RunResults(run_dir).run
    load_plugins(run_info.get("engine", "builtin"))
    api = active_api()
    with open(cfg_path, "r", encoding="utf-8") as f:
        name = (CfgNode.load_cfg(f).get("TRAINER") or {}).get("NAME", "")
    trainer_cls = api.TRAINER_REGISTRY.get(name)
    cfg = api.get_cfg_default()
    if hasattr(trainer_cls, "add_config"):
        trainer_cls.add_config(cfg)
    merge_from_file(cfg, str(cfg_path))
    train_dataset = cfg.DATASET.NAME
    cfg.OUTPUT_DIR = str(run_dir)
    cfg.RESUME = ""
    apply_test_overrides(cfg, root, batch_size)
    if dataset is not None:
        target = resolve_dataset_name(dataset)
        if target != train_dataset:
            _check_prompt_transfers(cfg, train_dataset, target)
            cfg.DATASET.NAME = target
            cfg.DATASET.SUBSAMPLE_CLASSES = "all"
            cfg.DATASET.NUM_SHOTS = -1  # the training split of the target is not used
    if subsample is not None:
        _set_subsample(cfg, subsample)
    check_eps_units(cfg)
    cfg.freeze()
    set_random_seed(seed)
    trainer = api.build_trainer(cfg)
    epoch = load_epoch
    if epoch is None:
        final_epoch = int(cfg.OPTIM.MAX_EPOCH) if run_info.get("finished") else None
        epoch = _checkpoint_epoch(run_dir, trainer.get_model_names(), final_epoch, cfg.TEST.FINAL_MODEL == "best_val")
    trainer.load_model(str(run_dir), epoch=epoch)
    trainer.set_model_mode("eval")
    return LoadedRun(trainer, epoch, train_dataset, bool(getattr(trainer, "adversarial", False)))
