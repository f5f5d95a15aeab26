"""The sweep file: parsing, validation against each trainer's real config, expansion into cells.

Every key is documented in ``docs/sweeps.md``. Validation builds each cell's
config exactly as ``train.py`` does, so a bad key, trainer, dataset or file is
named (with the valid choices) before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from ..config_paths import config_roots, find_config, list_configs
from ..registry import unknown_name_message
from .requests import AUDIT_KEYS, EVAL_KEYS
from .runspec import REPO_ROOT, RunSpec

TOP_KEYS = ("name", "data_root", "output_root", "grid", "methods", "evaluate", "executor", "retries",
            "retry_delay_s", "prepare", "backbone", "opts", "dataset_config", "epochs")
METHOD_KEYS = ("trainer", "config", "opts", "grid", "epochs", "backbone")
NAMED_AXES = ("dataset", "shots", "seed")
PREPARE_CHOICES = ("digits-demo",)


class SweepError(ValueError):
    """A sweep file the user must fix; the message names the file, the key and the choices."""


@dataclass
class Method:
    label: str
    trainer: str
    config: str
    opts: List[str] = field(default_factory=list)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    epochs: Any = None
    backbone: Optional[str] = None


@dataclass
class Cell:
    """One run of the sweep: its ``train.py`` spec, folder and ``evaluate.py`` entries."""

    method: str
    dataset: str
    point: Dict[str, Any]
    spec: RunSpec
    run_dir: str
    evaluate: List[Dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.method} " + " ".join(f"{k}={v}" for k, v in self.point.items())


@dataclass
class Sweep:
    path: str
    name: str
    data_root: str
    output_root: str
    grid: Dict[str, List[Any]]
    methods: Dict[str, Method]
    evaluate: List[Dict[str, Any]] = field(default_factory=list)
    executor: Dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    retries: int = 1
    retry_delay_s: float = 0.0
    prepare: Optional[str] = None
    backbone: Optional[str] = None
    opts: List[str] = field(default_factory=list)
    dataset_config: Dict[str, str] = field(default_factory=dict)
    epochs: Any = None


def _fail(path: str, msg: str) -> SweepError:
    return SweepError(f"{path}: {msg}")


def _check_keys(path: str, where: str, given: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in given:
        if key not in valid:
            raise _fail(path, unknown_name_message(f"key in {where}", str(key), list(valid)))


def _as_opts(path: str, where: str, value: Any) -> List[str]:
    """``[KEY, VALUE, ...]`` or ``{KEY: VALUE}`` as train.py's string pairs."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [x for pair in value.items() for x in pair]
    if not isinstance(value, list) or len(value) % 2:
        raise _fail(path, f"{where}: opts are KEY VALUE pairs, as a list [KEY, VALUE, ...] or a mapping")
    return [_opt_str(v) for v in value]


def _opt_str(value: Any) -> str:
    return str(value)


def _whole(path: str, key: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (not a bool, not a fraction), else one line naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"{key}: {value!r} is not a whole number >= {minimum}")
    return value


