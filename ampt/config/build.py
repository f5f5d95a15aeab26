"""``setup_cfg``: the fixed merge order, unknown-key errors, and unit guards.

Order: defaults -> the trainer's node (``trainer_cls.add_config``) -> dataset
yaml (``--dataset-config-file``) -> method yaml (``--config-file``) -> CLI
flags -> trailing ``KEY VALUE`` overrides -> checks -> freeze.
"""
from __future__ import annotations

import argparse
import ast
import logging
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Set

import yaml
from yacs.config import CfgNode as CN

from ..errors import UserError, UserFileNotFoundError
from ..registry import unknown_name_message
from .aliases import Aliases, active_aliases, alias_note, rename_nodes, rename_opts
from .defaults import get_cfg_default

logger = logging.getLogger(__name__)

# argparse attribute -> config key; applied when the attribute is set.
_FLAG_KEYS = (
    ("root", "DATASET.ROOT"),
    ("output_dir", "OUTPUT_DIR"),
    ("resume", "RESUME"),
    ("source_domains", "DATASET.SOURCE_DOMAINS"),
    ("target_domains", "DATASET.TARGET_DOMAINS"),
    ("transforms", "INPUT.TRANSFORMS"),
    ("trainer", "TRAINER.NAME"),
    ("backbone", "MODEL.BACKBONE.NAME"),
    ("head", "MODEL.HEAD.NAME"),
)
# APT's flag names, kept as aliases; None means "not given" (0 is a value).
_ADV_FLAG_KEYS = (
    ("seed", "SEED"),
    ("eps", "ADV.TRAIN.EPS"),
    ("alpha", "ADV.TRAIN.ALPHA"),
    ("steps", "ADV.TRAIN.STEPS"),
    ("adv_prompt", "ADV.TRAIN.PROMPT"),
    ("prompt_alpha", "ADV.TRAIN.PROMPT_ALPHA"),
)


class ConfigKeyError(UserError, KeyError):
    """A config key that the config does not have; the message names the valid keys."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _unknown_key(full_key: str, node: CN, prefix: str, source: str) -> ConfigKeyError:
    valid = [f"{prefix}{k}" for k in sorted(node.keys())]
    msg = unknown_name_message(f"config key (from {source})", full_key, valid)
    if full_key.startswith("TRAINER."):
        msg += ". A trainer's own keys exist only once its class is known (--trainer NAME)"
    return ConfigKeyError(msg)


def check_keys(new: CN, base: CN, source: str, prefix: str = "") -> None:
    """Raise :class:`ConfigKeyError` for the first key of ``new`` that ``base`` lacks."""
    for key, value in new.items():
        full_key = f"{prefix}{key}"
        if key not in base:
            raise _unknown_key(full_key, base, prefix, source)
        if isinstance(value, dict) and isinstance(base[key], CN):
            check_keys(value, base[key], source, prefix=f"{full_key}.")


def _upgrade_legacy_values(new: CN) -> None:
    """Configs saved before MODEL.BACKBONE.PRETRAINED named an open_clip tag hold Dassl's boolean."""
    backbone = (new.get("MODEL") or {}).get("BACKBONE") or {}
    if isinstance(backbone.get("PRETRAINED"), bool):
        backbone["PRETRAINED"] = ""


