"""Config-node aliases a trainer declares, so another code base's command lines carry over.

APT's scripts pass ``TRAINER.COOP.N_CTX 16 TRAINER.COOP.CSC False ...`` to its
APT trainer; here APT's keys live under ``TRAINER.APT``. A trainer declares
``config_aliases = {"TRAINER.COOP": "TRAINER.APT"}`` and both the yaml files
and the ``KEY VALUE`` overrides read the old node as the new one. An alias
applies only while the config has no node of the old name (a trainer that
owns ``TRAINER.COOP`` keeps it).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Set, Tuple

from yacs.config import CfgNode as CN

Aliases = Mapping[str, str]


def active_aliases(cfg: CN, aliases: Aliases) -> Dict[str, str]:
    """The aliases whose old node the config lacks (the others would shadow real keys)."""
    return {old: new for old, new in aliases.items() if not _has_node(cfg, old)}


def _has_node(cfg: CN, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, CN) or part not in node:
            return False
        node = node[part]
    return True


def rename_opts(opts: Sequence[str], aliases: Aliases) -> Tuple[List[str], Set[str]]:
    """``KEY VALUE`` pairs with aliased keys renamed, and the aliases used."""
    out, used = list(opts), set()
    for i in range(0, len(out) - 1, 2):
        for old, new in aliases.items():
            if out[i].startswith(old + "."):
                out[i] = new + out[i][len(old):]
                used.add(old)
    return out, used


def rename_nodes(loaded: CN, aliases: Aliases) -> Set[str]:
    """Move aliased nodes of a loaded yaml to their new place (in place); the aliases used."""
    used = set()
    for old, new in aliases.items():
        *old_parents, old_leaf = old.split(".")
        parent = _node(loaded, old_parents, create=False)
        if parent is None or old_leaf not in parent:
            continue
        moved = parent.pop(old_leaf)
        *new_parents, new_leaf = new.split(".")
        target = _node(loaded, new_parents, create=True)
        merged = target.get(new_leaf, CN())
        merged.update(moved)
        target[new_leaf] = merged
        used.add(old)
    return used


def _node(cfg: CN, parts: Sequence[str], create: bool):
    node = cfg
    for part in parts:
        if part not in node:
            if not create:
                return None
            node[part] = CN()
        node = node[part]
    return node


def alias_note(old: str, new: str) -> str:
    return f"{old}.* read as {new}.* (the trainer's alias for APT-style command lines)"
