"""Local training: DP-SGD with Opacus (Poisson sampling) or plain SGD for comparison."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TrainResult", "evaluate", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass did."""

    steps: int
    loss: float
    history: list[tuple[float, float, int]]  # Opacus accountant history after training


# Per-sample gradients held at once (parameters x examples) before a batch is split into chunks:
# about 200 MB of float32, which keeps each simulated client well under a gigabyte.
_MAX_PER_SAMPLE_VALUES = 50_000_000


def _physical_batch(model: nn.Module, batch_size: int) -> int | None:
    """Physical chunk size for DP-SGD on a large model, or None when a batch fits in one go."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if params * batch_size * 1.3 <= _MAX_PER_SAMPLE_VALUES:  # Poisson batches run ~30% over the mean
        return None
    return max(16, _MAX_PER_SAMPLE_VALUES // params)


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int,
    optimizer: str = "sgd",
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    history: list[tuple[float, float, int]] | None = None,
    accountant: str = "rdp",
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` epochs.

    With ``noise_multiplier`` set, training is DP-SGD (Abadi et al. 2016,
    arXiv:1607.00133) through Opacus: Poisson sampling at rate
    ``1 / ceil(n / batch_size)``, per-sample clipping to ``max_grad_norm`` and
    Gaussian noise. The accountant starts from ``history`` so epsilon composes
    over every round the client took part in; the returned history includes the
    steps taken here.
    """
    gen = torch.Generator().manual_seed(seed)
    loader = _loader(x, y, batch_size, gen)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999))
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    criterion = nn.CrossEntropyLoss()
    module: nn.Module = model
    engine = None
    if noise_multiplier is not None:
        engine = PrivacyEngine(accountant=accountant)
        engine.accountant.history = list(history or [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure_mode advice; simulations use a seeded RNG
            module, opt, loader = engine.make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                noise_generator=gen,
            )
    module.train()
    steps, total = 0, 0.0
    budget = max_steps if max_steps is not None else epochs * len(loader)
    with contextlib.ExitStack() as stack:
        physical = _physical_batch(model, batch_size) if engine is not None else None
        if physical is not None:
            # Opacus keeps one per-sample gradient per parameter and example: split each Poisson
            # batch into physical chunks; the optimizer steps (and noises) once per logical batch.
            loader = stack.enter_context(
                BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical, optimizer=opt)
            )
        while steps < budget:
            for xb, yb in loader:
                if steps >= budget:
                    break
                opt.zero_grad(set_to_none=True)
                out = module(xb)
                # Poisson sampling can draw an empty batch: it is still a step (noise is
                # still added and accounted), with a zero loss instead of a NaN mean.
                loss = criterion(out, yb) if len(xb) else out.sum()
                loss.backward()
                opt.step()
                if physical is not None and opt._is_last_step_skipped:  # a chunk, not yet the logical step
                    continue
                steps += 1
                total += float(loss.detach())
    hist = [tuple(h) for h in engine.accountant.history] if engine is not None else list(history or [])
    return TrainResult(steps=steps, loss=total / max(steps, 1), history=hist)  # type: ignore[arg-type]


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (loss, accuracy) of ``model`` on ``x``, ``y``."""
    model.eval()
    logits = model(torch.from_numpy(x))
    loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
    acc = float((logits.argmax(1).numpy() == y).mean())
    return loss, acc
