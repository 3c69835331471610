"""Do the private gate decisions agree with the truth? The default run over many seeds.

    python benchmarks/gate_decisions.py --seeds 10 --out /tmp/gates

For each seed, the default ``fedready simulate`` (10 clients, Dirichlet 0.5, DP at epsilon 1) then
``fedready evaluate``: every model gate of the default policy decided on the numbers a real run
has, the clients' counts noised on the clients. Then the same model's gates decided again on
*exact* per-client counts (computed here from the simulated shards, as ``--exact-evaluation``
would send them: outside the guarantee, for this measurement only). A private decision agrees
with the truth when it equals the exact decision or is undecided; a contradiction (pass where the
exact evaluation fails, or the reverse) is what must never happen. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def exact_report(run: Path) -> dict[str, Any]:
    """The run's federated report from exact per-client counts on the same final model."""
    from fedready.client.queries import local_group_counts
    from fedready.server.queries import federated_report, final_model
    from fedready.simulations.engine import load_run_config

    cfg = load_run_config(run)
    arrays, _ = final_model(run)
    answers = [local_group_counts(cfg, pid, arrays) for pid in range(cfg.num_clients)]
    return federated_report(answers, cfg)


def decide(run: Path) -> dict[str, Any]:
    """Private and exact gate decisions of one finished run (the private ones from ``fedready evaluate``)."""
    from fedready.evaluation import evaluate_run
    from fedready.evaluation.gates import check_gates, load_policy
    from fedready.task import task_of

    report = evaluate_run(run)
    exact = dict(report)
    exact["federated"] = exact_report(run)
    exact["estimates"] = {k: v for k, v in report["estimates"].items() if not k.startswith("federated.")}
    exact["estimates"].update(exact["federated"]["estimates"])
    from fedready.simulations.engine import load_run_config

    task = task_of(load_run_config(run))
    policy = load_policy(task.policy, task.schema)
    truth = {r.gate: r for r in check_gates(policy, exact)}
    out = {}
    for g in report["gates"]:
        t = truth[g["gate"]]
        out[g["gate"]] = {"private": g["outcome"], "value": g["measured"], "lo": g.get("lo"), "hi": g.get("hi"),
                          "source": g.get("source"), "exact": t.outcome, "exact_value": t.measured,
                          "exact_lo": t.lo, "exact_hi": t.hi, "limit": g["limit"]}  # fmt: skip
    return {"accuracy": report["metrics"]["accuracy"], "epsilon": report["privacy"]["epsilon"], "gates": out,
            "decision": report["decision"]}  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per gate: how often decided and passed, undecided, failed; widths; agreement with the exact decision."""
    gates: dict[str, Any] = {}
    for name in runs[0]["gates"]:
        rows = [r["gates"][name] for r in runs]
        width = [r["hi"] - r["lo"] for r in rows if r["lo"] is not None and r["hi"] is not None]
        contra = sum(r["private"] != "undecided" and r["private"] != r["exact"] for r in rows)
        exact_values = [r["exact_value"] for r in rows if r["exact_value"] is not None]
        gates[name] = {
            "source": rows[0]["source"], "limit": rows[0]["limit"], "runs": len(rows),
            **{o: sum(r["private"] == o for r in rows) for o in ("pass", "undecided", "fail")},
            "contradictions": contra,
            "mean_width": float(np.mean(width)) if width else None,
            "mean_value": float(np.mean([r["value"] for r in rows if r["value"] is not None] or [np.nan])),
            "exact_value_range": [min(exact_values), max(exact_values)] if exact_values else None,
            "exact_pass": sum(r["exact"] == "pass" for r in rows),
        }  # fmt: skip
    return gates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()
    import fedready

    out = args.out or Path(tempfile.mkdtemp(prefix="gates-"))
    runs, t0 = [], time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run = out / f"s{seed}"
        if not (run / "summary.json").exists():
            fedready.simulate(seed=seed, out=out, name=run.name)
        runs.append({"seed": seed, **decide(run)})
    doc = {"seeds": [r["seed"] for r in runs], "runs": runs, "gates": summarise(runs),
           "seconds": time.perf_counter() - t0, "cpus": os.cpu_count()}
    print(json.dumps(doc, indent=1, default=float))


if __name__ == "__main__":
    main()
