"""What the client-level audit detects: its bound when the noise is a fraction of what the ledger charges.

    python benchmarks/audit_sensitivity.py                     # z in 1, 2, 3; f in 1 .. 0; 5 seeds each
    python benchmarks/audit_sensitivity.py --z 2 --seeds 3 --fractions 1,0.1

Runs fedready's own client-level DP mechanism (:class:`fedready.server.client_dp.ClientLevelDP`: the
noise, the fixed denominator) wrapped by the audit's :class:`fedready.simulations.audit.CanaryClients`
(its canary clients, sampling, projections and scores), round after round, with the noise std
multiplied by ``f`` while the accountant charges ``z``. No real client trains: the audit's score
removes the real clients' contribution exactly, so its distribution does not depend on them (the
end-to-end tests check two cells on real runs). Prints one JSON document: per (z, f) the bound over
the seeds beside the accounted epsilon, and whether it exceeds it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedready.config import make_config
from fedready.federation import task_of
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.auditing import inclusion_bits
from fedready.privacy.randomness import secret_numpy_rng
from fedready.server.client_dp import ClientLevelDP
from fedready.simulations.audit import DEFAULT_CANARIES, CanaryClients, _directions


def audit_once(*, z: float, fraction: float, rate: float, clients: int, rounds: int, canaries: int,
               delta: float) -> dict:  # fmt: skip
    """One audited run of the mechanism with noise ``fraction * z``; the bound and the accounted epsilon."""
    cfg = make_config(num_clients=clients, fraction_train=rate, dp=False, client_dp="server-fixed",
                      client_noise_multiplier=z)  # fmt: skip
    model = task_of(cfg).model(seed=0)
    arrays = ArrayRecord(model.state_dict())
    dim = sum(v.numel() for v in model.state_dict().values())
    rng = secret_numpy_rng()
    directions, bits = _directions(canaries, dim, rng), inclusion_bits(canaries, rng=rng)
    dp = ClientLevelDP(FedAvg(), noise_multiplier=z, clipping_norm=1.0, sample_rate=rate, population=clients)
    charged = dp.noise_std()
    dp.noise_std = lambda: fraction * charged  # the bug under test: less noise than the ledger charges
    audited = CanaryClients(dp, directions=directions, included=bits, sample_rate=rate, norm=1.0, rng=rng)
    for r in range(1, rounds + 1):
        audited.current = dp.current = arrays  # what configure_train records (no grid here)
        arrays, _ = audited.aggregate_train(r, [])
    _, primary, _ = audited.score(delta=delta, confidence=0.95)
    accounted = compose_epsilon([(z, rate, rounds)], delta=delta)
    return {"bound": primary.bound.epsilon, "accounted": accounted, "exceeds": primary.bound.epsilon > accounted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--z", default="1,2,3", help="noise multipliers charged (comma-separated)")
    ap.add_argument("--fractions", default="1,0.5,0.3,0.2,0.1,0", help="share of the charged noise actually drawn")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--canaries", type=int, default=DEFAULT_CANARIES)
    args = ap.parse_args()
    for name, value in (("run_id", 1), ("task_id", 1), ("node_id", 0)):  # what a ServerApp's process has set
        setattr(TaskIdentity, name, value)
    t0 = time.perf_counter()
    cells = []
    for z in (float(v) for v in args.z.split(",")):
        for f in (float(v) for v in args.fractions.split(",")):
            runs = [audit_once(z=z, fraction=f, rate=args.rate, clients=args.clients, rounds=args.rounds,
                               canaries=args.canaries, delta=1e-5) for _ in range(args.seeds)]  # fmt: skip
            bounds = sorted(r["bound"] for r in runs)
            cells.append({"z": z, "fraction": f, "accounted": round(runs[0]["accounted"], 3),
                          "bound_min": round(bounds[0], 3), "bound_median": round(float(np.median(bounds)), 3),
                          "bound_max": round(bounds[-1], 3), "exceeds": sum(r["exceeds"] for r in runs),
                          "seeds": args.seeds})  # fmt: skip
            print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"clients": args.clients, "rate": args.rate, "rounds": args.rounds, "canaries": args.canaries,
                      "delta": 1e-5, "confidence": 0.95, "cells": cells,
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
