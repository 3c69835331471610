"""A deployed client's local view: its CSV, schema, contract, limits, ledger and audit log.

A SuperNode started by ``fedready client`` carries the paths in its node config
(``data-path``, ``schema-path``, ``limits-path``); the ClientApp builds a :class:`Site`
from them. Nothing here is sent anywhere: the ClientApp sends only the fingerprint
(:attr:`Site.fingerprint`: the schema digest and a salted commitment to the data), reason
codes, the noised model update and counts, and their DP parameters.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedready import constants as K
from fedready.audit import AuditLog
from fedready.client.limits import LocalLedger, LocalLimits, Release, load_limits
from fedready.config import SimulationConfig, loosened_keys
from fedready.contract import ContractReport, row_validity, validate_contract
from fedready.data import Table, read_csv
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
    train_columns: dict[str, np.ndarray]  # raw values of the training rows (for the reference profile)
    schema: DataSchema | None = None  # the site's own schema (what the rows mean)


class Site:
    """One organisation's client: data, contract, local limits, ledger and audit log."""

    def __init__(self, *, data_path: Path, schema: DataSchema, limits: LocalLimits) -> None:
        self.data_path = Path(data_path)
        self.schema = schema
        self.limits = limits
        raw = self.data_path.read_bytes()
        self.table: Table = read_csv(self.data_path, schema)
        self.report: ContractReport = validate_contract(self.table, schema)
        self.data_sha256 = "sha256:" + hashlib.sha256(raw).hexdigest()  # stays here (audit log only)
        # The server gets a commitment, not the digest: a bare sha256 of the CSV would let anyone holding a
        # candidate file test whether it is this client's data. The salt is a secret kept beside the ledger.
        salt = _secret_salt(limits.ledger.parent / "commitment.salt")
        commitment = "sha256:" + hashlib.sha256(salt + self.data_sha256.encode()).hexdigest()
        self.fingerprint: dict[str, Any] = {K.SCHEMA_DIGEST: schema.digest(), K.DATA_COMMITMENT: commitment}
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
        return LocalData(x[tr], y[tr], x[va], y[va], attrs, {k: v[tr] for k, v in table.columns.items()}, self.schema)

    def contract_detail(self) -> str:
        """What a contract refusal tells the coordinator: the failed checks' names if the limits allow it."""
        if self.limits.share_contract_report:
            return self.report.summary()
        return "the local data breaks the data contract (details stay on the client)"

    def run_refusal(self, cfg: SimulationConfig) -> tuple[str, str] | None:
        """A (``local-privacy-limit``, detail) if the run asks for a loosening this organisation did not allow.

        Notes
        -----
        Which run-config keys loosen the record-level guarantee is decided in one table,
        :data:`fedready.config.RUN_CONFIG_KEYS`. A loosening flag is accepted only when this
        organisation's own ``limits.toml`` sets its ``allow_...`` key; ``dp = false`` never is. The
        capped keys (``epsilon``, ``delta``) are checked before each release
        (:meth:`privacy_refusal`). The coordinator's run config cannot switch off an
        organisation's privacy: it chooses the run, the organisation what it accepts.
        """
        refused = [(key, rule) for key, rule in loosened_keys(cfg)
                   if rule.limit is None or not getattr(self.limits, rule.limit, False)]  # fmt: skip
        if not refused:
            return None
        parts = [f"{k.replace('_', '-')}={getattr(cfg, k)!s}".lower() + (f" (allow with {r.limit} = true)"
                 if r.limit else " (never accepted)") for k, r in refused]  # fmt: skip
        return K.LOCAL_LIMIT, ("the run asks for " + ", ".join(parts)
                               + ", which loosens this organisation's privacy and its limits.toml does not allow")

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

    def record_release(self, *, run: str, server_round: int, step: tuple[float, float, int],
                       level: str = "sample") -> float:  # fmt: skip
        """Write one release to the lifetime ledger and the audit log; return the lifetime epsilon."""
        eps = self.ledger.epsilon(delta=self.limits.max_delta, accountant=self.limits.accountant, extra=[step])
        self.ledger.record(Release(run=run, round=server_round, noise_multiplier=step[0], sample_rate=step[1],
                                   steps=step[2], epsilon=eps, level=level))  # fmt: skip
        self.audit.append("update-released" if level == "sample" else f"{level}-released", run=run,
                          round=server_round, noise_multiplier=step[0], sample_rate=step[1], steps=step[2],
                          lifetime_epsilon=eps, max_epsilon=self.limits.max_epsilon)  # fmt: skip
        return eps


def _secret_salt(path: Path) -> bytes:
    """32 random bytes kept (0600) at ``path``, created on first use."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    salt = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(salt)
    return salt


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
