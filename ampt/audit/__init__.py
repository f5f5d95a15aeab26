"""Is this robustness number real? An audit of a model for the signs of overstated robustness.

``python -m ampt.audit RUN`` (:mod:`ampt.audit.__main__`) runs the checks of
:mod:`ampt.audit.checks` on a fixed subset of a run's test images and writes
an ``audit`` entry to its ``results.json``; :func:`run_audit` audits any
module mapping [0, 1] pixels to logits. See ``docs/audit.md``.
"""
from .checks import CHECKS, AuditSettings, CheckResult
from .runner import audit_table, run_audit

__all__ = ["CHECKS", "AuditSettings", "CheckResult", "audit_table", "run_audit"]
