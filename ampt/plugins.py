"""Load the plug-in folders: the repository's ``trainers/`` and ``datasets/``, then ``$AMPT_PLUGIN_PATH``'s.

Each ``*.py`` file in those folders is imported as
``ampt_plugins.<folder>.<file>``; its ``@register()`` decorators fill the
active engine's registries. The folders are never put on ``sys.path`` under
their own names, so this repository's ``datasets/`` cannot shadow Hugging
Face's ``datasets`` package, in this process or any other.

``AMPT_PLUGIN_PATH`` (folders separated by ``:``, ``;`` on Windows) adds
methods, loss terms and datasets that live elsewhere, e.g. in their own
repository. Each folder holds at least one of four subfolders:

- ``objectives/``: loss terms (``@register_objective``, :mod:`ampt.objectives`);
- ``datasets/``: datasets (``@DATASET_REGISTRY.register()``);
- ``trainers/``: methods (``@TRAINER_REGISTRY.register()``);
- ``configs/``: their yaml, laid out like the repository's
  (``configs/trainers/<Trainer>/<name>.yaml``, ``configs/datasets/<id>.yaml``;
  found by :mod:`ampt.config_paths`).

The code folders hold ``*.py`` files (an ``__init__.py`` is optional; files
starting with ``_`` are skipped), imported in that order (objectives first, so
their config keys exist before any config is built) after the repository's,
as ``ampt_plugins.ext_<hash of the folder>.<objectives|datasets|trainers>.<file>``;
they register next to the built-in ones (a name registered twice is an error).
Built-in loss terms live in ``ampt/objectives/``: the repository has no
``objectives/`` plug-in folder.

A file that cannot be imported (a syntax error, a missing import, a name
already registered) is skipped with a one-line warning naming it, so every
other command still runs; the trainers and datasets it declares are
registered as placeholders that raise :class:`BrokenPluginError` (one line:
the file and its error) when a command asks for them.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
import types
from pathlib import Path
from typing import Dict, List, Optional

from .engine.select import active_api, use_engine
from .errors import UserError, UserFileNotFoundError

logger = logging.getLogger(__name__)

PLUGIN_FOLDERS = ("datasets", "trainers")  # the repository's plug-in folders
EXTERNAL_CODE_FOLDERS = ("objectives", "datasets", "trainers")  # an AMPT_PLUGIN_PATH folder's, in import order
EXTERNAL_FOLDERS = ("trainers", "datasets", "objectives", "configs")  # at least one of them
PLUGIN_PACKAGE = "ampt_plugins"
PLUGIN_PATH_ENV = "AMPT_PLUGIN_PATH"
REPO_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_REGISTRIES = {"trainers": ("trainer", "TRAINER_REGISTRY"), "datasets": ("dataset", "DATASET_REGISTRY")}
_broken: Dict[Path, str] = {}  # plug-in file -> why it could not be imported (once per process)


class BrokenPluginError(UserError):
    """A trainer or dataset asked for whose plug-in file could not be imported."""


class _BrokenPluginMeta(type):
    """A placeholder class: whatever the toolkit reads from it or builds with it raises the file's error."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise BrokenPluginError(cls._ampt_broken_message)

    def __call__(cls, *args, **kwargs):
        raise BrokenPluginError(cls._ampt_broken_message)


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


def plugin_path() -> List[Path]:
    """The folders of ``$AMPT_PLUGIN_PATH`` (empty entries skipped); each holds one of :data:`EXTERNAL_FOLDERS`."""
    roots = []
    for entry in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        root = Path(entry).expanduser().resolve()
        if not any((root / folder).is_dir() for folder in EXTERNAL_FOLDERS):
            raise UserFileNotFoundError(
                f"{PLUGIN_PATH_ENV} entry {root} has no trainers/, datasets/, objectives/ or configs/ folder: "
                "put the plug-in files in <folder>/trainers/*.py, <folder>/datasets/*.py, <folder>/objectives/*.py "
                "and their yaml in <folder>/configs/, or remove the entry"
            )
        roots.append(root)
    return roots


