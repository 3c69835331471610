"""Where a round's time goes: one default ``fedready simulate``, private and non-private, phase by phase.

    python benchmarks/profile_round.py                 # the default run (10 clients, 50 rounds), DP and --no-dp
    python benchmarks/profile_round.py --repeat 2 -- --rounds 20   # extra arguments go to both runs

Each run is ``fedready simulate`` in a fresh process tree with ``FEDREADY_PROFILE`` set
(:mod:`fedready.profiling`): the server and every client append one line per timed phase. The two
configurations alternate ``--repeat`` times. Reported, per configuration:

* client phases: the median over every (client, round) of the seconds one client spends in each
  phase of its round (config and wire decoding, state load with the budget check, engine set-up,
  Poisson sampling, forward and backward, the optimiser step, the noise draw, the state write,
  the reply's encoding);
* server phases: the median over rounds of each phase of the server's round (sampling and
  configuring, waiting for the clients, triage and ledger, validation, aggregation, holdout
  evaluation, the metrics line, the checkpoint, the audit log);
* the whole command's wall time, the rounds' total, and the rest (Ray's start-up and shutdown,
  the configuration check, the post-training queries and the summary).

Prints JSON (the last line) and, with ``--markdown``, the tables BENCHMARKS.md shows.
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
from collections import defaultdict
from pathlib import Path

FEDREADY = shutil.which("fedready") or str(Path(sys.executable).parent / "fedready")
CLIENT_ORDER = [
    "config and wire decoding", "state-load, count, budget check", "model build and load", "engine-setup",
    "sampling", "forward-backward", "step (clip, update)", "noise", "charge, epsilon, metrics", "state write",
    "wire (reply encoding)",
]  # fmt: skip


def run_profiled(extra: list[str], *, dp: bool, work: Path, i: int) -> dict:
    """One ``fedready simulate`` with profiling on: its phases, round seconds and wall time."""
    prof = work / f"profile-{'dp' if dp else 'plain'}-{i}.jsonl"
    name = f"{'dp' if dp else 'plain'}-{i}"
    cmd = [FEDREADY, "simulate", *([] if dp else ["--no-dp"]), *extra, "--out", str(work / "runs"), "--name", name,
           "--json"]  # fmt: skip
    env = {**os.environ, "FEDREADY_PROFILE": str(prof)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=7200)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    metrics = [json.loads(x) for x in (work / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    lines = [json.loads(x) for x in prof.read_text().splitlines()]
    shutil.rmtree(work / "runs" / name, ignore_errors=True)
    shutil.rmtree(work / "runs" / f"{name}.clients", ignore_errors=True)
    return {"wall": wall, "round_seconds": [m["seconds"] for m in metrics], "lines": lines,
            "accuracy": summary.get("accuracy"), "epsilon": summary.get("epsilon")}  # fmt: skip


def tabulate(runs: list[dict]) -> dict:
    """Median seconds per phase: clients per (client, round), the server per round; whole-run totals."""
    client: dict[str, list[float]] = defaultdict(list)
    server: dict[str, list[float]] = defaultdict(list)
    once: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        per_client_round: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for ln in r["lines"]:
            if ln["side"] == "client":
                per_client_round[(ln["round"], ln["client"])][ln["phase"]] += ln["seconds"]
            elif ln["round"]:
                server[ln["phase"]].append(ln["seconds"])
            else:
                once[ln["phase"]].append(ln["seconds"])
        for phases in per_client_round.values():
            for phase in CLIENT_ORDER:
                if phase in phases or phase != "noise":
                    client[phase].append(phases.get(phase, 0.0))
    med = lambda xs: statistics.median(xs) if xs else 0.0  # noqa: E731
    client_ms = {p: round(1000 * med(client[p]), 3) for p in CLIENT_ORDER if client.get(p)}
    server_ms = {p: round(1000 * med(v), 3) for p, v in server.items()}
    return {
        "client_ms": client_ms,
        "client_total_ms": round(sum(client_ms.values()), 3),
        "server_ms": server_ms,
        "round_s": round(med([s for r in runs for s in r["round_seconds"]]), 4),
        "rounds_total_s": round(med([sum(r["round_seconds"]) for r in runs]), 2),
        "once_s": {p: round(med(v), 3) for p, v in once.items()},
        "wall_s": round(med([r["wall"] for r in runs]), 2),
        "accuracy": runs[-1]["accuracy"],
        "epsilon": runs[-1]["epsilon"],
    }


def markdown(res: dict) -> str:
    dp, plain = res["dp"], res["plain"]
    rows = ["| client phase (one client, one round) | private ms | non-private ms (baseline) |", "|---|---|---|"]
    for p in CLIENT_ORDER:
        if p in dp["client_ms"] or p in plain["client_ms"]:
            rows.append(f"| {p} | {dp['client_ms'].get(p, '-')} | {plain['client_ms'].get(p, '-')} |")
    rows.append(f"| **a client's round** | {dp['client_total_ms']} | {plain['client_total_ms']} |")
    out = "\n".join(rows) + "\n\n"
    rows = ["| server phase (one round) | private ms | non-private ms (baseline) |", "|---|---|---|"]
    for p in dict.fromkeys([*dp["server_ms"], *plain["server_ms"]]):
        rows.append(f"| {p} | {dp['server_ms'].get(p, '-')} | {plain['server_ms'].get(p, '-')} |")
    rows.append(f"| **a round (median)** | {1000 * dp['round_s']:.1f} | {1000 * plain['round_s']:.1f} |")
    out += "\n".join(rows) + "\n\n"
    rows = ["| whole run | private s | non-private s (baseline) |", "|---|---|---|",
            f"| all rounds | {dp['rounds_total_s']} | {plain['rounds_total_s']} |"]  # fmt: skip
    for p in dict.fromkeys([*dp["once_s"], *plain["once_s"]]):
        rows.append(f"| {p} | {dp['once_s'].get(p, '-')} | {plain['once_s'].get(p, '-')} |")
    rows.append(f"| **the whole command (wall)** | {dp['wall_s']} | {plain['wall_s']} |")
    return out + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs of each configuration")
    ap.add_argument("--markdown", action="store_true", help="also print the tables")
    ap.add_argument("extra", nargs="*", help="arguments for both `fedready simulate` runs (after --)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fr-prof-"))
    runs: dict[str, list[dict]] = {"dp": [], "plain": []}
    try:
        for i in range(args.repeat):
            runs["dp"].append(run_profiled(args.extra, dp=True, work=work, i=i))
            runs["plain"].append(run_profiled(args.extra, dp=False, work=work, i=i))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res = {k: tabulate(v) for k, v in runs.items()}
    res["dp_round_ratio"] = round(res["dp"]["round_s"] / res["plain"]["round_s"], 3)
    res["args"], res["repeat"] = args.extra, args.repeat
    if args.markdown:
        print(markdown(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
