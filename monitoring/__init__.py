"""Monitoring: a federated, optionally noisy reference profile; drift statistics and summaries on the edge.

Everything here is NumPy only, so it runs on the lean edge install. The federated query that
builds the profile is asked by the server (:func:`fedready.server.app.run_profile_query`), answered
by the clients (:mod:`fedready.client.queries`) and summed in :mod:`fedready.monitoring.federated`;
a device's monitoring of its active model and the shadow comparison read artifacts, so they live in
the registry (:func:`fedready.registry.monitor`, :func:`fedready.registry.shadow_compare`).
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