def _namespace(name: str, path: Path) -> None:
    """A package ``name`` whose submodules are the ``*.py`` files of ``path`` (no ``__init__.py`` needed)."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def _load_external(root: Path) -> List[str]:
    tag = "ext_" + hashlib.sha1(str(root).encode()).hexdigest()[:10]
    _namespace(f"{PLUGIN_PACKAGE}.{tag}", root)
    loaded = []
    for folder in EXTERNAL_CODE_FOLDERS:
        path = root / folder
        if not path.is_dir():
            continue
        _namespace(f"{PLUGIN_PACKAGE}.{tag}.{folder}", path)
        for file in sorted(path.glob("*.py")):
            if not file.name.startswith("_") and _import_plugin(f"{PLUGIN_PACKAGE}.{tag}.{folder}.{file.stem}", file):
                loaded.append(f"{PLUGIN_PACKAGE}.{tag}.{folder}.{file.stem}")
    return loaded


def _import_plugin(module: str, file: Path) -> bool:
    """Import one plug-in file; one that fails is reported in one line and stands in by placeholders."""
    file = file.resolve()
    if file not in _broken:
        try:
            importlib.import_module(module)
            return True
        except Exception as err:  # noqa: BLE001 -- any error of a user's file: the other commands still run
            _broken[file] = _describe_failure(err, file)
            _register_placeholders(file)
    logger.warning("Plug-in file %s was not loaded (%s); its trainers and datasets are unavailable: fix it, or "
                   "remove its folder from %s", file, _broken[file], PLUGIN_PATH_ENV)
    return False


def _describe_failure(err: Exception, file: Path) -> str:
    """``SyntaxError: invalid syntax, line 3``: the error and the plug-in file's line it came from."""
    if isinstance(err, SyntaxError) and Path(err.filename or "").resolve() == file:
        return f"SyntaxError: {err.msg}, line {err.lineno}"
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if Path(frame.filename).resolve() == file]
    where = f", line {lines[-1]}" if lines else ""
    hint = " (install it)" if isinstance(err, ModuleNotFoundError) else ""
    if "already registered" in message:
        hint = " (rename the plug-in's class: the name is taken)"
    return f"{type(err).__name__}: {' '.join(message.split())}{hint}{where}"


def _register_placeholders(file: Path) -> None:
    """Register the trainers/datasets ``file`` declares (names not taken) as placeholders raising its error."""
    if file.parent.name not in PLACEHOLDER_REGISTRIES:
        return
    kind, registry_name = PLACEHOLDER_REGISTRIES[file.parent.name]
    registry = getattr(active_api(), registry_name)
    for name in declared_classes(file):
        if name in registry.registered_names():
            continue
        message = (f'{kind} "{name}" comes from the plug-in file {file}, which could not be loaded '
                   f"({_broken[file]}): fix the file, or remove its folder from {PLUGIN_PATH_ENV}")
        registry.register(_BrokenPluginMeta(name, (), {"_ampt_broken_message": message}))


def declared_classes(file: Path) -> List[str]:
    """The names of the classes ``file`` registers (``@...register...`` decorators), read without importing it."""
    source = file.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return re.findall(r"^@[^\n]*register[^\n]*\n(?:@[^\n]*\n)*class\s+(\w+)", source, re.MULTILINE)
    return [node.name for node in tree.body if isinstance(node, ast.ClassDef)
            and any("register" in ast.unparse(d) for d in node.decorator_list)]


def load_plugins(engine: str = "builtin", root: Optional[Path] = None) -> List[str]:
    """Select ``engine`` and import every plug-in file once (``$AMPT_PLUGIN_PATH``'s too); returns the module names."""
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
            if _import_plugin(name, file):
                loaded.append(name)
    for external in plugin_path():
        loaded += _load_external(external)
    return loaded
