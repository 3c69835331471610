"""A data holder's own privacy limits and its lifetime ledger, kept on its premises.

Notes
-----
The coordinator asks for a budget per run; the client enforces its own limits on top,
whatever the coordinator asks. Every update this client has ever released, in any run,
is recorded in its local ledger as ``(noise_multiplier, sample_rate, steps)`` and the
lifetime epsilon is composed over all of them (sequential composition holds across
runs on the same data; RDP composes them tightly, Mironov 2017, arXiv:1702.07476).
Before each round the client projects the lifetime epsilon after that round and
declines with ``budget-exhausted`` if it would exceed ``max_epsilon``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedready.constants import LEDGER_FILE
from fedready.errors import ConfigError
from fedready.files import atomic_write_text, read_toml
from fedready.privacy.accounting import compose_epsilon

__all__ = ["LocalLedger", "LocalLimits", "Release", "load_limits"]

FORMAT = "fedready-local-ledger/1"


class LocalLimits(BaseModel):
    """A client's local limits file (TOML); relative paths are resolved against its folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epsilon: float = Field(gt=0)  # lifetime epsilon over every run, at max_delta
    max_delta: float = Field(gt=0, lt=1)  # largest delta the client accepts (accounting uses it)
    accountant: str = "rdp"  # how the lifetime ledger is composed
    ledger: Path = Path(LEDGER_FILE)  # lifetime ledger (kept across runs)
    audit_log: Path = Path("audit.jsonl")  # the client's signed, hash-chained audit log (its key: audit.key beside it)
    state_dir: Path = Path("state")  # per-run accountant state and the last released update
    share_contract_report: bool = False  # tell the coordinator which contract checks failed (outside the guarantee)
    # Loosening run-config keys (fedready.config.RUN_CONFIG_KEYS) this organisation accepts from a coordinator.
    # Each is off by default: a run asking for one is refused with `local-privacy-limit`.
    allow_insecure_seeded_noise: bool = False  # noise derived from the coordinator's --seed: NO guarantee
    allow_exact_evaluation: bool = False  # exact group counts on the validation rows (outside the guarantee)
    allow_release_train_loss: bool = False  # the exact training loss each round (outside the guarantee)
    # Under SecAgg+, add only a 1/t share of the noise on the counts that are only ever summed. The secure sum
    # carries the whole only if at least t of its clients are HONEST: a colluding client's share is known to the
    # coordinator, so n clients with c colluding leave (n - c) s^2 / t (t = clients asked - c tolerates c
    # colluders). Off: this client adds the whole noise itself, whatever the run asks. On, its guarantee against a
    # coordinator that breaks SecAgg+ or colludes with more than n - t clients is that of the honest shares alone.
    allow_distributed_noise: bool = False


def load_limits(path: str | Path) -> LocalLimits:
    """Read a limits TOML file.

    Raises
    ------
    ConfigError
        If the file is missing or invalid.
    """
    p = Path(path)
    raw = read_toml(
        p, field="limits", missing=f"file {p} does not exist; write e.g. max_epsilon = 1.0, max_delta = 1e-5"
    )
    try:
        limits = LocalLimits.model_validate({k.replace("-", "_"): v for k, v in raw.items()})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError("limits", f"{p}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from e
    base = p.resolve().parent
    return limits.model_copy(update={k: base / getattr(limits, k) for k in ("ledger", "audit_log", "state_dir")})


@dataclass(frozen=True)
class Release:
    """One update the client released: its DP-SGD parameters."""

    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float  # lifetime epsilon after this release, at the limits' delta
    level: str = "sample"  # count | sample | query (fedready.client.state)


class LocalLedger:
    """The lifetime ledger file: every release of this client, in every run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.releases: list[Release] = []
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ConfigError(
                    "ledger", f"{self.path} is not a fedready local ledger (format {data.get('format')!r})"
                )
            self.releases = [Release(**r) for r in data["releases"]]

    def releases_of(self, run: str) -> list[Release]:
        """The releases made in ``run`` (a relaunched run continues its own)."""
        return [r for r in self.releases if r.run == run]

    def history(self) -> list[tuple[float, float, int]]:
        """Every release in Opacus's accountant-history format."""
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]

    def epsilon(self, *, delta: float, accountant: str, extra: list[tuple[float, float, int]] | None = None) -> float:
        """Lifetime epsilon, optionally with planned releases ``extra`` on top."""
        history = self.history() + list(extra or [])
        return compose_epsilon(history, delta=delta, accountant=accountant) if history else 0.0

    def record(self, release: Release) -> None:
        """Append one release and write the file (whole or not at all)."""
        self.releases.append(release)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def to_dict(self) -> dict[str, Any]:
        """The ledger as JSON-compatible data."""
        return {"format": FORMAT, "releases": [asdict(r) for r in self.releases]}
