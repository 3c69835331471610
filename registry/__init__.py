"""Signed, versioned artifacts, a TUF registry with release channels, and the edge agent.

Operator side: :func:`generate_keys`, :func:`package_run`, :func:`verify_artifact` and the
registry (:class:`Registry`). Device side: :class:`EdgeAgent`. Only the operator side
imports the training stack, and only inside :func:`package_run`.
"""

from fedready.registry._anchors import verify_anchored_log, write_checkpoint
from fedready.registry._artifact import Provenance, generate_keys, package_run, verify_artifact
from fedready.registry._canonical import read_json, write_json
from fedready.registry._channels import cohort_versions, in_canary, resolve
from fedready.registry._edge import EdgeAgent, UpdateResult
from fedready.registry._predict import Predictor, read_rows
from fedready.registry._registry import (
    CHANNELS,
    DEFAULT_EXPIRY,
    ROLES,
    STABLE,
    Channel,
    Registry,
    metadata_anchors,
    release_allowed,
)
from fedready.registry._reproduce import reproduce_artifact
from fedready.registry._serve import EdgeServer, ServeConfig
from fedready.registry.device_monitor import monitor, shadow_compare

__all__ = [
    "CHANNELS",
    "DEFAULT_EXPIRY",
    "ROLES",
    "STABLE",
    "Channel",
    "EdgeAgent",
    "EdgeServer",
    "Predictor",
    "Provenance",
    "Registry",
    "ServeConfig",
    "UpdateResult",
    "cohort_versions",
    "generate_keys",
    "in_canary",
    "metadata_anchors",
    "monitor",
    "package_run",
    "read_json",
    "read_rows",
    "release_allowed",
    "reproduce_artifact",
    "resolve",
    "shadow_compare",
    "verify_anchored_log",
    "verify_artifact",
    "write_checkpoint",
    "write_json",
]
