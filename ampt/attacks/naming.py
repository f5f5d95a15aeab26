"""How a record's attack is named in tables: one rule, shared by the report and the audit.

A column names everything that changes the number besides the model:
``clean``; ``pgd-100@4`` (attack, steps, eps in 1/255); ``pgd-100x5@4``
(5 restarts); ``pgd-100+eot20@4`` (20 EOT samples per gradient);
``apgd-t@1`` and ``square@4`` (steps shown only when they differ from the
attack's default: 100 iterations, Square's 5,000 queries);
``aa@4`` (standard AutoAttack), ``aa-rand@4`` (its EOT 20 is part of the
version), ``aa-custom(apgd-ce,apgd-t)@4``; ``+bpda`` when gradients went
through declared non-differentiable parts by their straight-through path;
``/tapt`` after a number adapted at test time (attack made on the run's
model, the papers' protocol) and ``/tapt-adaptive`` when the attack went
through the adaptation. :func:`parse_column` reads such a name back (for sorting).
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

CLEAN = "clean"
# Steps (iterations; Square: queries) an attack runs by default: not shown in its column.
DEFAULT_STEPS = {"apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "fab-t": 100, "square": 5000}
# EOT samples that are part of an attack's version: not shown in its column.
DEFAULT_EOT = {"aa-rand": 20}

_COLUMN = re.compile(
    r"^(?P<attack>[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*)"
    r"(?:\((?P<options>[^)]*)\))?"
    r"(?:-(?P<steps>\d+))?"
    r"(?:x(?P<restarts>\d+))?"
    r"(?:\+eot(?P<eot>\d+))?"
    r"(?P<bpda>\+bpda)?"
    r"@(?P<eps>[0-9.e+-]+)$"
)


def column_name(record: Mapping[str, Any]) -> str:
    """The column of ``record`` (see the module docstring); prompt and precision suffixes are the report's."""
    return _attack_column(record) + test_time_suffix(record)


def test_time_suffix(record: Mapping[str, Any]) -> str:
    """``/tapt`` (adapted at test time, attack made on the run's model: the papers' protocol),
    ``/tapt-adaptive`` (attack through the adaptation), or nothing."""
    method = record.get("test_time") or ""
    if not method:
        return ""
    return f"/{method}" + ("-adaptive" if record.get("test_time_threat") == "adaptive" else "")


def _attack_column(record: Mapping[str, Any]) -> str:
    attack = str(record.get("attack", "?"))
    if attack == CLEAN:
        return CLEAN
    name = attack
    options = record.get("attack_options") or ""
    if options:
        name += f"({options})"
    steps = int(record.get("steps") or 0)
    if steps and steps != DEFAULT_STEPS.get(attack):
        name += f"-{steps}"
    restarts = int(record.get("restarts") or 1)
    if restarts > 1:
        name += f"x{restarts}"
    eot = int(record.get("eot_iter") or 1)
    if eot > 1 and eot != DEFAULT_EOT.get(attack):
        name += f"+eot{eot}"
    if record.get("bpda"):
        name += "+bpda"
    eps = float(record.get("eps") or 0)
    return f"{name}@{eps:g}"


def parse_column(column: str) -> Optional[Dict[str, Any]]:
    """``"pgd-100x5@4"`` -> ``{"attack": "pgd", "steps": 100, "restarts": 5, "eot": 1, "eps": 4.0, ...}``; None if not a column."""
    column, _, test_time = column.partition("/")
    method, adaptive = (test_time[:-len("-adaptive")], True) if test_time.endswith("-adaptive") else (test_time, False)
    tta = {"test_time": method, "adaptive": adaptive}
    if column == CLEAN:
        return {"attack": CLEAN, "options": "", "steps": 0, "restarts": 1, "eot": 1, "bpda": False, "eps": 0.0, **tta}
    match = _COLUMN.match(column)
    if match is None:
        return None
    attack = match["attack"]
    steps = int(match["steps"]) if match["steps"] else DEFAULT_STEPS.get(attack, 0)
    return {"attack": attack, "options": match["options"] or "", "steps": steps,
            "restarts": int(match["restarts"] or 1), "eot": int(match["eot"] or DEFAULT_EOT.get(attack, 1)),
            "bpda": bool(match["bpda"]), "eps": float(match["eps"]), **tta}
