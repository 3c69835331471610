"""fedready: privacy-preserving federated training, evaluation and edge delivery.

The Python API mirrors the CLI (:mod:`fedready.api`): :func:`simulate`, :func:`evaluate`,
:func:`compress` and :func:`pipeline` take a task (data, schema, model) and options and
return typed results, so a notebook or a sweep script needs no subprocess.
"""

from fedready.api import (
    AuditResult,
    CompressionResult,
    EvaluationResult,
    PipelineResult,
    RoundMetrics,
    SimulationResult,
    audit_privacy,
    compress,
    evaluate,
    pipeline,
    simulate,
)

__all__ = [
    "AuditResult",
    "CompressionResult",
    "EvaluationResult",
    "PipelineResult",
    "RoundMetrics",
    "SimulationResult",
    "audit_privacy",
    "compress",
    "evaluate",
    "pipeline",
    "simulate",
]
