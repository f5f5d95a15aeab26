"""The audit (``python -m ampt.audit RUN``) in the report: flags of the rows, and the ``--audit`` table.

``results.json`` holds an ``audit`` list; an entry is the run's *current*
audit when its ``weights`` equal ``run.final_weights`` (or either is
missing); the latest current one (by ``created``) counts. A row's seeds are
its finished runs with numbers; a seed is *audited* when its run has a
current audit. A flag never hides a number: it is named in the row's Flags.

The table has one line per row and one column per check (:data:`CHECKS`,
then any other check an entry names): ``pass``, ``flag`` (``flag (seed 2)``
when not every seed of the row flagged it), ``skip`` (the check did not apply)
or ``—`` (no audited seed ran it), and ``Audited``: audited seeds / seeds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .aggregate import Row
    from .collect import Run

CHECKS = ("determinism", "gradient_health", "convergence", "black_box", "large_eps", "transfer", "declared_parts")
STATUSES = ("pass", "flag", "skip")
NOT_AUDITED = "—"
AUDIT_CAPTION = ("Audit (python -m ampt.audit) of each row's seeds: per check pass, flag (the seeds flagged when "
                 "not all the row's seeds are), skip (not applicable) or — (not audited); Audited: seeds with a "
                 "current audit / seeds with numbers.")


def current_audit(run: "Run") -> Optional[Dict[str, Any]]:
    """The run's current audit entry (module docstring), or None."""
    final = run.meta.get("final_weights")
    current = [(str(entry.get("created") or ""), i, entry) for i, entry in enumerate(run.audit)
               if not final or not entry.get("weights") or entry.get("weights") == final]
    return max(current, key=lambda t: (t[0], t[1]))[2] if current else None


def entry_statuses(entry: Dict[str, Any]) -> Dict[str, str]:
    """``check name -> pass | flag | skip`` of one audit entry (its ``flags`` list counts as flags)."""
    out: Dict[str, str] = {}
    for check in entry.get("checks") or []:
        if isinstance(check, dict) and check.get("name"):
            status = str(check.get("status") or "")
            out[str(check["name"])] = status if status in STATUSES else "skip"
    for name in entry.get("flags") or []:
        out[str(name)] = "flag"
    return out


def _seeds(seeds: Sequence[int]) -> str:
    return "seed " + ",".join(map(str, seeds))


def row_checks(row: "Row") -> Dict[str, Dict[str, Any]]:
    """``check -> {"status", "flagged_seeds", "seeds": {seed: status}}`` over the row's audited seeds."""
    per_check: Dict[str, Dict[int, str]] = {}
    for seed in sorted(row.audits):
        for name, status in entry_statuses(row.audits[seed]).items():
            per_check.setdefault(name, {})[seed] = status
    out: Dict[str, Dict[str, Any]] = {}
    for name, seeds in per_check.items():
        flagged = [s for s, status in seeds.items() if status == "flag"]
        status = "flag" if flagged else "pass" if "pass" in seeds.values() else "skip"
        out[name] = {"status": status, "flagged_seeds": flagged, "seeds": seeds}
    return out


def check_names(rows: Sequence["Row"]) -> List[str]:
    """:data:`CHECKS`, then any other check the rows' audits name (alphabetically)."""
    extra = sorted({name for row in rows for name in row_checks(row)} - set(CHECKS))
    return list(CHECKS) + extra


def audit_flags_text(row: "Row") -> str:
    """``audit: gradient_health, convergence (seed 2)``; "" when no audited seed flagged anything."""
    checks = {name: c["flagged_seeds"] for name, c in row_checks(row).items() if c["flagged_seeds"]}
    if not checks:
        return ""
    order = check_names([row])
    names = sorted(checks, key=order.index)
    every = sorted(row.seeds)
    if len({tuple(seeds) for seeds in checks.values()}) == 1:
        seeds = checks[names[0]]
        return "audit: " + ", ".join(names) + ("" if seeds == every else f" ({_seeds(seeds)})")
    return "audit: " + ", ".join(n + ("" if checks[n] == every else f" ({_seeds(checks[n])})") for n in names)


def audited_text(row: "Row") -> str:
    return f"{len(row.audits)}/{len(row.seeds)}"


def cell(check: Optional[Dict[str, Any]], seeds: Sequence[int]) -> str:
    if check is None:
        return NOT_AUDITED
    if check["status"] == "flag" and check["flagged_seeds"] != sorted(seeds):
        return f"flag ({_seeds(check['flagged_seeds'])})"
    return check["status"]


def audit_header(checks: Sequence[str]) -> List[str]:
    return ["Method", "Dataset", "Shots", "Train eps", "Audited", *checks]


def audit_cells(row: "Row", checks: Sequence[str]) -> List[str]:
    found = row_checks(row)
    return [row.method, row.dataset, str(row.shots), f"{row.train_eps:g}", audited_text(row),
            *[cell(found.get(name), row.seeds) for name in checks]]


def audit_json(row: "Row") -> Dict[str, Any]:
    """A row's audit for the json output: seeds, audited seeds, per check status and seeds, each seed's entry."""
    return {"method": row.method, "dataset": row.dataset, "shots": row.shots, "train_eps": row.train_eps,
            "trained_classes": row.subsample, "protocol": row.protocol, "seeds": row.seeds,
            "audited_seeds": sorted(row.audits),
            "checks": {name: {"status": c["status"], "flagged_seeds": c["flagged_seeds"],
                              "seeds": {str(s): v for s, v in c["seeds"].items()}}
                       for name, c in row_checks(row).items()},
            "entries": {str(seed): {k: entry.get(k) for k in ("status", "flags", "created", "weights", "eps",
                                                                "n_samples", "images_sha256")}
                        for seed, entry in sorted(row.audits.items())}}
