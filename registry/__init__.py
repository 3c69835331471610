"""Signed, versioned artifacts, a TUF registry with release channels, and the edge agent.

Operator side: :func:`generate_keys`, :func:`package_run`, :func:`verify_artifact` and the
registry (:class:`Registry`). Device side: :class:`EdgeAgent`. Only the operator side
imports the training stack, and only inside :func:`package_run`.
"""

from fedready.registry._artifact import Provenance, generate_keys, package_run, verify_artifact

__all__ = ["Provenance", "generate_keys", "package_run", "verify_artifact"]