def _non_negative(path: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise _fail(path, f"{key}: {value!r} is not a number >= 0 (seconds)")
    return float(value)


def _epochs(path: str, where: str, value: Any) -> Any:
    """None (the config's), "by_shots" (CoOp's rule), or a whole number >= 1."""
    if value is None or value == "by_shots":
        return value
    if isinstance(value, str):
        raise _fail(path, f"{where}: {value!r} is not a whole number >= 1 or by_shots")
    return _whole(path, where, value, 1)


def _grid(path: str, where: str, value: Any) -> Dict[str, List[Any]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(path, f"{where} is a mapping axis -> list of values")
    grid = {str(k): (v if isinstance(v, list) else [v]) for k, v in value.items()}
    for axis in grid:
        if axis not in NAMED_AXES and "." not in axis:
            raise _fail(path, f"{where}: unknown axis {axis!r}; axes are {', '.join(NAMED_AXES)} "
                              "or a config key such as ADV.TRAIN.EPS")
    return grid


def resolve_file(path: str, name: str, where: str) -> str:
    """A config file as given, else relative to the repository root; a ``configs/...`` path also relative
    to each plug-in folder (:func:`ampt.config_paths.config_roots`); missing: an error naming it."""
    candidates = [Path(name).expanduser(), REPO_ROOT / name]
    parts = Path(name).parts
    if not Path(name).is_absolute() and parts[:1] == ("configs",) and len(parts) > 1:
        candidates += [root.joinpath(*parts[1:]) for root in config_roots()]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise _fail(path, f"{where}: no file {name} (relative paths are tried from the current folder and {REPO_ROOT}, "
                      "configs/... also from the AMPT_PLUGIN_PATH folders)")


def _method(path: str, label: str, raw: Any) -> Method:
    if not isinstance(raw, Mapping) or "trainer" not in raw or "config" not in raw:
        raise _fail(path, f"method {label} needs at least 'trainer' and 'config'")
    _check_keys(path, f"method {label}", raw, METHOD_KEYS)
    return Method(label=label, trainer=str(raw["trainer"]),
                  config=resolve_file(path, str(raw["config"]), f"method {label} config"),
                  opts=_as_opts(path, f"method {label}", raw.get("opts")),
                  grid=_grid(path, f"method {label} grid", raw.get("grid")),
                  epochs=_epochs(path, f"method {label} epochs", raw.get("epochs")), backbone=raw.get("backbone"))


def _evaluate(path: str, raw: Any) -> List[Dict[str, Any]]:
    entries = raw or []
    if not isinstance(entries, list):
        raise _fail(path, "evaluate is a list of {attack: ..., eps: ..., steps: ...}")
    for entry in entries:
        if isinstance(entry, Mapping) and "audit" in entry:
            _check_audit(path, entry)
            continue
        if not isinstance(entry, Mapping) or "attack" not in entry:
            raise _fail(path, f"evaluate entry {entry!r} needs an 'attack' ({', '.join(_attack_names())}) "
                              "or is an audit entry (audit: true)")
        _check_keys(path, "an evaluate entry", entry, EVAL_KEYS)
        _check_attack_entry(path, entry)
    return [one for e in entries for one in _one_entry_per_test_time_method(e)]


def _one_entry_per_test_time_method(entry: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """``test_time: [tapt, rtpt]`` is one entry per method (each answered by its own records); the runner
    evaluates them in one call again (:func:`~ampt.sweep.requests.group_evaluations`)."""
    methods = entry.get("test_time")
    if not isinstance(methods, list):
        return [dict(entry)]
    return [{**entry, "test_time": m} for m in dict.fromkeys(methods)]


def _check_test_time_entry(path: str, entry: Mapping[str, Any]) -> None:
    """``test_time`` (a registered method), its ``test_time_options`` and ``threat``, checked before anything runs."""
    from ..errors import UserError
    from ..tta import THREATS, parse_settings

    if "test_time" not in entry:
        if "test_time_options" in entry or "threat" in entry:
            raise _fail(path, f"evaluate entry {dict(entry)!r}: test_time_options and threat need a test_time method")
        return
    methods = entry["test_time"] if isinstance(entry["test_time"], list) else [entry["test_time"]]
    try:
        if not methods:
            raise UserError("test_time is a method or a list of methods")
        for method in methods:
            parse_settings(str(method), str(entry.get("test_time_options", "")))
    except UserError as err:
        raise _fail(path, f"evaluate entry {dict(entry)!r}: {err}") from None
    if entry.get("threat", "non-adaptive") not in THREATS:
        raise _fail(path, f"evaluate entry {dict(entry)!r}: threat is one of {', '.join(THREATS)}")


def _attack_names() -> List[str]:
    from ..attacks import ATTACK_REGISTRY

    return ["clean", *ATTACK_REGISTRY.registered_names()]


def _check_attack_entry(path: str, entry: Mapping[str, Any]) -> None:
    """The attack and its settings, checked before anything runs (evaluate.py would refuse them after training)."""
    from ..errors import UserError
    from ..evaluation.robust_accuracy import AttackSpec

    if entry["attack"] not in _attack_names():
        raise _fail(path, unknown_name_message("attack in an evaluate entry", str(entry["attack"]), _attack_names()))
    _check_test_time_entry(path, entry)
    if entry["attack"] == "clean":
        return
    try:
        AttackSpec(str(entry["attack"]), eps=float(entry.get("eps", 4)), steps=entry.get("steps"),
                   alpha=entry.get("alpha"), restarts=int(entry.get("restarts", 1)),
                   eot_iter=int(entry.get("eot_iter", 1)), options=str(entry.get("aa_attacks", "")),
                   bpda=bool(entry.get("bpda", False)))
    except (UserError, ValueError, TypeError) as err:
        raise _fail(path, f"evaluate entry {dict(entry)!r}: {err}") from None


def _check_audit(path: str, entry: Mapping[str, Any]) -> None:
    _check_keys(path, "an audit entry", entry, ("audit",))
    options = entry["audit"]
    if options is True or options is None:
        return
    if not isinstance(options, Mapping):
        raise _fail(path, f"audit entry {dict(entry)!r}: audit is true or a mapping of its settings "
                          f"({', '.join(AUDIT_KEYS)})")
    _check_keys(path, "an audit entry", options, AUDIT_KEYS)


def load_sweep(path: str) -> Sweep:
    """Read and check the file's structure (configs are checked by :func:`expand`)."""
    file = Path(path)
    if not file.is_file():
        raise SweepError(f"No sweep file {path}")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise _fail(path, f"not valid YAML{where}: {problem}") from None
    if not isinstance(raw, Mapping):
        raise _fail(path, "a sweep file is a mapping of keys (name, data_root, output_root, grid, methods, ...)")
    _check_keys(path, "the sweep file", raw, TOP_KEYS)
    for key in ("data_root", "output_root", "methods"):
        if key not in raw:
            raise _fail(path, f"missing key {key!r} (see docs/sweeps.md)")
    if raw.get("prepare") not in (None, *PREPARE_CHOICES):
        raise _fail(path, f"prepare: {raw['prepare']!r} is not one of {', '.join(PREPARE_CHOICES)}")
    executor = raw.get("executor") or {"name": "local"}
    executor = {"name": executor} if isinstance(executor, str) else dict(executor)
    return Sweep(
        path=str(path), name=str(raw.get("name", file.stem)),
        data_root=str(Path(str(raw["data_root"])).expanduser().resolve()),
        output_root=str(Path(str(raw["output_root"])).expanduser().resolve()),
        grid=_grid(path, "grid", raw.get("grid")),
        methods={str(k): _method(path, str(k), v) for k, v in (raw["methods"] or {}).items()},
        evaluate=_evaluate(path, raw.get("evaluate")), executor=executor,
        retries=_whole(path, "retries", raw.get("retries", 1), 0),
        retry_delay_s=_non_negative(path, "retry_delay_s", raw.get("retry_delay_s", 0.0)),
        prepare=raw.get("prepare"), backbone=raw.get("backbone"),
        opts=_as_opts(path, "opts", raw.get("opts")),
        dataset_config={str(k): str(v) for k, v in (raw.get("dataset_config") or {}).items()},
        epochs=_epochs(path, "epochs", raw.get("epochs")))


def dataset_config_file(sweep: Sweep, dataset: str) -> str:
    """The dataset's yaml: the sweep's ``dataset_config`` entry, else ``configs/datasets/<dataset>.yaml`` of the
    repository or a plug-in folder (:func:`ampt.config_paths.find_config`)."""
    if dataset in sweep.dataset_config:
        return resolve_file(sweep.path, sweep.dataset_config[dataset], f"dataset {dataset}")
    found = find_config("datasets", dataset, required=False)
    if found is not None:
        return str(found)
    valid = sorted(list_configs("datasets"))
    raise _fail(sweep.path, unknown_name_message("dataset (no configs/datasets/<id>.yaml; map it under "
                                                 "dataset_config)", dataset, valid))
