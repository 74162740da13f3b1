"""Evaluation of a finished run: re-identification attacks, utility metrics, sweeps, report.

``evaluate_run`` is what ``deid evaluate`` calls; ``sweep`` is ``deid sweep``. See
docs/evaluation.md for what each number means.
"""

from __future__ import annotations

from deid.evaluate.core import EvaluateError, Evaluator
from deid.evaluate.run import evaluate_run, write_outputs

__all__ = ["EvaluateError", "Evaluator", "evaluate_run", "write_outputs"]
