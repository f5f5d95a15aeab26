"""Run the audit's checks on a model and a fixed set of images; render the table."""
from __future__ import annotations

import datetime
import logging
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from torch import Tensor, nn

from ..errors import UserError
from .checks import CHECK_FUNCTIONS, CHECKS, FLAG, AuditContext, AuditSettings, CheckResult

logger = logging.getLogger(__name__)


def check_names(names: Optional[List[str]]) -> tuple:
    """The checks to run (default all), each known; an unknown name is one line with the valid ones."""
    if not names:
        return CHECKS
    unknown = [n for n in names if n not in CHECK_FUNCTIONS]
    if unknown:
        raise UserError(f"unknown audit check {', '.join(unknown)}; valid: {', '.join(CHECKS)}")
    return tuple(n for n in CHECKS if n in names)


def run_audit(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int, settings: AuditSettings,
              source: Optional[nn.Module] = None) -> Dict[str, Any]:
    """The audit entry (``checks``, ``flags``, ``status``, ``settings``, ``seconds``) of ``model`` on these images.

    ``images`` are pixels in [0, 1] on the model's device; ``source`` (optional) is the model transfer attacks
    are made on (for a prompt model: the frozen zero-shot CLIP of the same backbone).
    """
    start = time.perf_counter()
    ctx = AuditContext(model, images, labels, num_classes, settings, source)
    results: List[CheckResult] = []
    for name in check_names(list(settings.checks)):
        check_start = time.perf_counter()
        result = CHECK_FUNCTIONS[name](ctx)
        logger.info("audit %s: %s (%.1f s) %s", name, result.status, time.perf_counter() - check_start, result.why)
        results.append(result)
    flags = [r.name for r in results if r.status == FLAG]
    return {
        "status": FLAG if flags else "pass",
        "flags": flags,
        "checks": [r.as_dict() for r in results],
        "clean_acc": round(100.0 * float(ctx.clean.float().mean()), 2),
        "n_samples": int(images.shape[0]),
        "declared_parts": ctx.parts,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "attack_seconds": ctx.seconds,
        "seconds": round(time.perf_counter() - start, 2),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _numbers_text(numbers: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())


def audit_table(entry: Dict[str, Any], fmt: str = "github") -> str:
    """The audit as a table: check, status, numbers, why."""
    from tabulate import tabulate

    rows = [[c["name"], c["status"].upper() if c["status"] == FLAG else c["status"], _numbers_text(c["numbers"]),
             c["why"]] for c in entry["checks"]]
    return tabulate(rows, headers=["check", "status", "numbers", "why"], tablefmt=fmt)
