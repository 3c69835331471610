"""A bare Flower + Opacus app: the baseline fedready's ``simulate`` is measured against.

    python benchmarks/bare_flower/app.py --clients 10 --rounds 5 --fraction-train 1.0 --noise 1.1

What a user would write from Flower's and Opacus's examples, doing the same training work as
``fedready simulate --partitioner iid``: the same Adult rows (IID shards, 10% held back per client as
fedready does), the same model, Poisson batch, local steps, learning rate schedule, clipping bound
and noise multiplier, Flower's ``FedAvg`` with the same sampling fraction, and the same central
evaluation on the holdout after every round, on the same Ray backend settings. No ledger,
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

from fedready.data import adult_schema, load_adult
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
    idx = idx[int(round(len(idx) * 0.1)) :]  # the 10% validation share fedready keeps aside
    return x[idx], y[idx]


def _lr(base: float, server_round: int, rounds: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / rounds))


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, opt, loader = PrivacyEngine().make_private(
                module=model, optimizer=opt, data_loader=loader, noise_multiplier=a.noise,
                max_grad_norm=a.max_grad_norm, poisson_sampling=True, noise_generator=gen,
            )  # fmt: skip
        criterion = nn.CrossEntropyLoss()
        steps, total = 0, 0.0
        while steps < a.local_steps:
            for xb, yb in loader:
                if steps >= a.local_steps:
                    break
                opt.zero_grad(set_to_none=True)
                out = model(xb)
                loss = criterion(out, yb) if len(xb) else out.sum()
                loss.backward()
                opt.step()
                steps, total = steps + 1, total + float(loss.detach())
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
        strategy = FedAvg(fraction_train=a.fraction_train, fraction_evaluate=0.0, min_train_nodes=m,
                          min_available_nodes=a.clients)  # fmt: skip
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=a.rounds,
                                train_config=ConfigRecord({}), evaluate_fn=central_eval)  # fmt: skip
        acc = result.evaluate_metrics_serverapp.get(a.rounds, {}).get("accuracy")
        summary["accuracy"] = float(acc) if acc is not None else None

    return server_app, client_app


summary: dict = {}
T0 = time.perf_counter()


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
    a = ap.parse_args()
    t0 = time.perf_counter()
    server_app, client_app = make_apps(a)
    init_args = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False,
                 "num_cpus": os.cpu_count() or 1}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=a.clients, backend_config=backend)
    print(json.dumps({**summary, "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()
