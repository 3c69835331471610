"""Evaluation of a finished run: federated fairness, stability, calibration, gates, model card.

Public entry points; the suites live in the submodules.
"""

from __future__ import annotations

from fedready.evaluation._explain_run import explain_run_row
from fedready.evaluation.suite import evaluate_run

__all__ = ["evaluate_run", "explain_run_row"]
