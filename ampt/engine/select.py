"""Which engine backs the Dassl API names: the built-in one or an installed Dassl.

Plug-ins import the API from :mod:`ampt.api`, which forwards to the engine
selected here. The choice is made once per process, before plug-ins load.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional
from ..errors import UserError

ENGINES = ("builtin", "dassl")
_active: Optional[str] = None
_api: Optional[SimpleNamespace] = None


def use_engine(name: str) -> None:
    """Select the engine; selecting a different one later in the same process is an error."""
    global _active, _api
    if name not in ENGINES:
        raise UserError(f'Unknown engine "{name}". Valid engines: {", ".join(ENGINES)}')
    if _active is not None:
        if _active != name:
            raise RuntimeError(
                f'The "{_active}" engine is already in use in this process; cannot switch to "{name}"'
            )
        return
    if name == "builtin":
        from . import builtin_api as module
    else:
        from . import dassl_api as module
    _api = module.api()
    _active = name


def active_engine() -> str:
    if _active is None:
        use_engine("builtin")
    return _active  # type: ignore[return-value]


def active_api() -> SimpleNamespace:
    """The API namespace of the selected engine (the built-in one if none was chosen)."""
    if _api is None:
        use_engine("builtin")
    return _api  # type: ignore[return-value]
