"""A bare Flower + Opacus app: the baseline fedready's ``simulate`` is measured against.

    python benchmarks/bare_flower/app.py --clients 10 --rounds 5 --fraction-train 1.0 --noise 1.1

What a user would write from Flower's and Opacus's examples, doing the same training work as
``fedready simulate --partitioner iid``: the same Adult rows (IID shards, 20% held back per client as
fedready does), the same model, Poisson batch, local steps, learning rate schedule, clipping bound,
noise multiplier and Opacus clipping mode (ghost clipping, as fedready uses), Flower's ``FedAvg``
with the same sampling fraction, and the same central evaluation on the holdout after every round,
on the same Ray backend settings. No ledger,
checkpoints, update validation, audit log, resume or federated evaluation. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedready.datasets.adult import adult_schema, load_adult
from fedready.encoding import FeatureEncoder
from fedready.models import create_model


@lru_cache(maxsize=2)
def _encoded(split: str) -> tuple[np.ndarray, np.ndarray]:
    schema = adult_schema()
    table = load_adult(split)
    return FeatureEncoder(schema).transform(table.columns), table.labels(schema)


@lru_cache(maxsize=1)
def _shards(num_clients: int, seed: int) -> list[np.ndarray]:
    _, y = _encoded("train")
    return np.array_split(np.random.default_rng(seed).permutation(len(y)), num_clients)


def _client_data(pid: int, num_clients: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _encoded("train")
    idx = _shards(num_clients, seed)[pid]
    idx = idx[int(round(len(idx) * 0.2)) :]  # the 20% validation share fedready keeps aside
    return x[idx], y[idx]


def _lr(base: float, server_round: int, rounds: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / rounds))


class _CountingFedAvg(FedAvg):
    """Flower's FedAvg, counting the updates it aggregates and the replies that were errors."""

    updates = failed = 0

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        self.failed += sum(m.has_error() for m in replies)
        self.updates += sum(not m.has_error() for m in replies)
        return super().aggregate_train(server_round, replies)


def make_apps(a: argparse.Namespace) -> tuple[ServerApp, ClientApp]:
    """The ServerApp (FedAvg + central evaluation) and ClientApp (Opacus DP-SGD)."""
    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        x, y = _client_data(pid, a.clients, a.seed)
        server_round = int(msg.content["config"]["server-round"])
        model = create_model(a.model, x.shape[1])
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        gen = torch.Generator().manual_seed(a.seed * 100_003 + pid * 1009 + server_round)
        loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=a.batch_size,
                            shuffle=True, generator=gen)  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=_lr(a.lr, server_round, a.rounds))
        criterion = nn.CrossEntropyLoss()
        ghost = {"criterion": criterion, "grad_sample_mode": "ghost"} if a.grad_sample_mode == "ghost" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            private = PrivacyEngine().make_private(
                module=model, optimizer=opt, data_loader=loader, noise_multiplier=a.noise,
                max_grad_norm=a.max_grad_norm, poisson_sampling=True, noise_generator=gen, **ghost,
            )  # fmt: skip
        model, opt, criterion, loader = private if ghost else (private[0], private[1], criterion, private[2])
        steps, total = 0, 0.0
        while steps < a.local_steps:
            for xb, yb in loader:
                if steps >= a.local_steps:
                    break
                opt.zero_grad(set_to_none=True)
                out = model(xb)
                loss = criterion(out, yb) if len(xb) or ghost else out.sum()
                loss.backward()
                opt.step()
                steps, total = steps + 1, total + (float(loss.detach()) if len(xb) else 0.0)
        arrays = ArrayRecord(model._module.state_dict())
        metrics = MetricRecord({"num-examples": len(y), "train-loss": total / max(steps, 1)})
        return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        xh, yh = _encoded("test")
        model = create_model(a.model, xh.shape[1], seed=a.seed)

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            summary.setdefault("eval_at_s", []).append(round(time.perf_counter() - T0, 2))
            model.load_state_dict(arrays.to_torch_state_dict())
            with torch.no_grad():
                logits = model(torch.from_numpy(xh))
            return MetricRecord({"accuracy": float((logits.argmax(1).numpy() == yh).mean())})

        m = max(1, int(a.fraction_train * a.clients))
        strategy = _CountingFedAvg(fraction_train=a.fraction_train, fraction_evaluate=0.0, min_train_nodes=m,
                          min_available_nodes=a.clients)  # fmt: skip
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=a.rounds,
                                train_config=ConfigRecord({}), evaluate_fn=central_eval)  # fmt: skip
        acc = result.evaluate_metrics_serverapp.get(a.rounds, {}).get("accuracy")
        summary["accuracy"] = float(acc) if acc is not None else None
        summary["updates"], summary["failed"] = strategy.updates, strategy.failed
        summary["accuracy_by_round"] = {r: round(float(m["accuracy"]), 4)
                                        for r, m in result.evaluate_metrics_serverapp.items()}  # fmt: skip

    return server_app, client_app


summary: dict = {}
T0 = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fraction-train", type=float, default=1.0)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=6.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--noise", type=float, required=True, help="noise multiplier (fedready's calibrated value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-sample-mode", choices=("ghost", "hooks"), default="ghost",
                    help="Opacus per-sample clipping (default: ghost, as fedready's clients use)")  # fmt: skip
    a = ap.parse_args()
    t0 = time.perf_counter()
    # As in Flower's app templates, the apps live in an importable module (this file, imported as
    # ``app``), so Ray's workers import it once per actor and its data caches live as long as the actor.
    # Defined in __main__ they would be shipped by value with every message and their caches lost.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    import app as module  # noqa: PLC0415 - this very file, under an importable name

    server_app, client_app = module.make_apps(a)
    init_args = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False,
                 "num_cpus": os.cpu_count() or 1}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=a.clients, backend_config=backend)
    summary = module.summary  # filled by the ServerApp, which runs in this process
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - t0, 2)}))
    if summary.get("failed") or not summary.get("updates"):  # a baseline that trained nothing measures nothing
        raise SystemExit(f"bare app: {summary.get('failed')} client replies were errors, "
                         f"{summary.get('updates')} updates aggregated; see the log above")  # fmt: skip


if __name__ == "__main__":
    main()
