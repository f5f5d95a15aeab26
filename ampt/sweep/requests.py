"""What a sweep's ``evaluate`` entry asks for, whether a run's results.json already answers it, and its command.

An entry is either an evaluation (``attack: ...``, run by ``evaluate.py``)
or an audit (``audit: true`` or ``audit: {n_samples: 200, ...}``, run by
``python -m ampt.audit``). An evaluation is answered by a record whose key
(:data:`ampt.results.RECORD_KEY_FIELDS`) holds every setting the entry
gives, its unset settings at the values evaluate.py would use (steps 100 or
the attack's own, alpha eps/4, 1 restart, no EOT or BPDA, fp32, all classes,
the run's training eps, seed 0); an audit by an audit entry of the same eps,
images, seed and settings.

Two resolutions make the sweep's matching agree with evaluate.py's own
(which skips a setting its results.json holds), so that no entry stays
unanswered after evaluate.py ran:

- a stored record without ``seed`` or ``alpha`` (the trainer's clean test,
  older files) matches any value of that field, as in :func:`ampt.results.same_key`;
- ``n_samples`` at or above the test split's size (or unset) asks for the
  whole split, which evaluate.py records with ``n_samples`` = the split's
  size. The size is the ``n_samples`` of a record known to cover the whole
  split (:func:`is_whole_split`); while no such record exists, ``n_samples``
  compares as given (and an unset one matches any).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..evaluation.image_lists import list_digest, read_image_ids
from ..tta import parse_settings, settings_text
from ..evaluation.robust_accuracy import CLEAN, AttackSpec
from ..results import _norm, key_matches
from .runspec import REPO_ROOT

EVAL_KEYS = ("attack", "eps", "steps", "alpha", "n_samples", "prompt", "batch_size", "subsample", "seed",
             "restarts", "eot_iter", "aa_attacks", "bpda", "image_ids", "precision", "test_time",
             "test_time_options", "threat")
AUDIT_KEYS = ("eps", "n_samples", "seed", "image_ids", "strong_steps", "restarts", "queries", "pgd_steps",
              "large_eps", "checks", "batch_size", "prompt")
AUDIT_DEFAULTS = {"n_samples": 200, "seed": 0}


def is_audit(entry: Mapping[str, Any]) -> bool:
    return "audit" in entry


def audit_options(entry: Mapping[str, Any]) -> Dict[str, Any]:
    """``audit: true`` -> ``{}``; ``audit: {...}`` -> its settings."""
    options = entry["audit"]
    return dict(options) if isinstance(options, Mapping) else {}


def is_whole_split(record: Mapping[str, Any]) -> bool:
    """Whether a record measured every image of its split.

    evaluate.py writes ``images_sha256`` on every record and an
    ``image_list_file`` exactly when it evaluated a strict subset; the
    trainers' own final clean test (no ``images_sha256``, no ``seed``) runs
    on the whole split. A user's image list (``image_list``) is never taken
    for the whole split. (Clean records of evaluate.py versions older than
    the seed in the record key also lack both fields and count as whole.)
    """
    if record.get("image_list") or record.get("image_list_file"):
        return False
    if "images_sha256" in record:
        return True
    return record.get("attack") == CLEAN and record.get("seed") is None


def split_sizes(records: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
    """Class subsample ("all", "base", "new") -> the size of its test split, from its whole-split records."""
    sizes: Dict[str, int] = {}
    for record in records:
        if record.get("split") == "test" and is_whole_split(record) and isinstance(record.get("n_samples"), int):
            subsample = record.get("subsample", "all")
            sizes[subsample] = max(sizes.get(subsample, 0), record["n_samples"])
    return sizes


def requested_samples(entry: Mapping[str, Any], split_size: Optional[int]) -> Optional[int]:
    """The ``n_samples`` a record answering ``entry`` holds: the whole split's size for an unset one or one
    at or above it (evaluate.py clamps it); None when an image list decides, or the size is unknown and unset."""
    if entry.get("image_ids"):
        return None
    wanted = entry.get("n_samples")
    if split_size is None:
        return wanted
    return split_size if wanted is None or wanted >= split_size else wanted


def requested_key(entry: Mapping[str, Any], train_eps: Optional[float],
                  sizes: Optional[Mapping[str, int]] = None) -> Dict[str, Any]:
    """The record-key fields an evaluation entry fixes (:mod:`ampt.results`), defaults resolved.

    ``sizes``: :func:`split_sizes` of the run's records (unknown sizes: ``n_samples`` as given).
    """
    attack = str(entry["attack"])
    subsample = entry.get("subsample", "all")
    key: Dict[str, Any] = {"attack": attack, "subsample": subsample, "seed": entry.get("seed", 0),
                           "precision": entry.get("precision", "fp32"), "image_list": image_list_key(entry)}
    if "prompt" in entry:
        key["prompt"] = entry["prompt"]
    n_samples = requested_samples(entry, (sizes or {}).get(subsample))
    if n_samples is not None:
        key["n_samples"] = n_samples
    key.update(test_time_key(entry))
    if attack == CLEAN:
        return key
    eps = entry.get("eps", train_eps)
    spec = AttackSpec(attack, eps=float(eps or 0), steps=entry.get("steps"), alpha=entry.get("alpha"),
                      restarts=int(entry.get("restarts", 1)), eot_iter=int(entry.get("eot_iter", 1)),
                      options=str(entry.get("aa_attacks", "")), bpda=bool(entry.get("bpda", False)))
    key.update({"steps": spec.steps, "restarts": spec.restarts, "eot_iter": spec.eot_iter,
                "attack_options": spec.options, "bpda": spec.bpda})
    if eps is not None:
        key["eps"] = spec.eps
    if spec.alpha is not None and (eps is not None or "alpha" in entry):
        key["alpha"] = spec.alpha
    return key


def test_time_key(entry: Mapping[str, Any]) -> Dict[str, str]:
    """The test-time fields of the key: method, its settings (defaults resolved) and threat ("" for clean)."""
    method = entry.get("test_time") or ""
    if not method:
        return {"test_time": "", "test_time_options": "", "test_time_threat": ""}
    threat = "" if entry["attack"] == CLEAN else str(entry.get("threat", "non-adaptive"))
    return {"test_time": method, "test_time_options": settings_text(parse_settings(method, entry.get("test_time_options", ""))),
            "test_time_threat": threat}


def image_list_key(entry: Mapping[str, Any]) -> Optional[str]:
    path = entry.get("image_ids")
    return list_digest(read_image_ids(Path(path)))[:16] if path else None


def record_answers(record: Mapping[str, Any], entry: Mapping[str, Any], train_eps: Optional[float] = None,
                   sizes: Optional[Mapping[str, int]] = None) -> bool:
    """Whether a results.json record answers an evaluation entry (see the module docstring)."""
    if record.get("split") != "test":
        return False
    query = requested_key(entry, train_eps, sizes)
    return key_matches(record, query, fields=tuple(query))


def audit_answers(audit: Mapping[str, Any], entry: Mapping[str, Any], train_eps: Optional[float] = None) -> bool:
    """Whether a stored audit entry answers an ``audit`` entry of the sweep (same eps, images, seed, settings)."""
    options = audit_options(entry)
    eps = options.get("eps", train_eps)
    if eps is not None and _norm(audit.get("eps")) != _norm(eps):
        return False
    wanted = {**AUDIT_DEFAULTS, **{k: v for k, v in options.items() if k in ("n_samples", "seed")}}
    if options.get("image_ids"):
        if audit.get("images_sha256") != list_digest(read_image_ids(Path(options["image_ids"]))):
            return False
        wanted.pop("n_samples")
    if any(audit.get(k) != v for k, v in wanted.items()):
        return False
    settings = audit.get("settings", {})
    for option, setting in (("strong_steps", "strong_steps"), ("restarts", "strong_restarts"),
                            ("queries", "square_queries"), ("pgd_steps", "pgd_steps"), ("large_eps", "large_eps")):
        if option in options and _norm(settings.get(setting)) != _norm(options[option]):
            return False
    return True


def group_evaluations(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Evaluation entries that differ only in their attack or test-time method, as one entry with a list of
    attacks and of methods (one ``evaluate.py`` call loads the run once for all of them, and a non-adaptive
    attack's images serve the run's model and every method); audits and the order otherwise kept."""
    groups: Dict[str, Dict[str, Any]] = {}
    out: List[Dict[str, Any]] = []
    for entry in entries:
        if is_audit(entry):
            out.append(entry)
            continue
        settings = repr(sorted((k, v) for k, v in entry.items() if k not in ("attack", "test_time")))
        if settings not in groups:
            groups[settings] = {**entry, "attack": []}
            groups[settings].pop("test_time", None)
            out.append(groups[settings])
        group = groups[settings]
        if entry["attack"] not in group["attack"]:
            group["attack"].append(entry["attack"])
        if entry.get("test_time"):
            methods = group.setdefault("test_time", [])
            if entry["test_time"] not in methods:
                methods.append(entry["test_time"])
    return out


