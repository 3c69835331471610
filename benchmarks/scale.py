"""Scale and framework overhead: ``fedready simulate`` vs a bare Flower + Opacus app, run alternately.

    python benchmarks/scale.py                       # quick: 10 clients x 3 rounds, 1,000 clients x 3 rounds
    python benchmarks/scale.py --full                # both kinds of work at 10 and 10,000 clients x 10 rounds
    python benchmarks/scale.py --setups 10000:default:10:0.01 --repeat 1

Each setup is ``clients:work:rounds:fraction``. ``work`` is what every client does in a round:

* ``default``: fedready's defaults (3 DP-SGD steps of expected batch 1,024, learning rate 6,
  epsilon 1);
* ``peer``: the Flower ``opacus`` example's work (one local epoch of expected batch 64, learning
  rate 0.1, clipping 1, epsilon 3.28, about that example's noise).

For each setup the two commands run alternately ``--repeat`` times (default 2), each in a fresh
process tree:

* fedready: ``fedready simulate --partitioner iid --min-client-rows 1 --fraction-evaluate F`` with
  DP and the ledger on (and checkpoints, update validation, audit log, and the federated evaluation
  after training, asking the same share F of clients as a round trains);
* bare: ``benchmarks/bare_flower/app.py`` with the same clients, rounds, sampling fraction, model,
  Poisson batch, local steps, learning rate, clipping bound, Opacus clipping mode and the noise
  multiplier fedready calibrates for these clients. It exits non-zero if any client reply was an
  error (so a baseline that trained nothing fails instead of looking fast).

Reported per setup: median wall time of each, ``ratio`` = fedready / bare (targets: <= 1.1 at 10
clients, <= 1.2 at 10,000), rounds per minute, and peak resident memory summed over the whole
process tree (driver, Ray's GCS and raylet, every Ray worker), sampled every 0.2 s with psutil
(summed RSS counts shared pages once per process, so it is an upper bound). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
QUICK = ["10:default:3:1.0", "10:peer:3:1.0"]
FULL = ["10:default:10:1.0", "10000:default:10:0.01", "10:peer:10:1.0", "10000:peer:10:0.01"]
# per kind of work: local steps (0: one epoch), expected batch, learning rate, epsilon, delta
WORK = {"default": (3, 1024, 6.0, 1.0, 1e-5), "peer": (0, 64, 0.1, 3.28, 1e-5)}


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], *, cwd: Path, timeout: float = 3600) -> dict:
    """Run ``cmd``; return wall seconds, peak summed RSS of its process tree and its last stdout line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(ps))
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, 9)
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    last = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return {"seconds": seconds, "peak_rss": peak, "result": json.loads(last[-1]) if last else {}}


def _plan(clients: int, rounds: int, *, epsilon: float, delta: float, batch: int, steps: int) -> tuple[float, int]:
    """The noise multiplier fedready calibrates for client 0 of an IID federation of ``clients``, and its
    local steps per round (``steps``, or one epoch when ``steps`` is 0)."""
    from fedready.config import make_config
    from fedready.federation import client_shard
    from fedready.privacy.accounting import calibrate_with_releases

    cfg = make_config(num_clients=clients, partitioner="iid", min_client_rows=1, rounds=rounds)
    n = len(client_shard(cfg, 0).y_train)
    batches = max(1, math.ceil(n / batch))
    steps = steps or batches
    noise = calibrate_with_releases(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0 / batches,
                                    steps=rounds * steps, releases=[], accountant=cfg.accountant)  # fmt: skip
    return noise, steps


def measure(clients: int, rounds: int, fraction: float, *, repeat: int, work: Path, kind: str = "default") -> dict:
    """Alternate fedready and bare runs of one setup; return medians, ratio and peak memory."""
    steps, batch, lr, eps, delta = WORK[kind]
    noise, bare_steps = _plan(clients, rounds, epsilon=eps, delta=delta, batch=batch, steps=steps)
    common = ["--clients", str(clients), "--rounds", str(rounds), "--fraction-train", str(fraction),
              "--batch-size", str(batch), "--lr", str(lr)]  # fmt: skip
    fedready = shutil.which("fedready") or str(Path(sys.executable).parent / "fedready")
    runs: dict[str, list[dict]] = {"fedready": [], "bare": []}
    for i in range(repeat):
        run_dir = work / "runs"
        runs["fedready"].append(run_measured([
            fedready, "simulate", *common, "--partitioner", "iid", "--min-client-rows", "1",
            "--fraction-evaluate", str(fraction), "--epsilon", str(eps), "--delta", str(delta),
            "--local-steps", str(steps), "--local-epochs", "1", "--max-grad-norm", "1.0",
            "--out", str(run_dir), "--name", f"c{clients}-{kind}-{i}", "--json",
        ], cwd=work))  # fmt: skip
        runs["bare"].append(run_measured([
            sys.executable, str(HERE / "bare_flower" / "app.py"), *common, "--noise", str(noise),
            "--local-steps", str(bare_steps), "--max-grad-norm", "1.0",
        ], cwd=work))  # fmt: skip
        # the run and its clients' own state (their budget: a later run of the same name would inherit it)
        for folder in (f"c{clients}-{kind}-{i}", f"c{clients}-{kind}-{i}.clients"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    peak = {k: max(r["peak_rss"] for r in v) for k, v in runs.items()}
    return {
        "clients": clients,
        "work": kind,
        "local_steps": bare_steps,
        "batch": batch,
        "rounds": rounds,
        "fraction_train": fraction,
        "sampled_per_round": max(1, int(fraction * clients)),
        "noise_multiplier": round(noise, 4),
        "repeat": repeat,
        "fedready_s": round(med["fedready"], 2),
        "bare_s": round(med["bare"], 2),
        "ratio": round(med["fedready"] / med["bare"], 3),
        "fedready_rounds_per_min": round(rounds / med["fedready"] * 60, 1),
        "bare_rounds_per_min": round(rounds / med["bare"] * 60, 1),
        "fedready_peak_rss_mb": round(peak["fedready"] / 2**20),
        "bare_peak_rss_mb": round(peak["bare"] / 2**20),
        "fedready_accuracy": runs["fedready"][-1]["result"].get("accuracy"),
        "fedready_epsilon": runs["fedready"][-1]["result"].get("epsilon"),
        "bare_accuracy": runs["bare"][-1]["result"].get("accuracy"),
        "bare_updates": runs["bare"][-1]["result"].get("updates"),
        "all_seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in runs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="10 rounds, up to 10,000 clients")
    ap.add_argument("--setups", default=None, help="comma-separated clients:work:rounds:fraction (work: default|peer)")
    ap.add_argument("--repeat", type=int, default=None, help="alternating repetitions of each setup")
    args = ap.parse_args()
    setups = args.setups.split(",") if args.setups else (FULL if args.full else QUICK)
    repeat = args.repeat or 2
    work = Path(tempfile.mkdtemp(prefix="fr-scale-"))
    results = []
    try:
        for s in setups:
            clients, kind, rounds, fraction = s.split(":")
            kind = kind if kind in WORK else "default"  # the old form clients:1.0:rounds:fraction
            results.append(measure(int(clients), int(rounds), float(fraction), repeat=repeat, work=work, kind=kind))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
