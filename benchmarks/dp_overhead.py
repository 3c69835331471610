"""DP overhead: a private round vs a non-private one, same model, data and steps, in one run.

    python benchmarks/dp_overhead.py [--repeat 7] [--models mlp,mlp-large] [--steps 3] [--federated-rounds 10]

Measured at three levels, each private beside non-private in the same run:

1. ``training``: the local training loop alone (below), per Opacus clipping mode;
2. ``client_round``: everything a client does in one round (:func:`fedready.client.app.local_update`:
   its state, the budget check, training, accounting, writing its state), over the 10 clients of
   the default federation, in one process;
3. ``federated_round``: a whole round of ``fedready simulate`` (model out to 10 clients, local
   training, updates back, validation, aggregation, evaluation, ledger, checkpoint), DP against
   ``--no-dp`` with the same learning rate: the median round time from ``metrics.jsonl``,
   round 1 (Ray's actor start-up) left out.

Times ``fedready.client.training.train`` (the function every client calls once per round) on
client 0's shard of the default federation (10 clients, Dirichlet 0.5, Adult): a non-private
round (plain SGD) and a private round (Opacus DP-SGD, Poisson sampling, clipping, noise), the
latter with Opacus's per-sample-gradient hooks and with ghost clipping (Li et al. 2021,
arXiv:2110.05679), through the same ``grad_sample_mode`` argument fedready's clients use. The three
variants run alternately, ``--repeat`` times each after one warm-up, and the median is reported;
``ratio`` = private median / non-private median (target for the default MLP: <= 1.5).
One thread, as each simulated client uses. Prints JSON.

``ghost_matches_hooks`` checks that both modes give the same trained weights (noise 0 and
noise 1 with the same seed), so a faster mode is only reported as usable when it is correct.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from fedready.client import training
from fedready.config import make_config
from fedready.federation import client_shard
from fedready.models import create_model

_MODES = training.GRAD_SAMPLE_MODES


def _round(model_name: str, x, y, *, steps: int, batch: int, mode: str | None, noise: float = 1.0) -> torch.nn.Module:
    """One local round as a client runs it; ``mode`` None means non-private."""
    model = create_model(model_name, x.shape[1], seed=0)
    training.train(model, x, y, epochs=1, batch_size=batch, lr=0.5, momentum=0.0, seed=1,
                   noise_multiplier=None if mode is None else noise, max_grad_norm=1.0,
                   max_steps=steps, grad_sample_mode=mode or training.DEFAULT_GRAD_SAMPLE_MODE,
                   released_rows=len(y))  # fmt: skip
    return model


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.allclose(p, q, rtol=1e-3, atol=1e-4) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def measure(model_name: str, x, y, *, steps: int, batch: int, repeat: int) -> dict:
    """Median wall time of each variant (alternating) and the private / non-private ratios."""
    variants: dict[str, Callable[[], object]] = {
        "non_private": lambda: _round(model_name, x, y, steps=steps, batch=batch, mode=None),
        **{f"dp_{m}": (lambda m=m: _round(model_name, x, y, steps=steps, batch=batch, mode=m)) for m in _MODES},
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: imports, allocator, Opacus hooks
        fn()
    for _ in range(repeat):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    correct = all(
        _same(_round(model_name, x, y, steps=steps, batch=batch, mode="hooks", noise=z),
              _round(model_name, x, y, steps=steps, batch=batch, mode="ghost", noise=z))
        for z in (0.0, 1.0)
    )  # fmt: skip
    params = sum(p.numel() for p in create_model(model_name, x.shape[1]).parameters())
    return {
        "model": model_name,
        "parameters": params,
        "rows": len(y),
        "steps": steps,
        "batch": batch,
        "fedready_default_mode": training.DEFAULT_GRAD_SAMPLE_MODE,
        **{f"{k}_ms": round(v * 1000, 2) for k, v in med.items()},
        **{f"ratio_{m}": round(med[f"dp_{m}"] / med["non_private"], 3) for m in _MODES},
        "ghost_matches_hooks": correct,
        "fastest_correct": min(("hooks", "ghost") if correct else ("hooks",), key=lambda m: med[f"dp_{m}"]),
    }


def client_round(*, repeat: int) -> dict:
    """Median time of one client's whole round (``local_update``), private vs non-private."""
    from flwr.app import Context, RecordDict

    from fedready.client.app import local_update
    from fedready.task import load_task

    arrays = {k: v.numpy() for k, v in load_task().model().state_dict().items()}

    def five_rounds(dp: bool) -> float:
        cfg = make_config(dp=dp, lr=6.0)
        with tempfile.TemporaryDirectory() as run_dir:
            ctxs = [Context(run_id=1, node_id=i + 1, node_config={"partition-id": i}, state=RecordDict(),
                            run_config={}) for i in range(cfg.num_clients)]  # fmt: skip
            t = time.perf_counter()
            for r in range(1, 6):
                for c in ctxs:
                    local_update(cfg, c, run_dir, r, arrays)
            return (time.perf_counter() - t) / (5 * cfg.num_clients)

    times: dict[bool, list[float]] = {False: [], True: []}
    five_rounds(True), five_rounds(False)  # warm-up
    for _ in range(repeat):
        for dp in (False, True):
            times[dp].append(five_rounds(dp))
    med = {dp: statistics.median(v) for dp, v in times.items()}
    return {"non_private_ms": round(med[False] * 1000, 2), "dp_ms": round(med[True] * 1000, 2),
            "ratio": round(med[True] / med[False], 3)}  # fmt: skip


def federated_round(*, rounds: int, repeat: int) -> dict:
    """Median round time of ``fedready simulate`` with DP vs ``--no-dp`` (alternating runs)."""
    fedready = shutil.which("fedready") or str(Path(sys.executable).parent / "fedready")
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as out:
        for i in range(repeat):
            for dp in (False, True):
                name = f"{'dp' if dp else 'nodp'}-{i}"
                cmd = [fedready, "simulate", "--rounds", str(rounds), "--lr", "6.0", "--out", out, "--name", name,
                       "--json", *([] if dp else ["--no-dp"])]  # fmt: skip
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                lines = (Path(out) / name / "metrics.jsonl").read_text().splitlines()
                times[dp].extend(json.loads(ln)["seconds"] for ln in lines[1:])  # round 1: actor start-up
    med = {dp: statistics.median(v) for dp, v in times.items()}
    return {"rounds": rounds, "runs_each": repeat, "non_private_s": round(med[False], 3), "dp_s": round(med[True], 3),
            "ratio": round(med[True] / med[False], 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--models", default="mlp,mlp-large")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: the config's local_steps)")
    ap.add_argument("--federated-rounds", type=int, default=10, help="rounds per simulate run (0: skip that level)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # Opacus' secure-RNG advice and backward-hook notices, once per round
    torch.set_num_threads(1)
    cfg = make_config()
    shard = client_shard(cfg, 0)
    steps = args.steps or cfg.local_steps
    results = [measure(m, shard.x_train, shard.y_train, steps=steps, batch=cfg.batch_size, repeat=args.repeat)
               for m in args.models.split(",")]  # fmt: skip
    client = client_round(repeat=args.repeat)
    federated = federated_round(rounds=args.federated_rounds, repeat=2) if args.federated_rounds else None
    print(json.dumps({"repeat": args.repeat, "results": results, "client_round": client,
                      "federated_round": federated}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