def evaluate_command(run_dir: str, data_root: str, entry: Mapping[str, Any]) -> List[str]:
    """``evaluate.py`` for an entry; its ``attack`` is a name or a list of names (:func:`group_evaluations`)."""
    attacks = entry["attack"] if isinstance(entry["attack"], list) else [entry["attack"]]
    cmd = [sys.executable, str(REPO_ROOT / "evaluate.py"), run_dir, "--attack", *map(str, attacks),
           "--root", data_root]
    for key in ("eps", "steps", "alpha", "n_samples", "prompt", "batch_size", "subsample", "seed", "restarts",
                "eot_iter", "aa_attacks", "image_ids", "precision", "test_time_options", "threat"):
        if key in entry:
            cmd += [f"--{key.replace('_', '-')}", str(entry[key])]
    if entry.get("test_time"):
        methods = entry["test_time"] if isinstance(entry["test_time"], list) else [entry["test_time"]]
        cmd += ["--test-time", *map(str, methods)]
    if entry.get("bpda"):
        cmd.append("--bpda")
    return cmd


def audit_command(run_dir: str, data_root: str, entry: Mapping[str, Any]) -> List[str]:
    cmd = [sys.executable, "-m", "ampt.audit", run_dir, "--root", data_root]
    for key, value in audit_options(entry).items():
        if key == "checks":
            cmd += ["--checks", *([value] if isinstance(value, str) else [str(v) for v in value])]
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd
