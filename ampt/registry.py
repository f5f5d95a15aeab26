"""Named registries for extension points (trainers, datasets, attacks).

Same contract as Dassl's ``Registry``: ``@REGISTRY.register()`` keys a class by
its name, a duplicate name is an error, and ``get`` answers an unknown name
with the valid names and the closest match.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional

from .errors import UserError


class UnknownNameError(UserError, KeyError):
    """A name no registry entry has; the message lists the valid names and the closest."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """A name -> object table with helpful errors."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in the "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False, name: Optional[str] = None) -> Any:
        """Register ``obj`` under its ``__name__`` (or ``name``); usable as a decorator."""
        if obj is None:
            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(name or fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(name or obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            raise UnknownNameError(unknown_name_message(self._name, name, self.registered_names()))
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __repr__(self) -> str:
        return f"Registry({self._name!r}, {self.registered_names()})"


def unknown_name_message(kind: str, name: str, valid: List[str]) -> str:
    """``Unknown trainer "CoPo". Did you mean "CoOp"? Valid names: ...``"""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not close:
        lowered = {v.lower(): v for v in valid}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f' Did you mean "{close[0]}"?' if close else ""
    return f'Unknown {kind} "{name}".{hint} Valid names: {", ".join(valid) or "(none registered)"}'

