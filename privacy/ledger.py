"""The per-run privacy ledger: every client's spending, round by round.

The ledger records, for each client and each round it trained in, the noise
multiplier, sample rate, steps, accountant, delta and the epsilon spent so far
(composed over all of that client's rounds). The run's reported epsilon is the
maximum over clients. :func:`recompute` rebuilds every number from the recorded
parameters with Opacus's accountant alone, so anyone can audit the ledger.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedready._io import atomic_write_text
from fedready.privacy.accounting import compose_epsilon

__all__ = ["Ledger", "LedgerEntry", "compose_entries", "recompute"]

FORMAT = "fedready-ledger/1"


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
    epsilon: float  # composed over this client's rounds up to and including this one
    level: str = "sample"  # "sample" (DP-SGD on records), "client" (DP-FedAvg) or "profile" (monitoring counts)


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

    def record(self, entry: LedgerEntry) -> None:
        """Append one client's spending for one round."""
        self.entries.append(entry)

    def record_decline(self, *, round: int, client: str, reason: str, detail: str) -> None:  # noqa: A002
        """Record that a client declined a round (it spent nothing)."""
        self.declines.append({"round": round, "client": client, "reason": reason, "detail": detail})

    def truncate(self, last_round: int) -> None:
        """Drop everything recorded after ``last_round`` (used when resuming)."""
        self.entries = [e for e in self.entries if e.round <= last_round]
        self.declines = [d for d in self.declines if d["round"] <= last_round]

    def client_epsilon(self) -> dict[str, float]:
        """Return each client's sample-level epsilon spent so far (its latest entry)."""
        out: dict[str, float] = {}
        for e in sorted(self.entries, key=lambda e: e.round):
            if e.level == "sample":
                out[e.client] = e.epsilon
        return out

    @property
    def epsilon(self) -> float:
        """The run's sample-level epsilon: the maximum over clients (0 before any training)."""
        return max(self.client_epsilon().values(), default=0.0)

    @property
    def client_level_epsilon(self) -> float:
        """The run's client-level epsilon (DP-FedAvg), composed over every released round."""
        released = sorted((e for e in self.entries if e.level == "client"), key=lambda e: e.round)
        return released[-1].epsilon if released else 0.0

    def client_level_history(self) -> list[tuple[float, float, int]]:
        """The client-level mechanism's history, in Opacus's format."""
        released = sorted((e for e in self.entries if e.level == "client"), key=lambda e: e.round)
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in released]

    @property
    def profile_epsilon(self) -> float:
        """Epsilon spent on reference profiles (monitoring), composed over every release (0 if none)."""
        released = [e for e in self.entries if e.level == "profile"]
        return compose_entries(released) if released else 0.0

    def epsilon_after_round(self, r: int) -> float:
        """The run's sample-level epsilon counting only rounds ``<= r``."""
        best: dict[str, float] = {}
        for e in self.entries:
            if e.round <= r and e.level == "sample":
                best[e.client] = max(best.get(e.client, 0.0), e.epsilon)
        return max(best.values(), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """Return the ledger as JSON-compatible data (sorted for stable output)."""
        entries = sorted(self.entries, key=lambda e: (e.round, e.client))
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "dp": self.dp,
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "epsilon": self.epsilon,
            "client_level_epsilon": self.client_level_epsilon,
            "profile_epsilon": self.profile_epsilon,
            "clients": dict(sorted(self.client_epsilon().items())),
            "entries": [asdict(e) for e in entries],
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
        )

    def save(self, path: Path) -> None:
        """Write the ledger atomically (whole or not at all)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read a ledger file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def compose_entries(entries: list[LedgerEntry]) -> float:
    """Epsilon of a sequence of releases by one party, from their recorded parameters alone.

    Gaussian releases compose with the recorded Opacus accountant; ``laplace`` releases
    (monitoring profiles, pure DP with ``noise_multiplier = 1 / epsilon``) add up (basic
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
        client -> list of (round, epsilon) in round order, computed with Opacus's
        accountant from ``(noise_multiplier, sample_rate, steps)`` of that client's
        entries up to each round.
    """
    by_client: dict[str, list[LedgerEntry]] = {}
    for e in sorted(ledger.entries, key=lambda e: e.round):
        # client-level releases are keyed "*" (the whole federation's mechanism)
        by_client.setdefault(e.client, []).append(e)
    out: dict[str, list[tuple[int, float]]] = {}
    for client, entries in by_client.items():
        out[client] = [(e.round, compose_entries(entries[: i + 1])) for i, e in enumerate(entries)]
    return out
