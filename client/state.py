"""A client's own privacy state: every release about its rows, kept on its side.

Notes
-----
The state lives in Flower's per-node ``context.state`` (it survives from round to round)
and is mirrored to a file (:data:`STATE_FILE`) in a folder of the client's own (it survives a crash, a resume and, for a
deployed client, a relaunch of the same run). In simulation that folder is
``<run folder>.clients/<id>/``, beside the server's run folder and never inside it: it
holds the client's last released update, which under SecAgg+ the server must never hold.

Every release is recorded with its level (``count``, ``sample``, ``query``), round and DP
parameters, and replies carry the whole list (:meth:`ClientPrivacyState.wire_history`), so
the server's ledger charges releases it did not see arrive (a straggler's late update) as
soon as the client is heard from again.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from fedready import constants as K
from fedready.files import atomic_write_bytes
from fedready.modelio import load_npz, save_npz
from fedready.privacy.accounting import calibrate_with_releases, compose_epsilon
from fedready.privacy.randomness import dp_numpy_rng

__all__ = [
    "STATE_FILE", "ClientPrivacyState", "Release", "Store", "client_state_dir", "query_noise_split", "read_kept_reply",
    "read_state",
]

_STATE_KEY = "fedready.privacy"
LEVEL_CODES = {"count": 0, "sample": 1, "query": 2}  # on the wire (MetricRecord holds numbers only)


@dataclass(frozen=True)
class Release:
    """One release about this client's rows: its level, round and Gaussian parameters.

    A post-training answer whose summed counts carried a distributed-noise share
    (:mod:`fedready.privacy.distributed`) records ``shares`` (``t``: the share was ``1/t`` of the
    variance, whole in a secure sum of at least ``t``), ``share_std`` (the std it added to each summed
    count) and ``tau`` (KLS 2021's closeness term, included in ``noise``); ``noise`` is the Gaussian
    noise multiplier with the same Renyi curve as the whole answer, which is what is charged.
    """

    level: str
    round: int
    noise: float
    rate: float
    steps: int
    shares: int = 0
    share_std: float = 0.0
    tau: float = 0.0

    def step(self) -> tuple[float, float, int]:
        return (self.noise, self.rate, self.steps)


@dataclass
class ClientPrivacyState:
    """A client's own record of what it has released, and its noisy row count."""

    releases: list[Release] = field(default_factory=list)
    noisy_rows: int | None = None  # released once per run; FedAvg weight and sample rate come from it
    last_round: int = 0  # last round a training update was released for
    last_input_digest: str = ""  # global model that update was computed from
    # noise multipliers this client calibrated, by budget and plan: the search takes a fifth of a
    # second, and the simulation engine may hand the client to a different worker process each round
    calibrated: dict[str, float] = field(default_factory=dict)

    def history(self) -> list[tuple[float, float, int]]:
        """Every release, in Opacus's accountant-history format."""
        return [r.step() for r in self.releases]

    def training_rounds(self) -> list[int]:
        return [r.round for r in self.releases if r.level == "sample"]

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """This client's epsilon over every release so far (RDP composition)."""
        return compose_epsilon(self.history(), delta=delta, accountant=accountant)

    def noisy_count(self, n: int, *, noise_std: float, server_round: int,
                    insecure_seed: tuple[int, ...] | None = None) -> int:  # fmt: skip
        """The client's row count with Gaussian noise of std ``noise_std`` (drawn once, recorded).

        Notes
        -----
        Adding or removing one row changes the count by 1, so this is the Gaussian mechanism
        with noise multiplier ``noise_std``; its noise comes from OS entropy. The exact count
        never leaves the client: the FedAvg weight, the DP-SGD sample rate and the delta check
        are all computed from this noisy value (post-processing).
        """
        if self.noisy_rows is None:
            noisy = int(round(n + dp_numpy_rng(insecure_seed).normal(0.0, noise_std)))
            self.noisy_rows = max(1, noisy)
            self.releases.append(Release("count", server_round, float(noise_std), 1.0, 1))
        return self.noisy_rows

    def noise_for(self, *, epsilon: float, delta: float, rate: float, steps: int, accountant: str,
                  planned: list[tuple[float, float, int]]) -> float:  # fmt: skip
        """The DP-SGD noise meeting (epsilon, delta) over ``steps`` beside the ``planned`` other releases."""
        key = json.dumps([epsilon, delta, rate, steps, accountant, planned])
        if key not in self.calibrated:
            self.calibrated[key] = _calibrate(epsilon, delta, rate, steps, accountant, tuple(map(tuple, planned)))
        return self.calibrated[key]

    def wire_history(self) -> dict[str, list]:
        """Every release as parallel lists (MetricRecord values), for the server's ledger."""
        return {
            K.HISTORY_LEVEL: [LEVEL_CODES[r.level] for r in self.releases],
            K.HISTORY_ROUND: [int(r.round) for r in self.releases],
            K.HISTORY_NOISE: [float(r.noise) for r in self.releases],
            K.HISTORY_RATE: [float(r.rate) for r in self.releases],
            K.HISTORY_STEPS: [int(r.steps) for r in self.releases],
            **({K.HISTORY_SHARES: [int(r.shares) for r in self.releases]} if any(r.shares for r in self.releases)
               else {}),
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"releases": [r.__dict__ for r in self.releases], "noisy_rows": self.noisy_rows,
                "last_round": self.last_round, "last_input_digest": self.last_input_digest,
                "calibrated": self.calibrated}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientPrivacyState:
        return cls([Release(**r) for r in d["releases"]], d.get("noisy_rows"), int(d.get("last_round", 0)),
                   d.get("last_input_digest", ""), dict(d.get("calibrated", {})))  # fmt: skip


@lru_cache(maxsize=64)
def _calibrate(epsilon: float, delta: float, rate: float, steps: int, accountant: str,
               planned: tuple[tuple[float, float, int], ...]) -> float:  # fmt: skip
    return calibrate_with_releases(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps,
                                   releases=list(planned), accountant=accountant)  # fmt: skip


def query_noise_split(noise_multiplier: float, accuracy_share: float, *, accuracy: bool,
                      sum_vectors: int) -> tuple[float, float]:  # fmt: skip
    """Noise stds of a post-training answer: (on each accuracy count, on each cell of the summed vectors).

    The answer is one Gaussian release of equivalent noise multiplier ``noise_multiplier``: one row
    changes each of its ``sum_vectors`` count vectors (group confusion tables, profile histograms)
    in one cell, and one of the two accuracy counts (``val-correct``, ``val-wrong``), each by 1.
    With per-part stds ``s_a`` and ``s_s`` its Renyi divergence is that of a Gaussian mechanism with
    ``1 / z^2 = 1 / s_a^2 + sum_vectors / s_s^2``; ``accuracy_share`` of that ``1 / z^2`` goes to
    the accuracy counts, which only a per-client answer can give (the sums are needed only
    summed over clients, where ``m`` clients' noise averages out).

    Notes
    -----
    Heterogeneous Gaussian noise on the coordinates of a vector query: Mironov 2017 (Renyi DP,
    Proposition 7, additivity over the coordinates' divergences).
    """
    z = noise_multiplier
    if accuracy and sum_vectors:
        return z / math.sqrt(accuracy_share), z * math.sqrt(sum_vectors / (1.0 - accuracy_share))
    if accuracy:
        return z, 0.0
    return 0.0, z * math.sqrt(max(1, sum_vectors))


def client_state_dir(run_dir: str | Path | None, partition_id: int) -> Path | None:
    """Where a simulated client keeps its state: beside the server's run folder, never inside it."""
    if not run_dir:
        return None
    run = Path(run_dir)
    return run.with_name(run.name + ".clients") / str(partition_id)


STATE_FILE = "state.npz"  # the client's record and its last released reply, in one file
_STATE_ENTRY, _METRICS_ENTRY, _REPLY_PREFIX = "state.json", "reply-metrics.json", "reply:"


def _json_entry(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _read_entry(arr: np.ndarray) -> Any:
    return json.loads(arr.tobytes().decode("utf-8"))


def _read_entries(folder: Path) -> dict[str, np.ndarray] | None:
    """The entries of the state file in ``folder`` (None if there is none yet)."""
    path = folder / STATE_FILE
    if path.exists():
        return load_npz(path.read_bytes())
    legacy = folder / "state.json"  # written by fedready before 2026-12-08: three files
    if legacy.exists():
        entries = {_STATE_ENTRY: _json_entry(json.loads(legacy.read_text()))}
        if (folder / "last_update.npz").exists() and (folder / "last_metrics.json").exists():
            arrays = load_npz((folder / "last_update.npz").read_bytes())
            entries |= {_REPLY_PREFIX + k: v for k, v in arrays.items()}
            entries[_METRICS_ENTRY] = _json_entry(json.loads((folder / "last_metrics.json").read_text()))
        return entries
    return None


class Store:
    """Client state in a folder on the client's disk (the record), mirrored in ``context.state``.

    Two messages for the same client can be handled at once (a straggler's round and the next
    one, a query): :meth:`locked` serialises them, so each release is checked against, and
    recorded on top of, every earlier one.

    Notes
    -----
    Durability: the record of releases is what must survive a crash. A release the client forgot
    would let it spend its budget again, so the record reaches the disk (``fsync``) before the
    reply carrying the release leaves the client. The reply itself is kept beside the record, in
    the same file (:data:`STATE_FILE`): a relaunched client asked again for a round it already
    answered replays that reply instead of releasing a second one, and record and reply can never
    disagree, because they are written together, once per round, whole or not at all.
    """

    def __init__(self, context: Context, folder: Path | None) -> None:
        self.context = context
        self.folder = folder

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the client's state lock (an exclusive ``flock`` on ``folder/.lock``) for a whole release."""
        if self.folder is None:
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> dict[str, np.ndarray] | None:
        return None if self.folder is None else _read_entries(self.folder)

    def load(self) -> ClientPrivacyState:
        entries = self._read()
        if entries is not None:
            return ClientPrivacyState.from_dict(_read_entry(entries[_STATE_ENTRY]))
        rec = self.context.state.get(_STATE_KEY)
        if rec is not None:
            return ClientPrivacyState.from_dict(json.loads(str(rec["json"])))
        return ClientPrivacyState()

    def save(self, state: ClientPrivacyState, reply: tuple[dict[str, np.ndarray], dict] | None = None) -> None:
        """Save the state with the reply it released (or, without ``reply``, the reply already kept)."""
        blob = json.dumps(state.to_dict(), sort_keys=True)
        self.context.state[_STATE_KEY] = ConfigRecord({"json": blob})
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = {_STATE_ENTRY: np.frombuffer(blob.encode("utf-8"), dtype=np.uint8)}
        if reply is not None:
            entries |= {_REPLY_PREFIX + k: np.asarray(v) for k, v in reply[0].items()}
            entries[_METRICS_ENTRY] = _json_entry(reply[1])
        else:  # the reply kept so far still belongs to the record's last round
            old = self._read() or {}
            entries |= {k: v for k, v in old.items() if k != _STATE_ENTRY}
        atomic_write_bytes(self.folder / STATE_FILE, save_npz(entries))  # one write, one fsync

    def cached_reply(self) -> tuple[dict[str, np.ndarray], dict] | None:
        return None if self.folder is None else read_kept_reply(self.folder)

    def state_file(self) -> Path | None:
        """Where the record is (None for a client that keeps it only in ``context.state``)."""
        return None if self.folder is None else self.folder / STATE_FILE


def read_state(folder: Path) -> ClientPrivacyState | None:
    """The record a client keeps in ``folder`` (None if it holds none)."""
    raw = _read_entries(Path(folder))
    return None if raw is None else ClientPrivacyState.from_dict(_read_entry(raw[_STATE_ENTRY]))


def read_kept_reply(folder: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """The last reply a client released and keeps in ``folder`` (its update's arrays and metrics), or None."""
    raw = _read_entries(Path(folder))
    if raw is None or _METRICS_ENTRY not in raw:
        return None
    arrays = {k.removeprefix(_REPLY_PREFIX): v for k, v in raw.items() if k.startswith(_REPLY_PREFIX)}
    return arrays, _read_entry(raw[_METRICS_ENTRY])
