"""Local training: DP-SGD with Opacus (Poisson sampling) or plain SGD for comparison."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TrainResult", "evaluate", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass did."""

    steps: int
    loss: float
    history: list[tuple[float, float, int]]  # Opacus accountant history after training


# Above this many per-sample gradient values (parameters x expected batch) DP-SGD switches to
# Opacus' ghost clipping: per-sample norms without materialising per-sample gradients.
_GHOST_ABOVE = 50_000_000


def _ghost_clipping(model: nn.Module, batch_size: int) -> bool:
    """Whether DP-SGD on ``model`` should use ghost clipping (Li et al. 2021, arXiv:2110.05679).

    The clipping and noise are the same as with per-sample gradients (a test checks the
    resulting updates agree), at a fraction of the memory and time for wide Linear layers.
    """
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return params * batch_size > _GHOST_ABOVE


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
    extra: dict = {}
    if noise_multiplier is not None:
        engine = PrivacyEngine(accountant=accountant)
        engine.accountant.history = list(history or [])
        ghost = _ghost_clipping(model, batch_size)
        extra = {"criterion": criterion, "grad_sample_mode": "ghost"} if ghost else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure_mode advice; simulations use a seeded RNG
            private = engine.make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
                noise_generator=gen,
                **extra,
            )
        if ghost:  # the criterion comes back wrapped: its backward clips per sample
            module, opt, criterion, loader = private
        else:
            module, opt, loader = private
    module.train()
    steps, total = 0, 0.0
    budget = max_steps if max_steps is not None else epochs * len(loader)
    while steps < budget:
        for xb, yb in loader:
            if steps >= budget:
                break
            opt.zero_grad(set_to_none=True)
            out = module(xb)
            # Poisson sampling can draw an empty batch: it is still a step (noise is
            # still added and accounted), with a zero loss instead of a NaN mean.
            loss = criterion(out, yb) if len(xb) or extra else out.sum()
            loss.backward()
            opt.step()
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
