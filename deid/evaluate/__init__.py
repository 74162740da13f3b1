"""Evaluation of a finished run: re-identification attacks, utility metrics, sweeps, report.

``evaluate_run`` is what ``deid evaluate`` calls; ``sweep`` is ``deid sweep``. See
docs/evaluation.md for what each number means. ``audit_dp(manifest) -> dict`` is the empirical
privacy audit of a dp-image manifest (``deid audit-dp``; docs/privacy.md).
"""

from __future__ import annotations

from deid.evaluate.core import EvaluateError, Evaluator
from deid.evaluate.dp_audit import DpAuditError, audit_dp
from deid.evaluate.run import evaluate_run, write_outputs

__all__ = ["DpAuditError", "EvaluateError", "Evaluator", "audit_dp", "evaluate_run", "write_outputs"]
