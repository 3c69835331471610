"""A deployed client's local view: its CSV, schema, contract, limits, ledger and audit log.

A SuperNode started by ``fedready client`` carries the paths in its node config
(``data-path``, ``schema-path``, ``limits-path``); the ClientApp builds a :class:`Site`
from them. Nothing here is sent anywhere: the ClientApp sends only the fingerprint
(:attr:`Site.fingerprint`), reason codes, the model update and its DP parameters.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedready import constants as K
from fedready.audit import AuditLog
from fedready.data import Table, read_csv
from fedready.deploy.contract import ContractReport, row_validity, validate_contract
from fedready.deploy.limits import LocalLedger, LocalLimits, Release, load_limits
from fedready.encoding import FeatureEncoder
from fedready.schema import DataSchema, load_schema

__all__ = ["LocalData", "Site", "site_from_node_config"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalData:
    """The encoded local train/validation split (rows that pass :func:`row_validity`)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_attributes: dict[str, np.ndarray]


class Site:
    """One organisation's client: data, contract, local limits, ledger and audit log."""

    def __init__(self, *, data_path: Path, schema: DataSchema, limits: LocalLimits) -> None:
        self.data_path = Path(data_path)
        self.schema = schema
        self.limits = limits
        raw = self.data_path.read_bytes()
        self.table: Table = read_csv(self.data_path, schema)
        self.report: ContractReport = validate_contract(self.table, schema)
        self.fingerprint: dict[str, Any] = {K.SCHEMA_DIGEST: schema.digest(), K.DATA_ROWS: len(self.table),
                                            K.DATA_SHA256: "sha256:" + hashlib.sha256(raw).hexdigest()}  # fmt: skip
        self.audit = AuditLog(limits.audit_log)
        self.ledger = LocalLedger(limits.ledger)

    def local_data(self, *, val_fraction: float, seed: int) -> LocalData:
        """Encode the valid rows and hold out ``val_fraction`` of them (seeded) for evaluation."""
        keep = np.flatnonzero(row_validity(self.table, self.schema))
        table = self.table.take(keep)
        x = FeatureEncoder(self.schema).transform(table.columns)
        y = table.labels(self.schema)
        perm = np.random.default_rng(seed).permutation(len(y))
        n_val = int(round(len(y) * val_fraction))
        tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        attrs = {a: table.columns[a][va] for a in self.schema.sensitive}
        return LocalData(x[tr], y[tr], x[va], y[va], attrs)

    def privacy_refusal(self, *, requested_delta: float, accountant: str,
                        step: tuple[float, float, int]) -> tuple[str, str] | None:  # fmt: skip
        """A (reason, detail) if releasing one more update ``step`` would break a local limit."""
        if requested_delta > self.limits.max_delta:
            return K.LOCAL_LIMIT, f"requested delta {requested_delta} > local max_delta {self.limits.max_delta}"
        lifetime = self.ledger.epsilon(delta=self.limits.max_delta, accountant=self.limits.accountant, extra=[step])
        if lifetime > self.limits.max_epsilon:
            spent = self.ledger.epsilon(delta=self.limits.max_delta, accountant=self.limits.accountant)
            return K.BUDGET_EXHAUSTED, (f"lifetime epsilon would reach {lifetime:.4f} > local max_epsilon "
                                        f"{self.limits.max_epsilon} (spent {spent:.4f})")  # fmt: skip
        return None

    def record_release(self, *, run: str, server_round: int, step: tuple[float, float, int]) -> float:
        """Write one released update to the lifetime ledger and the audit log; return lifetime epsilon."""
        eps = self.ledger.epsilon(delta=self.limits.max_delta, accountant=self.limits.accountant, extra=[step])
        self.ledger.record(Release(run=run, round=server_round, noise_multiplier=step[0], sample_rate=step[1],
                                   steps=step[2], epsilon=eps))  # fmt: skip
        self.audit.append("update-released", run=run, round=server_round, noise_multiplier=step[0],
                          sample_rate=step[1], steps=step[2], lifetime_epsilon=eps,
                          max_epsilon=self.limits.max_epsilon)  # fmt: skip
        return eps


@lru_cache(maxsize=4)
def _site(data: str, schema: str, limits: str, _stamp: tuple[int, int]) -> Site:
    return Site(data_path=Path(data), schema=load_schema(schema), limits=load_limits(limits))


def site_from_node_config(node_config: Mapping[str, Any]) -> Site | None:
    """The deployed site named by a SuperNode's node config, or None in simulation.

    The site is rebuilt (data re-read, contract re-checked) whenever the CSV changes.
    """
    if K.NODE_DATA not in node_config:
        return None
    data = Path(str(node_config[K.NODE_DATA]))
    st = data.stat()
    return _site(str(data), str(node_config[K.NODE_SCHEMA]), str(node_config[K.NODE_LIMITS]),
                 (st.st_mtime_ns, st.st_size))  # fmt: skip
