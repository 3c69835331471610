"""The per-run privacy ledger: every release about every client's rows, round by round.

A client's rows are the subject of several releases, and the ledger charges each of them:

========= ===================================================================
``count`` the client's noisy row count (once per run; the FedAvg weight and the DP-SGD
          sample rate are computed from it, so the exact count never leaves)
``sample`` one round of DP-SGD (the released model update)
``query`` the noisy counts answered after training (group confusion counts on its
          validation rows and the reference-profile histograms of its training rows)
``seed``  extra training runs on the same rows (``fedready evaluate --seeds``)
``client`` client-level DP (DP-FedAvg): one release of the whole federation, client ``*``
========= ===================================================================

Each entry records the noise multiplier, sample rate, steps, accountant, delta and the
epsilon spent so far, composed (RDP) over *every* earlier release about the same client's
rows. The run's headline epsilon is the maximum over clients of that composition: training,
count and queries together. :func:`recompute` rebuilds every number from the recorded
parameters with Opacus's accountant alone, so anyone can audit the ledger.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedready.constants import LEDGER_FILE
from fedready.files import atomic_write_text
from fedready.privacy.accounting import compose_epsilon

__all__ = ["LEDGER_FILE", "LEVELS", "RECORD_LEVELS", "Ledger", "LedgerEntry", "compose_entries", "recompute"]

FORMAT = "fedready-ledger/2"


@dataclass(frozen=True)
class LedgerEntry:
    """One client's spending in one round."""

    round: int
    client: str  # partition id in simulation, node id in a deployment
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    delta: float
    epsilon: float  # composed over this client's releases up to and including this one (all record levels)
    level: str = "sample"  # one of LEVELS (see the module docstring)
    note: str = ""  # e.g. "late": released after the round timeout, charged when the client reported it


RECORD_LEVELS = ("count", "sample", "query", "seed")  # releases about a client's rows (they compose)
LEVELS = (*RECORD_LEVELS, "client")


