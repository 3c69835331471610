"""Monitoring: a federated, optionally noisy reference profile; drift on the edge; shadow comparison.

Everything here is NumPy only, so it runs on the lean edge install; the federated query that
builds the profile lives in :mod:`fedready.monitoring.federated` (training stack).
"""

from fedready.monitoring._drift import MonitoringPolicy, compare, js_distance, load_monitoring_policy, psi
from fedready.monitoring.edge import (
    ALERT_CONTEXT,
    ALERTS_FILE,
    SUMMARIES_FILE,
    Metrics,
    Recorder,
    StorageLimits,
    load_window,
)
from fedready.monitoring.profile import (
    PROFILE_FILE,
    Counts,
    NoiseRecord,
    count_rows,
    privatize,
    profile_document,
)

__all__ = [
    "ALERTS_FILE",
    "ALERT_CONTEXT",
    "PROFILE_FILE",
    "SUMMARIES_FILE",
    "Counts",
    "Metrics",
    "MonitoringPolicy",
    "NoiseRecord",
    "Recorder",
    "StorageLimits",
    "compare",
    "count_rows",
    "js_distance",
    "load_monitoring_policy",
    "load_window",
    "privatize",
    "profile_document",
    "psi",
]
