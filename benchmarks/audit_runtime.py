"""Runtime of ``fedready audit-privacy`` at each level beside the plain run, on the default configuration.

    python benchmarks/audit_runtime.py --repeat 1

Runs ``fedready simulate`` (the baseline) and ``fedready audit-privacy --level client``,
``--level sample`` and ``--level both`` with the same (default) options, alternating, and prints one
JSON document: the median wall time of each command (Ray start-up included), its ratio to the plain
run, and each audit's bound and accounted epsilon.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FEDREADY = [sys.executable, "-m", "fedready.cli"]


def _timed(args: list[str]) -> tuple[float, dict]:
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    try:
        out = subprocess.run([*FEDREADY, *args], capture_output=True, text=True, timeout=7200, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])}: exit {out.returncode}: {out.stderr.strip()[-1500:]}")
    return seconds, json.loads(out.stdout[out.stdout.index("{") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="alternating repetitions of the three commands")
    ap.add_argument("--rounds", type=int, default=None, help="server rounds (default: the default, 50)")
    args = ap.parse_args()
    options = ["--rounds", str(args.rounds)] if args.rounds else []
    modes = ("client", "sample", "both")
    runs: dict[str, list[float]] = {"plain": [], **{m: [] for m in modes}}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fr-bench-audit-") as out:
        for i in range(args.repeat):
            s, summary = _timed(["simulate", *options, "--out", out, "--name", f"plain-{i}", "--json"])
            runs["plain"].append(s)
            last["plain"] = summary
            for level in modes:
                s, audit = _timed(["audit-privacy", "--level", level, *options, "--out", out, "--name",
                                   f"{level}-{i}", "--json"])  # fmt: skip
                runs[level].append(s)
                last[level] = audit
                print(f"[{i + 1}/{args.repeat}] {level} {s:.0f} s", file=sys.stderr, flush=True)
    plain = statistics.median(runs["plain"])

    def audits(mode: str) -> dict[str, dict]:  # --level both prints the reports by level
        return last[mode] if mode == "both" else {mode: last[mode]}

    results = {
        "rounds": last["plain"]["rounds"], "clients": last["plain"]["clients"], "repeat": args.repeat,
        "plain_s": round(plain, 1), "plain_epsilon": last["plain"]["epsilon"],
        "levels": [{"level": m, "seconds": round(statistics.median(runs[m]), 1),
                    "vs_plain": round(statistics.median(runs[m]) / plain, 2),
                    "runs_s": [round(x, 1) for x in runs[m]],
                    "audits": {lv: {"bound": round(a["epsilon_lower_bound"], 3), "accounted": a["accounted"]["epsilon"],
                                    "canaries": a["canaries"], "extra": a["cost"]["extra"]}
                               for lv, a in audits(m).items()}} for m in modes],
    }  # fmt: skip
    results["plain_runs_s"] = [round(x, 1) for x in runs["plain"]]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
