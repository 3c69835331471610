"""DP overhead: a private local round vs a non-private one, same model, data and steps, in one run.

    python benchmarks/dp_overhead.py [--repeat 7] [--models mlp,mlp-large] [--steps 3]

Times ``fedready.client.training.train`` (the function every client calls once per round) on
client 0's shard of the default federation (10 clients, Dirichlet 0.5, Adult): a non-private
round (plain SGD) and a private round (Opacus DP-SGD, Poisson sampling, clipping, noise), the
latter with Opacus's per-sample-gradient hooks and with ghost clipping (Li et al. 2021,
arXiv:2110.05679), forced through the same switch fedready uses (``_GHOST_ABOVE``). The three
variants run alternately, ``--repeat`` times each after one warm-up, and the median is reported;
``ratio`` = private median / non-private median (target for the default MLP: <= 1.5).
One thread, as each simulated client uses. Prints JSON.

``ghost_matches_hooks`` checks that both modes give the same trained weights (noise 0 and
noise 1 with the same seed), so a faster mode is only reported as usable when it is correct.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from fedready.client import training
from fedready.config import make_config
from fedready.models import create_model
from fedready.simulations.federated import client_shard

_MODES = {"hooks": 10**18, "ghost": 0}  # value of training._GHOST_ABOVE that forces each mode


def _round(model_name: str, x, y, *, steps: int, batch: int, mode: str | None, noise: float = 1.0) -> torch.nn.Module:
    """One local round as a client runs it; ``mode`` None means non-private."""
    model = create_model(model_name, x.shape[1], seed=0)
    if mode is not None:
        training._GHOST_ABOVE = _MODES[mode]
    training.train(model, x, y, epochs=1, batch_size=batch, lr=0.5, momentum=0.0, seed=1,
                   noise_multiplier=None if mode is None else noise, max_grad_norm=1.0,
                   max_steps=steps)  # fmt: skip
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
    default_ghost = params * batch > _default_threshold
    return {
        "model": model_name,
        "parameters": params,
        "rows": len(y),
        "steps": steps,
        "batch": batch,
        "fedready_default_mode": "ghost" if default_ghost else "hooks",
        **{f"{k}_ms": round(v * 1000, 2) for k, v in med.items()},
        **{f"ratio_{m}": round(med[f"dp_{m}"] / med["non_private"], 3) for m in _MODES},
        "ghost_matches_hooks": correct,
        "fastest_correct": min(("hooks", "ghost") if correct else ("hooks",), key=lambda m: med[f"dp_{m}"]),
    }


_default_threshold = training._GHOST_ABOVE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--models", default="mlp,mlp-large")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: the config's local_steps)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # Opacus' secure-RNG advice and backward-hook notices, once per round
    torch.set_num_threads(1)
    cfg = make_config()
    shard = client_shard(cfg, 0)
    steps = args.steps or cfg.local_steps
    try:
        results = [measure(m, shard.x_train, shard.y_train, steps=steps, batch=cfg.batch_size, repeat=args.repeat)
                   for m in args.models.split(",")]  # fmt: skip
    finally:
        training._GHOST_ABOVE = _default_threshold
    print(json.dumps({"repeat": args.repeat, "results": results}, indent=2))


if __name__ == "__main__":
    main()