@dataclass
class Ledger:
    """A run's privacy ledger (mutable while the run goes; written as JSON)."""

    run_id: str
    delta: float
    target_epsilon: float | None
    accountant: str
    dp: bool = True
    entries: list[LedgerEntry] = field(default_factory=list)
    declines: list[dict[str, Any]] = field(default_factory=list)
    # what voids or weakens the guarantee, stamped wherever the epsilon is shown
    insecure_seeded_noise: bool = False  # noise derived from the configuration: NOT private
    outside_guarantee: list[str] = field(default_factory=list)  # opt-in releases that are not charged

    @property
    def private(self) -> bool:
        """Whether the epsilon is a guarantee at all (DP on, secret noise, nothing released uncharged)."""
        return self.dp and not self.insecure_seeded_noise and not self.outside_guarantee

    def caveats(self) -> list[str]:
        """One line per reason the printed epsilon is not (or not the whole) guarantee."""
        out = []
        if self.insecure_seeded_noise:
            out.append("NOT PRIVATE: noise seeded from the configuration (--insecure-seeded-noise)")
        out += [f"released outside the guarantee: {x}" for x in self.outside_guarantee]
        return out

    def record(self, entry: LedgerEntry) -> None:
        """Append one client's spending for one round."""
        if entry.level not in LEVELS:
            raise ValueError(f"unknown ledger level '{entry.level}'; expected one of: {', '.join(LEVELS)}")
        self.entries.append(entry)

    def charge(self, *, round: int, client: str, level: str, noise_multiplier: float, sample_rate: float,  # noqa: A002
               steps: int, delta: float, accountant: str | None = None, note: str = "") -> LedgerEntry:  # fmt: skip
        """Record one release and compose it with every earlier release about the same rows.

        ``client`` ``"*"`` with level ``client`` is the federation-level (DP-FedAvg) mechanism;
        every other level composes per client.
        """
        acct = accountant or self.accountant
        same = [e for e in self.entries if e.client == client and (e.level == "client") == (level == "client")]
        probe = LedgerEntry(round=round, client=client, noise_multiplier=float(noise_multiplier),
                            sample_rate=float(sample_rate), steps=int(steps), accountant=acct, delta=float(delta),
                            epsilon=0.0, level=level, note=note)  # fmt: skip
        entry = dataclasses.replace(probe, epsilon=compose_entries([*same, probe]))
        self.record(entry)
        return entry

    def charged(self, client: str, level: str, round: int) -> bool:  # noqa: A002
        """Whether a release of ``level`` by ``client`` in ``round`` is already recorded."""
        # an index of the entries, rebuilt when they were replaced or grew (every reply asks, for its whole history)
        indexed = getattr(self, "_indexed", None)  # (the list indexed, its length then): a reference, not an id
        if indexed is None or indexed[0] is not self.entries or indexed[1] != len(self.entries):
            self._index = {(e.client, e.level, e.round) for e in self.entries}
            self._indexed = (self.entries, len(self.entries))
        return (client, level, round) in self._index

    def record_decline(self, *, round: int, client: str, reason: str, detail: str) -> None:  # noqa: A002
        """Record that a client declined a round (it spent nothing)."""
        self.declines.append({"round": round, "client": client, "reason": reason, "detail": detail})

    def truncate(self, last_round: int) -> None:
        """Drop everything recorded after ``last_round`` (used when resuming)."""
        self.entries = [e for e in self.entries if e.round <= last_round]
        self.declines = [d for d in self.declines if d["round"] <= last_round]

    def client_epsilon(self, levels: tuple[str, ...] = RECORD_LEVELS) -> dict[str, float]:
        """Each client's epsilon over its releases of ``levels`` (default: all of them, composed).

        Entries are only ever appended (a resume replaces the whole list): each call composes again only
        the clients charged since the last call, so a round of 100 clients among 10,000 costs 100
        compositions, not 10,000 (the headline epsilon is read several times a round).
        """
        caches = self.__dict__.setdefault("_epsilon_cache", {})
        cached = caches.get(levels)
        if cached is None or cached[0] is not self.entries or cached[1] > len(self.entries):
            cached = caches[levels] = [self.entries, 0, {}, {}]  # the list, entries seen, groups, epsilons
        entries, seen, groups, eps = cached
        changed = set()
        for e in entries[seen:]:
            if e.level in levels and e.level != "client":
                groups.setdefault(e.client, []).append(e)
                changed.add(e.client)
        for c in changed:
            eps[c] = compose_entries(groups[c])
        cached[1] = len(entries)
        return {c: eps[c] for c in groups}

    @property
    def epsilon(self) -> float:
        """The run's headline epsilon: max over clients of every release about their rows, composed."""
        return max(self.client_epsilon().values(), default=0.0)

    def epsilon_parts(self) -> dict[str, float]:
        """Max over clients of each kind of release on its own (the headline composes them, RDP)."""
        return {lv: max(self.client_epsilon((lv,)).values(), default=0.0) for lv in RECORD_LEVELS}

    @property
    def client_level_epsilon(self) -> float:
        """The run's client-level epsilon (DP-FedAvg), composed over every released round."""
        released = sorted((e for e in self.entries if e.level == "client"), key=lambda e: e.round)
        return released[-1].epsilon if released else 0.0

    def client_level_history(self) -> list[tuple[float, float, int]]:
        """The client-level mechanism's history, in Opacus's format."""
        released = sorted((e for e in self.entries if e.level == "client"), key=lambda e: e.round)
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in released]

    def epsilon_after_round(self, r: int) -> float:
        """The run's headline epsilon counting only releases of rounds ``<= r``."""
        by_client: dict[str, list[LedgerEntry]] = {}
        for e in self.entries:
            if e.round <= r and e.level != "client":
                by_client.setdefault(e.client, []).append(e)
        return max((compose_entries(v) for v in by_client.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Return the ledger as JSON-compatible data (entries in the order they were charged)."""
        entries = self.entries
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "dp": self.dp,
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": self.epsilon,
            "epsilon_parts": self.epsilon_parts(),
            "private": self.private,
            "insecure_seeded_noise": self.insecure_seeded_noise,
            "outside_guarantee": list(self.outside_guarantee),
            "caveats": self.caveats(),
            "client_level_epsilon": self.client_level_epsilon,
            "clients": dict(sorted(self.client_epsilon().items())),
            "entries": [dict(e.__dict__) for e in entries],  # asdict's deep copy, for flat entries, 10x faster
            "declines": sorted(self.declines, key=lambda d: (d["round"], d["client"])),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        """Rebuild a ledger written by :meth:`to_dict`."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a fedready ledger (format {data.get('format')!r}, expected {FORMAT!r})")
        return cls(
            run_id=data["run_id"],
            delta=data["delta"],
            target_epsilon=data["target_epsilon"],
            accountant=data["accountant"],
            dp=data["dp"],
            entries=[LedgerEntry(**e) for e in data["entries"]],
            declines=list(data["declines"]),
            insecure_seeded_noise=bool(data.get("insecure_seeded_noise", False)),
            outside_guarantee=list(data.get("outside_guarantee", [])),
        )

    def save(self, path: Path, *, data: dict[str, Any] | None = None) -> None:
        """Write the ledger atomically (whole or not at all) and durably; ``data``: its :meth:`to_dict`, when
        the caller has it."""
        data = self.to_dict() if data is None else data
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read a ledger file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def compose_entries(entries: list[LedgerEntry]) -> float:
    """Epsilon of a sequence of releases by one party, from their recorded parameters alone.

    Gaussian releases compose with the recorded Opacus accountant (RDP, Mironov 2017: the
    Renyi divergences of the count, training and query releases add up order by order);
    ``laplace`` releases (pure DP with ``noise_multiplier = 1 / epsilon``) add up (basic
    composition, Dwork and Roth 2014, Thm. 3.16), as does the sum of the two parts.
    """
    gauss = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries if e.accountant != "laplace"]
    pure = sum(e.steps / e.noise_multiplier for e in entries if e.accountant == "laplace")
    if not gauss:
        return float(pure)
    accountants = {e.accountant for e in entries if e.accountant != "laplace"}
    return pure + compose_epsilon(gauss, delta=entries[-1].delta, accountant=sorted(accountants)[0])


def recompute(ledger: Ledger) -> dict[str, list[tuple[int, float]]]:
    """Recompute every entry's epsilon from its recorded parameters alone.

    Returns
    -------
    dict
        client -> list of (round, epsilon) in the order recorded, computed with Opacus's
        accountant from ``(noise_multiplier, sample_rate, steps)`` of every release about
        that client's rows up to each entry.
    """
    by_client: dict[str, list[LedgerEntry]] = {}
    for e in ledger.entries:
        # client-level releases are keyed "*" (the whole federation's mechanism)
        by_client.setdefault(e.client, []).append(e)
    out: dict[str, list[tuple[int, float]]] = {}
    for client, entries in by_client.items():
        out[client] = [(e.round, compose_entries(entries[: i + 1])) for i, e in enumerate(entries)]
    return out
