"""fedready: privacy-preserving federated training, evaluation and edge delivery.

The Python API mirrors the CLI (:mod:`fedready.api`): :func:`simulate`, :func:`evaluate`,
:func:`compress` and :func:`pipeline` take a task (data, schema, model) and options and
return typed results, so a notebook or a sweep script needs no subprocess.

The API sits on top of every layer (pyproject.toml, ``[tool.importlinter]``) while this package is
also the core: its names are forwarded when first used (PEP 562), so importing ``fedready.schema``
or ``fedready.privacy`` imports nothing above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fedready import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedready' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
