"""Opt-in timing of a run's phases, for ``benchmarks/profile_round.py``: off unless asked for.

Set ``FEDREADY_PROFILE`` to a file path before a run starts (Ray's workers inherit the environment)
and every timed phase appends one JSON line to it: ``{"side", "phase", "round", "client",
"seconds", "pid"}``. Each line is one ``write`` on a file opened with ``O_APPEND`` and is far under
``PIPE_BUF``, so the server and every client process can append to the same file at once.

Nothing here reads or records data: only phase names, round numbers, client ids and durations.
Durations still follow the data loosely (a client's sampling and training time grow with its Poisson
batches, so with its row count): a profile stays on the machine that wrote it, like any log. With the
variable unset, :func:`span` costs one branch; a file that cannot be written is skipped, never an error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["ENV", "Laps", "enabled", "mark", "record", "span"]

ENV = "FEDREADY_PROFILE"
_PATH = os.environ.get(ENV) or None
_IMPORTED = time.perf_counter()


def enabled() -> bool:
    """Whether this process records phases (``FEDREADY_PROFILE`` was set when fedready was imported)."""
    return _PATH is not None


def record(side: str, phase: str, seconds: float, *, round: int = 0, client: str | int = "") -> None:  # noqa: A002
    """Append one phase's duration (no-op when profiling is off)."""
    if _PATH is None:
        return
    line = json.dumps({"side": side, "phase": phase, "round": int(round), "client": str(client),
                       "seconds": round_(seconds), "pid": os.getpid()}) + "\n"  # fmt: skip
    try:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:  # a profile that cannot be written never fails a run
        return
    try:
        os.write(fd, line.encode("utf-8"))
    except OSError:
        pass
    finally:
        os.close(fd)


def mark(side: str, phase: str) -> None:
    """Record the seconds since fedready was first imported in this process (when a stage starts)."""
    record(side, phase, time.perf_counter() - _IMPORTED)


def round_(seconds: float) -> float:
    return float(f"{seconds:.6g}")


@contextmanager
def span(side: str, phase: str, *, round: int = 0, client: str | int = "") -> Iterator[None]:  # noqa: A002
    """Time the ``with`` block as one phase (no-op when profiling is off)."""
    if _PATH is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record(side, phase, time.perf_counter() - t0, round=round, client=client)


class Laps:
    """Consecutive phases of one round: each call records the time since the previous one.

    ``inner`` (optional) returns a running total of seconds spent in a sub-phase that happens inside
    several phases (the audit log's appends): each lap records its time without it, and
    :meth:`close` records the sub-phase's own share as ``inner_name``.
    """

    def __init__(self, side: str, *, round: int, inner: tuple[str, Callable[[], float]] | None = None) -> None:  # noqa: A002
        self.side, self.round, self.inner = side, round, inner
        self.t = time.perf_counter()
        self.inner_at = inner[1]() if inner else 0.0
        self.inner_total = 0.0

    def __call__(self, phase: str) -> None:
        if _PATH is None:
            return
        now = time.perf_counter()
        inner = 0.0
        if self.inner is not None:
            total = self.inner[1]()
            inner, self.inner_at = total - self.inner_at, total
            self.inner_total += inner
        record(self.side, phase, now - self.t - inner, round=self.round)
        self.t = now

    def close(self) -> None:
        if _PATH is not None and self.inner is not None:
            self("(rest)")
            record(self.side, self.inner[0], self.inner_total, round=self.round)
