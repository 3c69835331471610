"""Run every benchmark and write ``BENCHMARKS.md`` (generated; do not edit it by hand).

    python benchmarks/run_all.py            # quick: about 10 minutes on 2 cores
    python benchmarks/run_all.py --full     # adds 10 rounds at 1,000 and 10,000 clients (about 16 minutes)

Each benchmark runs as its own process (``benchmarks/<name>.py``) and measures its figures beside
a baseline taken in the same run (alternating repetitions), so load from other processes hits
both sides alike. The report records the machine, CPU, the versions of Python, torch, Opacus,
Flower and ONNX Runtime, the date and the exact command of every figure. A benchmark that fails
is reported as failed, with its error, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
FEDREADY = str(Path(sys.executable).parent / "fedready")


def _run(cmd: list[str], *, timeout: float = 7200) -> tuple[str, float]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {out.stderr.strip()[-1500:]}")
    return out.stdout, time.perf_counter() - t


def _json(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{") :])


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "opacus", "flwr", "onnxruntime", "ray"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cmd(cmd: list[str]) -> str:
    def short(c: str) -> str:
        if c in (PY, FEDREADY):
            return "python" if c == PY else "fedready"
        if c.startswith(tempfile.gettempdir()):
            return "TEACHER_RUN"  # a temporary run folder, gone after the benchmark
        return c.replace(str(ROOT) + "/", "").replace(PY, "python").replace(FEDREADY, "fedready")

    return " ".join(short(c) for c in cmd)


def section_dp(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "dp_overhead.py"), "--repeat", "9" if full else "5"]
    data = _json(_run(cmd)[0])
    fed, client = data["federated_round"], data["client_round"]
    mlp = next(r for r in data["results"] if r["model"] == "mlp")
    levels = [
        ["a federated round of `fedready simulate` (10 clients, rounds 2-10, median)", f"{fed['non_private_s']} s",
         f"{fed['dp_s']} s", fed["ratio"]],
        ["a client's whole round (`local_update`, 10 clients x 5 rounds, median)", f"{client['non_private_ms']} ms",
         f"{client['dp_ms']} ms", client["ratio"]],
        ["the local training loop alone (`train`, ghost clipping)", f"{mlp['non_private_ms']} ms",
         f"{mlp['dp_ghost_ms']} ms", mlp["ratio_ghost"]],
    ]  # fmt: skip
    text = "Default MLP, private (DP-SGD, the default budget) vs non-private, same data, steps and learning rate:\n\n"
    text += _table(["level", "non-private (baseline)", "private", "private / non-private"], levels)
    rows = [[r["model"], f"{r['parameters']:,}", r["steps"], r["batch"], r["non_private_ms"], r["dp_hooks_ms"],
             r["dp_ghost_ms"], r["ratio_hooks"], r["ratio_ghost"], r["fedready_default_mode"],
             "yes" if r["ghost_matches_hooks"] else "NO", r["fastest_correct"]] for r in data["results"]]  # fmt: skip
    text += "\n\nThe training loop per Opacus clipping mode, both models:\n\n"
    text += _table(["model", "params", "steps", "batch", "non-private ms (baseline)", "DP hooks ms", "DP ghost ms",
                    "hooks / non-private", "ghost / non-private", "fedready uses", "ghost == hooks",
                    "fastest correct"], rows)  # fmt: skip
    text += ("\n\nTarget: a DP round <= 1.3x the non-private round for the default MLP. A federated round is what "
             "a user waits for; the lower levels show where the privacy cost sits. The training loop is one "
             "client's local round (`fedready.client.training.train`) on client 0's shard, one thread, including "
             "building the `PrivacyEngine` and wrapping model, optimiser and loader, which fedready does every "
             "round; for a 2,722-parameter model a non-private step takes about half a millisecond, so Opacus's "
             "fixed cost per step (hooks, the second backward pass of ghost clipping, noise) dominates it. Every "
             "level alternates private and non-private repetitions.")  # fmt: skip
    return cmd, text


def section_aggregation(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "aggregation.py"), "--repeat", "5" if full else "3"]
    data = _json(_run(cmd)[0])
    rows = [[r["aggregator"], r["seconds"], r["updates_per_s"], r["vs_fedavg"]] for r in data["results"]]
    text = _table(["aggregator", "s per round", "updates/s", "throughput vs FedAvg (baseline)"], rows)
    text += (f"\n\n{data['clients']} updates of {data['parameters']:,} float32 parameters per round, "
             f"{data['malicious']} assumed attackers for the Byzantine rules; `aggregate_train` of the strategy "
             "`build_strategy` returns (Flower's own implementations), median of alternating repetitions.")  # fmt: skip
    return cmd, text


def section_scale(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "scale.py"), *(["--full"] if full else [])]
    data = _json(_run(cmd)[0])
    rows = [[f"{r['clients']:,}", r.get("work", "default"), f"{r.get('local_steps', 3)} x {r.get('batch', 1024)}",
             r["rounds"], r["sampled_per_round"], r["fedready_s"], r["bare_s"], r["ratio"],
             r["fedready_rounds_per_min"], r["bare_rounds_per_min"], r["fedready_peak_rss_mb"],
             r["bare_peak_rss_mb"], r["repeat"], f"{r['fedready_accuracy']:.4f}", f"{r['bare_accuracy']:.4f}",
             f"{r['fedready_epsilon']:.3f}", f"{r['bare_updates']:,}"]
            for r in data["results"]]  # fmt: skip
    text = _table(["clients", "work", "local steps x batch", "rounds", "sampled/round", "fedready s",
                   "bare Flower+Opacus s (baseline)",
                   "ratio", "fedready rounds/min", "bare rounds/min", "fedready peak MB (all processes)",
                   "bare peak MB", "runs each", "fedready accuracy", "bare accuracy", "fedready epsilon",
                   "bare updates aggregated"], rows)  # fmt: skip
    text += ("\n\nWall time of the whole command (start-up of Ray and its actors included), median of alternating "
             "runs. fedready: `fedready simulate --partitioner iid --min-client-rows 1 --fraction-evaluate F` "
             "(DP, ledger, checkpoints, update validation, audit log and the federated evaluation of a share F of "
             "clients all on); bare: `benchmarks/bare_flower/app.py`, the same clients, rounds, sampling, model, "
             "batch, steps, learning rate, clipping, noise multiplier and Opacus ghost clipping, with Flower's FedAvg "
             "and Opacus only (it fails the benchmark if any client reply was an error, so a baseline that trained "
             "nothing cannot pass as fast). The two accuracies differ only by their noise draws. "
             "Memory: peak of resident memory summed over the whole process tree (driver, GCS, raylet, every Ray "
             "worker), sampled every 0.2 s. Work: `default` is fedready's default local work (3 DP-SGD steps of "
             "expected batch 1,024, learning rate 6, epsilon 1); `peer` is the work of Flower's `opacus` example "
             "(one local epoch of expected batch 64, learning rate 0.1, clipping 1, epsilon 3.28, about that "
             "example's noise), so the comparison is the same work on both sides. Targets: ratio <= 1.0 at 10 "
             "clients, <= 1.2 at 10,000 clients (1% sampled, 10 rounds), under 4 GB.")  # fmt: skip
    return cmd, text


def section_compression(full: bool) -> tuple[list[str], str]:
    tmp = Path(tempfile.mkdtemp(prefix="fr-bench-comp-"))
    try:
        rounds = "10" if full else "3"
        train = [FEDREADY, "simulate", "--model", "mlp-large", "--rounds", rounds, "--out", str(tmp), "--name",
                 "teacher", "--json"]  # fmt: skip
        _run(train)
        # compress exits 1 when no variant passes the release gates (a short teacher rarely does);
        # the variants are still written and can be timed.
        comp = [FEDREADY, "compress", str(tmp / "teacher"), "--epochs", "30" if full else "5", "--json"]
        subprocess.run(comp, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        if not (tmp / "teacher" / "compression" / "compression.json").exists():
            raise RuntimeError("fedready compress wrote no compression/compression.json")
        cmd = [PY, str(HERE / "compression_latency.py"), str(tmp / "teacher"), "--repeats", "5" if full else "3"]
        out, _ = _run(cmd)
        text = "```\n" + out.strip() + "\n```\n\n"
        text += (f"Teacher: `fedready simulate --model mlp-large --rounds {rounds}`, then `fedready compress` "
                 "on it; each variant beside the fp32 teacher (baseline), timed in interleaved rounds.")  # fmt: skip
        return cmd, text
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def section_verify(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "verify_speed.py"), "--size-mb", "100" if full else "50"]
    d = _json(_run(cmd)[0])
    text = _table(["bytes", "verify s", "sha256sum s (baseline)", "verify MB/s", "sha256sum MB/s",
                   "sha256sum time / verify time"],
                  [[f"{d['bytes']:,}", d["verify_s"], d["sha256sum_s"], d["verify_mb_per_s"],
                    d["sha256sum_mb_per_s"], d["ratio"]]])  # fmt: skip
    return cmd, text + "\n\nSigned artifact verification (signature + sha256 of every file) vs `sha256sum`."


def section_serve(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "serve_throughput.py"), "--seconds", "8" if full else "4"]
    d = _json(_run(cmd)[0])
    rows = [[k, json.dumps(d[k])] for k in ("batch_size_1", "micro_batching")] + [["ratio", d["ratio"]]]
    return cmd, _table(["mode", "result"], rows) + f"\n\n`fedready edge serve`, {d['connections']} connections."


def section_audit(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "audit_runtime.py"), "--repeat", "2" if full else "1"]
    d = _json(_run(cmd)[0])

    def cell(audits: dict, key: str) -> str:
        return "; ".join(f"{lv} {'-' if a[key] is None else format(a[key], '.3f')}" for lv, a in audits.items())

    rows = [["`fedready simulate` (baseline)", d["plain_s"], 1.0, "-", f"sample {d['plain_epsilon']:.3f}", "-"]]
    rows += [[f"`fedready audit-privacy --level {r['level']}`", r["seconds"], r["vs_plain"], cell(r["audits"], "bound"),
              cell(r["audits"], "accounted"), "; ".join(a["extra"] for a in r["audits"].values())]
             for r in d["levels"]]  # fmt: skip
    text = _table(["command", "s", "vs plain run", "empirical lower bound (95%)", "accounted epsilon", "canaries"],
                  rows)  # fmt: skip
    text += (f"\n\nThe default configuration ({d['clients']} clients, {d['rounds']} rounds, embedded data, DP-SGD at "
             f"epsilon 1); wall time of the whole command (Ray start-up included), median of {d['repeat']} "
             "alternating run(s). An audit is a second run of the same configuration with 1000 canaries per level: the "
             "client level aggregates its canary clients' updates beside the real ones each round (the default has "
             "no client-level DP, so nothing is accounted at that level and the bound reaches the cap of 1000 "
             "canaries); the sample level adds gradient canaries to the clients' DP-SGD steps and projects every "
             "step; `--level both` does both in one run. See README, \"Empirical privacy audit\".")  # fmt: skip
    return cmd, text


HOSTILE_ATTACKS = {
    "mixed": "oversized and 1,000-row requests back to back, 200 slowloris connections, garbage",
    "flood": "700 idle sockets held open, each reopened as soon as the server closes it",
    "metrics": "8 keep-alive connections sending GET /metrics back to back",
    "cross-origin": "8 connections sending text/plain and form POSTs with a foreign Origin, and Host: attacker.example",
}


def section_hostile(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "hostile_clients.py"), "--seconds", "6" if full else "4", "--repeat", "3" if full else "2"]
    d = _json(_run(cmd)[0])
    base = d["baseline"]

    def row(label: str, r: dict, ratio: dict | None) -> list:
        ka, nc = r["keepalive"], r["new_connection"]
        return [label, ka["requests_per_s"], ratio["keepalive"] if ratio else 1.0, nc["requests_per_s"],
                ratio["new_connection"] if ratio else 1.0, ka["p99_ms"], ka["lost"] + nc["lost"],
                r["server_cpu_ms_per_request"]]  # fmt: skip

    rows = [row("well-behaved clients alone (baseline)", base, None)]
    answers = []
    for name, a in d["attacks"].items():
        rows.append(row(f"beside `{name}`: {HOSTILE_ATTACKS.get(name, name)}", a, a["ratio"]))
        counts = ", ".join(f"{k}: {v:,}" for k, v in a["hostile_answers"].items())
        answers.append(f"`{name}`: {counts} (attacker process {a['attacker_cpu_share']:g} of a core)")
    text = _table(["well-behaved load", "keep-alive req/s", "/ baseline", "new-connection req/s", "/ baseline",
                   "keep-alive p99 ms", "lost requests", "server CPU ms per well-behaved request"], rows)  # fmt: skip
    text += (f"\n\n`fedready edge serve` with its default limits. Well-behaved load: {d['connections']} keep-alive "
             f"clients and {d['new_connection_clients']} clients opening a new connection per request, from "
             f"127.0.0.1, each sending one Adult row per request, back to back. Each attack is one hostile process "
             f"from 127.0.0.2; baseline and attacked runs alternate ({d['repeat']} repetitions of {d['seconds']:g} s "
             "each, medians). How the server answered the hostile client (\"reset\"/\"dropped\": connections of an "
             "address over its error budget, cut off unanswered for two seconds; \"held\": idle and admitted when "
             f"the attack ended): {'; '.join(answers)}. Every process runs on the same shared 2-core machine, so an "
             "attacker's own CPU is taken from the server and the well-behaved clients too. Targets: each ratio >= "
             "0.5, no well-behaved request lost.")  # fmt: skip
    return cmd, text


def section_gates(full: bool) -> tuple[list[str], str]:
    # the runs are kept under TMPDIR and reused when present (re-deciding a finished run is post-processing)
    folder = Path(tempfile.gettempdir()) / "fedready-gate-runs"
    cmd = [PY, str(HERE / "gate_decisions.py"), "--seeds", "10", "--out", str(folder)]
    data = _json(_run(cmd, timeout=4 * 3600)[0])
    rows = []
    for name, g in data["gates"].items():
        lo, hi = g["exact_value_range"] or (None, None)
        rows.append([f"`{name}`", g["source"], g["limit"], f"{g['pass']}/{g['runs']}", g["undecided"], g["fail"],
                     g["contradictions"], "-" if g["mean_width"] is None else f"{g['mean_width']:.3f}",
                     "-" if lo is None else f"{lo:.3f}-{hi:.3f}", f"{g['exact_pass']}/{g['runs']}"])  # fmt: skip
    text = _table(["gate (Adult policy)", "source", "limit", "decided and passed", "undecided", "failed",
                   "contradicts the exact decision", "mean 95% interval width", "exact value (range over seeds)",
                   "exact decision: pass"], rows)  # fmt: skip
    runs = data["runs"]
    text += ("\n\nRuns: " + ", ".join(f"seed {r['seed']} {r['accuracy']:.2%} ({r['decision']})" for r in runs) + ".")
    text += ("\n\nThe default `fedready simulate` (10 clients, Dirichlet 0.5, DP at epsilon 1) for seeds "
             f"{runs[0]['seed']}-{runs[-1]['seed']}, then `fedready evaluate` with the embedded data set's policy: "
             "each gate decided on its number's 95% interval (pass, fail, undecided). The exact column decides the "
             "same model's gates again on exact per-client counts (what `--exact-evaluation` would send, outside "
             "the guarantee; computed here from the simulated shards). A private decision agrees with the truth "
             "when it equals the exact decision or is undecided; none may contradict it. Benchmark gates read the "
             "same numbers in both columns (their interval is the benchmark's sampling error).")  # fmt: skip
    return cmd, text


def section_profile(full: bool) -> tuple[list[str], str]:
    cmd = [PY, str(HERE / "profile_round.py"), "--markdown", "--repeat", "2" if full else "1"]
    out, _ = _run(cmd)
    tables = out[: out.rindex("\n{")].strip() if "\n{" in out else out.strip()
    data = _json(out[out.rindex("\n{") :])
    text = tables + (
        f"\n\nOne default `fedready simulate` (10 clients, Dirichlet 0.5, 50 rounds, DP-SGD at epsilon 1) and the same "
        f"with `--no-dp`, alternating ({data['repeat']} run(s) each), with `FEDREADY_PROFILE` set: the server and "
        "every client append one line per timed phase (`fedready.profiling`; names and durations only). Client "
        "phases: the median over every (client, round) of one client's time in that phase; the two Ray workers "
        "run five clients each per round, one after the other, so a round waits for about five client rounds "
        "plus Flower's message passing (\"send and receive\" includes both). Server phases: the median over "
        "rounds; \"audit log\" is its appends wherever they happen in the round. A round's median is "
        f"{data['dp']['round_s'] * 1000:.0f} ms private and {data['plain']['round_s'] * 1000:.0f} ms non-private "
        f"(ratio {data['dp_round_ratio']}; target <= 1.3). The first round also starts the Ray workers, imports "
        "torch, Opacus and fedready in each and calibrates every client's noise: it is the difference between "
        "\"all rounds\" and 50 median rounds.")  # fmt: skip
    return cmd, text


SECTIONS = [
    ("DP overhead: private vs non-private round", section_dp),
    ("Aggregation throughput (1M parameters)", section_aggregation),
    ("Framework overhead and scale: fedready simulate vs bare Flower + Opacus", section_scale),
    ("Compression: edge variants vs the fp32 teacher", section_compression),
    ("Artifact verification", section_verify),
    ("Edge serving throughput", section_serve),
    ("Edge serving under attack: well-behaved clients with and without a hostile one", section_hostile),
    ("Empirical privacy audit: runtime beside the plain run", section_audit),
    ("Release decisions under DP: 10 seeds, private decisions beside the exact ones", section_gates),
    ("Where a round's time goes: one default run, phase by phase, private and non-private", section_profile),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="longer runs and the 10,000-client scale run")
    ap.add_argument("--only", default="", help="comma-separated section numbers (1-based) to run")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    only = {int(i) for i in args.only.split(",") if i}
    started = dt.datetime.now(dt.UTC)
    v = _versions()
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `python benchmarks/run_all.py{' --full' if args.full else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC; do not edit by hand, run the command again.",
        "",
        _table(
            ["machine", "CPU", "cores", "memory", *v],
            [[f"{platform.system()} {platform.machine()}", _cpu(), os.cpu_count(), f"{_mem_gb():.0f} GB", *v.values()]],
        ),  # fmt: skip
        "",
        "The machine was shared with other work while these ran: absolute times vary from run to run, so every "
        "figure stands beside a baseline measured in the same run, with alternating repetitions, and the ratios "
        "are what to compare.",
    ]
    kept = _existing_sections(args.out) if only else {}
    if kept:  # --only updates those sections in place; the others stay as they were generated
        rerun = ",".join(map(str, sorted(only)))
        preamble = [line for line in args.out.read_text().split("\n## ")[0].rstrip("\n").splitlines()
                    if not line.startswith("Section(s) ")]  # fmt: skip
        parts = [*preamble, "",
                 f"Section(s) {rerun} re-run on {started:%Y-%m-%d %H:%M} UTC with `python benchmarks/run_all.py "
                 f"--only {rerun}` ({_cpu()}, {os.cpu_count()} cores)."]  # fmt: skip
    for i, (title, fn) in enumerate(SECTIONS, start=1):
        if only and i not in only:
            if i in kept:
                parts += ["", kept[i]]
            continue
        print(f"[{i}/{len(SECTIONS)}] {title} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            cmd, text = fn(args.full)
            body = f"{text}\n\nCommand: `{_cmd(cmd)}` ({time.perf_counter() - t:.0f} s)"
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
            body = f"**Failed**: {e}"
        parts += ["", f"## {i}. {title}", "", body]
        args.out.write_text("\n".join(parts) + "\n")  # written after every section: partial results survive
    print(f"wrote {args.out}", file=sys.stderr)


def _existing_sections(path: Path) -> dict[int, str]:
    """The ``## N. Title`` sections of an earlier report, by number (empty if there is none)."""
    if not path.exists():
        return {}
    out: dict[int, str] = {}
    for chunk in path.read_text().split("\n## ")[1:]:
        number = chunk.split(".", 1)[0]
        if number.isdigit():
            out[int(number)] = "## " + chunk.rstrip("\n")
    return out


def _mem_gb() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


if __name__ == "__main__":
    main()
