"""Time the fp32 ONNX teacher and every compressed variant side by side, in one run.

Usage: python benchmarks/compression_latency.py RUN [--repeats 5]

Reads ``RUN/compression/*.onnx`` (written by ``fedready compress RUN``) and times each model
with ONNX Runtime on the CPU (one intra-op thread, as on a small device): latency per example
at batch 1 (p50, p95) and throughput at batch 256. The models are timed in interleaved
rounds (fp32, v1, v2, ..., fp32, v1, ...) so that other load on the machine hits all of them
alike; the figures are medians over the rounds, and every variant is also shown as a ratio
to fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from fedready.compression.measure import measure_speed
from fedready.task import load_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    folder = args.run / "compression"
    report = json.loads((folder / "compression.json").read_text())
    models = {v["name"]: (folder / v["file"]).read_bytes() for v in report["variants"]}
    x = load_task().x_test
    x = x[np.random.default_rng(0).permutation(len(x))[:2000]]
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, data in models.items():
            runs[name].append(measure_speed(data, x))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    base = med["fp32"]
    print(f"# {platform.processor() or platform.machine()}, onnxruntime, 1 thread, median of {args.repeats} rounds")
    cols = ("KB", "p50 us", "p95 us", "rows/s", "p50/fp32", "rows/s/fp32")
    print(f"{'variant':40}" + "".join(f" {c:>11}" for c in cols))
    for name, m in med.items():
        kb = len(models[name]) / 1024
        print(
            f"{name:40} {kb:11.1f} {m['p50_us']:11.1f} {m['p95_us']:11.1f} {m['rows_per_s']:11,.0f} "
            f"{m['p50_us'] / base['p50_us']:11.2f} {m['rows_per_s'] / base['rows_per_s']:11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
