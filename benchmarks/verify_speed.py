"""Verifying a signed 100 MB artifact vs ``sha256sum`` of the same bytes, in one run.

    python benchmarks/verify_speed.py [--size-mb 100] [--repeat 3]

Builds an artifact from an untrained demo model plus a ``weights.bin`` of random bytes (so the
artifact totals the requested size), signs it, then times ``fedready.registry.verify_artifact``
(signature check + sha256 of every file) and ``sha256sum`` over exactly the same files, best of
``--repeat`` each with warm page cache. Prints JSON; ``ratio`` = sha256sum time / verify time,
so 1.0 means as fast as sha256sum (target: >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from fedready.registry import generate_keys, package_run, verify_artifact
from fedready.registry._artifact import SIGNATURE_FILE, sign_artifact
from fedready.registry._demo import write_demo_run


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fr-verify-"))
    try:
        priv, pub = generate_keys(tmp / "keys")
        art, _ = package_run(write_demo_run(tmp / "run"), key=priv, version="1.0.0", out=tmp / "artifacts")
        small = sum(p.stat().st_size for p in art.iterdir() if p.name != SIGNATURE_FILE)
        with (art / "weights.bin").open("wb") as f:
            left = int(args.size_mb * 1e6) - small
            while left > 0:
                f.write(os.urandom(min(left, 1 << 22)))
                left -= 1 << 22
        sign_artifact(art, key=priv)
        files = sorted(str(p) for p in art.iterdir() if p.name != SIGNATURE_FILE)
        total = sum(os.path.getsize(p) for p in files)
        verify_artifact(art, public_key=pub)  # warm the cache and the imports
        t_verify = _best(lambda: verify_artifact(art, public_key=pub), args.repeat)
        t_sum = _best(lambda: subprocess.run(["sha256sum", *files], check=True, capture_output=True), args.repeat)
        print(json.dumps({"bytes": total, "verify_s": round(t_verify, 4), "sha256sum_s": round(t_sum, 4),
                          "verify_mb_per_s": round(total / t_verify / 1e6, 1),
                          "sha256sum_mb_per_s": round(total / t_sum / 1e6, 1),
                          "ratio": round(t_sum / t_verify, 3)}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
