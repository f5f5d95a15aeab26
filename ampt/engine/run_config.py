"""A run folder's ``config.yaml``: written atomically, and compared with the config of a resume.

Resuming continues a run under the settings it started with; a changed
setting would make ``config.yaml`` and ``results.json`` claim values the
first epochs were not trained with. :func:`config_changes` lists the keys
whose values differ, leaving out those that do not change what is trained:
paths (:data:`IGNORED_KEYS`), the exact text-pass options, and keys read only by evaluation or logging
(:data:`IGNORED_PREFIXES`). A key that only one side has (a config written
by another version of the toolkit) is not a change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

from ..errors import UserError
from ..utils.io import write_text_atomic

CONFIG_FILE = "config.yaml"
IGNORED_KEYS = frozenset({
    "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "MODEL.BACKBONE.DOWNLOAD_ROOT", "USE_CUDA", "VERBOSE",
    "DATALOADER.NUM_WORKERS", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
})
IGNORED_PREFIXES = ("TEST.", "ADV.TEST.", "DATALOADER.TEST.", "MODEL.TEXT_ENCODER.")  # text-pass options are exact
LEGACY_PRETRAINED = "MODEL.BACKBONE.PRETRAINED"


class ConfigChangedError(UserError):
    """Resuming a run with settings other than those it was started with."""


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _comparable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def config_changes(stored: Any, new: Any) -> List[str]:
    """``"KEY: old -> new"`` for every training setting that differs between two configs."""
    old_flat, new_flat = _flatten(stored), _flatten(new)
    if isinstance(old_flat.get(LEGACY_PRETRAINED), bool):  # Dassl's boolean before it named an open_clip tag
        old_flat[LEGACY_PRETRAINED] = ""
    changes = []
    for key in sorted(set(old_flat) & set(new_flat)):
        if not _ignored(key) and _comparable(old_flat[key]) != _comparable(new_flat[key]):
            changes.append(f"{key}: {old_flat[key]!r} -> {new_flat[key]!r}")
    return changes


def load_stored_config(run_dir: Union[str, Path]) -> Any:
    """The run's ``config.yaml`` as a plain nested dict, or None when there is none."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    with open(path, "r", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def check_resume_config(run_dir: Union[str, Path], cfg: Any) -> None:
    """Refuse to resume ``run_dir`` under ``cfg`` when a training setting differs from its config.yaml."""
    stored = load_stored_config(run_dir)
    if stored is None:
        return
    changes = config_changes(stored, cfg)
    if changes:
        raise ConfigChangedError(
            f"{run_dir} holds an unfinished run trained with other settings ({'; '.join(changes)}). "
            "Resume it with its own settings, train into another --output-dir, or pass --force to start over"
        )


def write_run_config(cfg: Any, run_dir: Union[str, Path]) -> None:
    """Write ``cfg`` to ``run_dir/config.yaml`` (atomically, umask mode)."""
    write_text_atomic(cfg.dump(), Path(run_dir) / CONFIG_FILE)
