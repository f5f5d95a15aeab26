"""Load the repository's plug-in folders ``trainers/`` and ``datasets/``.

Each ``*.py`` file in those folders is imported as
``ampt_plugins.<folder>.<file>``; its ``@register()`` decorators fill the
active engine's registries. The folders are never put on ``sys.path`` under
their own names, so this repository's ``datasets/`` cannot shadow Hugging
Face's ``datasets`` package, in this process or any other.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import List, Optional

from .engine.select import use_engine

PLUGIN_FOLDERS = ("datasets", "trainers")
PLUGIN_PACKAGE = "ampt_plugins"
REPO_ROOT = Path(__file__).resolve().parent.parent


def plugin_root() -> Path:
    """The folder holding ``trainers/`` and ``datasets/`` ($AMPT_PLUGIN_ROOT overrides)."""
    return Path(os.environ.get("AMPT_PLUGIN_ROOT", REPO_ROOT))


def _package(name: str, path: Optional[Path]) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if path is None:
        module = types.ModuleType(name)
        module.__path__ = []  # namespace-like parent
    else:
        spec = importlib.util.spec_from_file_location(
            name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"Cannot load plug-in folder {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def load_plugins(engine: str = "builtin", root: Optional[Path] = None) -> List[str]:
    """Select ``engine`` and import every plug-in file once; returns the module names."""
    use_engine(engine)
    root = Path(root) if root is not None else plugin_root()
    _package(PLUGIN_PACKAGE, None)
    loaded = []
    for folder in PLUGIN_FOLDERS:
        path = root / folder
        if not (path / "__init__.py").is_file():
            raise FileNotFoundError(f"Plug-in folder {path} (with an __init__.py) not found")
        _package(f"{PLUGIN_PACKAGE}.{folder}", path)
        for file in sorted(path.glob("*.py")):
            if file.name.startswith("_"):
                continue
            name = f"{PLUGIN_PACKAGE}.{folder}.{file.stem}"
            importlib.import_module(name)
            loaded.append(name)
    return loaded
