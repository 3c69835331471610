"""What a variant costs and saves: bytes, parameters, CPU latency and throughput with ONNX Runtime."""

from __future__ import annotations

import time

import numpy as np

from fedready.compression.export import INPUT, PROBABILITIES, session

__all__ = ["Speed", "measure_speed"]


class Speed(dict):
    """``p50_us``, ``p95_us`` at batch 1 and ``rows_per_s`` at batch 256."""


def measure_speed(model: bytes, x: np.ndarray, *, single: int = 400, batches: int = 40, batch: int = 256) -> Speed:
    """Time ``single`` batch-1 calls (p50, p95 in microseconds) and ``batches`` calls at ``batch`` rows.

    Rows cycle through ``x`` so that every call sees real inputs; a few warm-up calls go first.
    """
    sess = session(model)
    x = np.ascontiguousarray(x, dtype=np.float32)
    for i in range(20):
        sess.run([PROBABILITIES], {INPUT: x[i : i + 1]})
    times = np.empty(single)
    for i in range(single):
        row = x[i % len(x) : i % len(x) + 1]
        t = time.perf_counter_ns()
        sess.run([PROBABILITIES], {INPUT: row})
        times[i] = (time.perf_counter_ns() - t) / 1e3
    reps = max(1, -(-batch // len(x)))
    big = np.ascontiguousarray(np.tile(x, (reps, 1))[:batch])
    sess.run([PROBABILITIES], {INPUT: big})
    t = time.perf_counter()
    for _ in range(batches):
        sess.run([PROBABILITIES], {INPUT: big})
    elapsed = time.perf_counter() - t
    return Speed(
        p50_us=float(np.percentile(times, 50)),
        p95_us=float(np.percentile(times, 95)),
        rows_per_s=batches * batch / elapsed,
    )
