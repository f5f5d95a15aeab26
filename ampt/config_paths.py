"""Where a config named by trainer or dataset is found: the repository's ``configs/``, then each plug-in folder's.

Configs are laid out the same way everywhere:
``configs/trainers/<Trainer>/<setting>.yaml`` and ``configs/datasets/<id>.yaml``.
The folders searched (:func:`config_roots`) are the repository's
``configs/`` (``$AMPT_PLUGIN_ROOT``'s when set) and then the ``configs/``
of each ``$AMPT_PLUGIN_PATH`` folder, in order; the first file found wins.
Everything that looks a config up by name uses :func:`find_config` or
:func:`list_configs`: the demo, ``evaluate.py --dataset``, the report's
dataset map, the sweep runner and the registry-driven contract tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from .errors import UserFileNotFoundError
from .plugins import PLUGIN_PATH_ENV, plugin_path, plugin_root

KINDS = ("trainers", "datasets")


def config_roots() -> List[Path]:
    """The ``configs/`` folders searched, in order: the repository's, then each plug-in folder's that has one."""
    roots = [plugin_root() / "configs"]
    roots += [folder / "configs" for folder in plugin_path() if (folder / "configs").is_dir()]
    return roots


def _relative(kind: str, name: str, setting: Optional[str]) -> Path:
    if kind == "trainers":
        if not setting:
            raise ValueError("a trainer config needs its setting: find_config('trainers', <Trainer>, <setting>)")
        return Path("trainers") / name / f"{setting}.yaml"
    if kind == "datasets":
        return Path("datasets") / f"{name}.yaml"
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def find_config(kind: str, name: str, setting: Optional[str] = None, required: bool = True) -> Optional[Path]:
    """``configs/trainers/<name>/<setting>.yaml`` or ``configs/datasets/<name>.yaml`` from the first root that has it.

    ``name`` is a trainer's registered name (``kind="trainers"``) or a dataset's
    config id (``kind="datasets"``, the file's stem, e.g. ``oxford_pets``).
    Missing: None when not ``required``, else a one-line
    :class:`~ampt.errors.UserFileNotFoundError` naming every folder searched.
    """
    relative = _relative(kind, name, setting)
    roots = config_roots()
    for root in roots:
        if (root / relative).is_file():
            return (root / relative).resolve()
    if not required:
        return None
    valid = sorted(list_configs(kind, name if kind == "trainers" else None))
    hint = f" (found: {', '.join(valid)})" if valid else ""
    raise UserFileNotFoundError(
        f"No {relative.as_posix()} in {' or '.join(str(r) for r in roots)}{hint}: add it to the repository's "
        f"configs/ or to the configs/ of a folder on {PLUGIN_PATH_ENV}, or pass the file's path")


def list_configs(kind: str, trainer: Optional[str] = None) -> Dict[str, Path]:
    """Every config of a kind, stem -> path (the first root's when two roots have one):
    ``datasets``: ``<id>.yaml`` files; ``trainers``: the settings of ``trainer`` (all trainers' folders if None,
    keyed ``<Trainer>/<setting>``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    found: Dict[str, Path] = {}
    for root in config_roots():
        if kind == "datasets":
            files = {p.stem: p for p in (root / "datasets").glob("*.yaml")}
        elif trainer is not None:
            files = {p.stem: p for p in (root / "trainers" / trainer).glob("*.yaml")}
        else:
            files = {f"{p.parent.name}/{p.stem}": p for p in (root / "trainers").glob("*/*.yaml")}
        for key in sorted(files):
            found.setdefault(key, files[key].resolve())
    return found


def dataset_config_names() -> Dict[str, str]:
    """Config id (``oxford_pets``) -> the registered dataset name its yaml sets (``OxfordPets``), every root."""
    import yaml

    names = {}
    for stem, path in list_configs("datasets").items():
        try:
            name = ((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("DATASET") or {}).get("NAME")
        except yaml.YAMLError:
            continue
        if name:
            names[stem] = str(name)
    return names


__all__ = ["config_roots", "dataset_config_names", "find_config", "list_configs"]