def merge_from_file(cfg: CN, path: str, aliases: Optional[Aliases] = None) -> Set[str]:
    """Merge a yaml file into ``cfg`` with key and type errors that name the file.

    Nodes named in ``aliases`` (old -> new) are read as their new node;
    returns the aliases the file used.
    """
    file = Path(path)
    if not file.is_file():
        raise UserFileNotFoundError(f"Config file not found: {path}")
    with open(file, "r", encoding="utf-8") as f:
        try:
            new = cfg.load_cfg(f)
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {_one_line(err)}") from None
    _upgrade_legacy_values(new)
    used = rename_nodes(new, aliases or {})
    check_keys(new, cfg, source=str(path))
    try:
        cfg.merge_from_other_cfg(new)
    except ValueError as err:
        raise UserError(f"{err} (in {path})") from None
    return used


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def merge_from_list(cfg: CN, opts: Sequence[str], source: str = "command line", aliases: Optional[Aliases] = None) -> Set[str]:
    """Merge ``KEY VALUE`` pairs; an unknown key names its node's valid keys.

    Keys under a node named in ``aliases`` are read under its new node;
    returns the aliases used.
    """
    opts = list(opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    opts, used = rename_opts(opts, aliases or {})
    if len(opts) % 2:
        raise UserError(
            f"Config overrides come in KEY VALUE pairs; got {len(opts)} items "
            f"(the last one, {opts[-1]!r}, has no value)"
        )
    for full_key in opts[0::2]:
        node, prefix = cfg, ""
        for part in full_key.split("."):
            if not isinstance(node, CN) or part not in node:
                parent = node if isinstance(node, CN) else CN()
                raise _unknown_key(f"{prefix}{part}", parent, prefix, source)
            node, prefix = node[part], f"{prefix}{part}."
    values = [_float_if_float_key(_get(cfg, key), value) for key, value in zip(opts[0::2], opts[1::2])]
    try:
        cfg.merge_from_list([item for pair in zip(opts[0::2], values) for item in pair])
    except ValueError as err:  # yacs: a value of the wrong type for its key
        raise UserError(f"{err} (from {source})") from None
    return used


def _float_if_float_key(current: Any, value: Any) -> Any:
    """``ADV.TRAIN.ALPHA -1`` means -1.0: yacs would refuse an int for a float key."""
    if isinstance(current, float) and isinstance(value, str):
        try:
            decoded = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(decoded, int) and not isinstance(decoded, bool):
            return float(decoded)
    return value


def _set(cfg: CN, full_key: str, value: Any) -> None:
    *parents, leaf = full_key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if isinstance(node[leaf], tuple) and isinstance(value, list):
        value = tuple(value)
    node[leaf] = value


def apply_cli_flags(cfg: CN, args: argparse.Namespace) -> None:
    """CoOp's ``reset_cfg`` plus APT's adversarial flags; ``--seed 0`` is applied."""
    for attr, key in _FLAG_KEYS:
        value = getattr(args, attr, None)
        if value:  # these are strings / lists: empty means not given
            _set(cfg, key, value)
    for attr, key in _ADV_FLAG_KEYS:
        value = getattr(args, attr, None)
        if value is not None:
            _set(cfg, key, type(_get(cfg, key))(value))


def _get(cfg: CN, full_key: str) -> Any:
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


def check_eps_units(cfg: CN) -> None:
    """Refuse an ``ADV.*.EPS`` that is not a budget in 1/255 units (e.g. 0.0157 for 4/255).

    ``-1`` (``ADV.TEST.EPS``: "the training eps") is the one sentinel allowed.
    """
    from ..attacks import check_eps

    adv = cfg.get("ADV")
    if not isinstance(adv, CN):
        return
    for name, node in adv.items():
        if isinstance(node, CN) and "EPS" in node and float(node.EPS) != -1:
            check_eps(node.EPS, f"ADV.{name}.EPS")


def setup_cfg(args: argparse.Namespace, trainer_cls: Optional[type] = None, base_cfg: Optional[CN] = None,
              notes: Optional[List[str]] = None) -> CN:
    """Build the frozen run config from ``args`` (train.py's namespace).

    ``trainer_cls.add_config(cfg)`` adds the trainer's node when the class has
    it; its ``config_aliases`` (old node -> its node, e.g. APT's
    ``TRAINER.COOP -> TRAINER.APT``) apply to the yamls and overrides, each
    noted once: appended to ``notes`` when given (train.py logs them once
    its log file exists), logged otherwise. ``base_cfg`` replaces
    :func:`get_cfg_default` (``--engine dassl``).
    """
    cfg = base_cfg.clone() if base_cfg is not None else get_cfg_default()
    if trainer_cls is not None and hasattr(trainer_cls, "add_config"):
        trainer_cls.add_config(cfg)
    default_loss = getattr(trainer_cls, "default_loss", "")
    if default_loss:  # the trainer's declared objective (FAP: "fap"), before the yamls may change it
        cfg.ADV.TRAIN.LOSS = default_loss
    aliases = active_aliases(cfg, getattr(trainer_cls, "config_aliases", None) or {})
    used: Set[str] = set()
    if getattr(args, "dataset_config_file", ""):
        used |= merge_from_file(cfg, args.dataset_config_file, aliases)
    if getattr(args, "config_file", ""):
        used |= merge_from_file(cfg, args.config_file, aliases)
    apply_cli_flags(cfg, args)
    used |= merge_from_list(cfg, getattr(args, "opts", None) or [], aliases=aliases)
    for old in sorted(used):
        note = alias_note(old, aliases[old])
        if notes is not None:
            notes.append(note)
        else:
            logger.info(note)
    check_eps_units(cfg)
    cfg.freeze()
    return cfg


def peek_trainer_name(args: argparse.Namespace) -> str:
    """The trainer name before merging: ``--trainer``, else the overrides, else the yamls.

    The trainer's class must be known before the yamls merge (it adds the keys
    they set), so its name is read ahead of the merge, by the same precedence.
    """
    if getattr(args, "trainer", ""):
        return args.trainer
    opts: List[str] = list(getattr(args, "opts", None) or [])
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "TRAINER.NAME":
            return value
    for path in (getattr(args, "config_file", ""), getattr(args, "dataset_config_file", "")):
        if path and Path(path).is_file():
            with open(path, "r", encoding="utf-8") as f:
                name = (CN.load_cfg(f).get("TRAINER") or {}).get("NAME", "")
            if name:
                return name
    return ""


def config_keys(cfg: CN, prefix: str = "") -> Iterable[str]:
    """Every leaf key of ``cfg`` as a dotted name."""
    for key, value in cfg.items():
        if isinstance(value, CN):
            yield from config_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"
