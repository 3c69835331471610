"""Aggregation throughput: updates per second for a 1M-parameter model, FedAvg vs each robust rule.

    python benchmarks/aggregation.py [--clients 20] [--params 1000000] [--repeat 3]

Builds ``--clients`` float32 updates of ``--params`` parameters (split like an MLP: one 1000 x
(params/1000) weight and a bias) as Flower reply messages, and times ``strategy.aggregate_train``
of the strategy ``fedready.server.strategies.build_strategy`` returns for each aggregator (the
code path ``fedready simulate --aggregator ...`` runs). Rules alternate within each repetition;
the median is reported. ``vs_fedavg`` = the rule's updates/s over FedAvg's (the baseline, same
run). Byzantine rules are configured for ``--malicious`` attackers (Bulyan needs
clients >= 4f + 3). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedready import constants as K
from fedready.config import make_config
from fedready.server.strategies import AGGREGATORS, build_strategy

# qfedavg reweights by loss and is a fairness rule, not a robust one; it is timed too for completeness.
RULES = ["fedavg", "median", "trimmed-mean", "krum", "multikrum", "bulyan", "qfedavg"]


def _updates(clients: int, params: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    rows = 1000
    cols = params // rows
    return [{"0.weight": rng.normal(size=(cols, rows)).astype(np.float32),
             "0.bias": rng.normal(size=cols).astype(np.float32)} for _ in range(clients)]  # fmt: skip


def _replies(updates: list[dict[str, np.ndarray]]) -> list[Message]:
    out = []
    for i, u in enumerate(updates):
        content = RecordDict({
            K.ARRAYS: ArrayRecord({k: Array(v) for k, v in u.items()}),
            K.METRICS: MetricRecord({K.NUM_EXAMPLES: 100 + i, K.UNIFORM_WEIGHT: 1, K.TRAIN_LOSS: 0.5}),
        })  # fmt: skip
        out.append(Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--malicious", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    assert set(RULES) == set(AGGREGATORS), "a registered aggregator is missing from the benchmark"
    # Flower stamps every Message with the running task's identity; outside a run, fake one.
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        setattr(TaskIdentity, name, value)
    logging.getLogger("flwr").setLevel(logging.ERROR)  # one INFO line per aggregation
    updates = _updates(args.clients, args.params, seed=0)
    n_params = sum(a.size for a in updates[0].values())
    strategies = {}
    for rule in RULES:
        cfg = make_config(num_clients=args.clients, aggregator=rule, num_malicious=args.malicious)
        s = build_strategy(cfg, None)
        strategies[rule] = s

    def fresh(rule: str) -> list[Message]:
        """New reply messages (some rules consume the records they aggregate); QFedAvg's round-start model."""
        if rule == "qfedavg":
            strategies[rule].current_arrays = ArrayRecord({k: Array(v) for k, v in updates[0].items()})
        return _replies(updates)

    for rule, s in strategies.items():  # warm-up
        s.aggregate_train(1, fresh(rule))
    times: dict[str, list[float]] = {r: [] for r in RULES}
    for _ in range(args.repeat):
        for rule, s in strategies.items():
            replies = fresh(rule)
            t = time.perf_counter()
            s.aggregate_train(1, replies)
            times[rule].append(time.perf_counter() - t)
    med = {r: statistics.median(v) for r, v in times.items()}
    rows = [{"aggregator": r, "seconds": round(med[r], 4), "updates_per_s": round(args.clients / med[r], 1),
             "vs_fedavg": round(med["fedavg"] / med[r], 3)} for r in RULES]  # fmt: skip
    print(json.dumps({"clients": args.clients, "parameters": int(n_params), "malicious": args.malicious,
                      "repeat": args.repeat, "results": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
