"""Local training: DP-SGD with Opacus (Poisson sampling) or plain SGD for comparison."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedready import profiling
from fedready.privacy.randomness import harden_optimizer, secret_torch_generator, seeded_torch_generator

__all__ = ["OptimizerHook", "OptimizerHooks", "TrainResult", "poisson_plan", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass did."""

    steps: int
    loss: float
    history: list[tuple[float, float, int]]  # the history passed in, then this pass's accountant entries
    # what Opacus's own accountant recorded for this pass alone: (noise multiplier, sample rate, steps)
    released: tuple[tuple[float, float, int], ...] = ()
    # seconds spent in each phase of the pass (engine set-up, sampling, forward and backward, the
    # optimiser step with its clipping and noise): what benchmarks/profile_round.py tabulates
    phases: dict[str, float] = field(default_factory=dict, compare=False)  # timings, not results


def poisson_plan(rows: int, batch_size: int) -> tuple[float, float, int]:
    """Sample rate, normaliser and batches per epoch of DP-SGD for a client that released ``rows``.

    Notes
    -----
    Opacus's ``make_private`` derives both the Poisson rate (``1 / ceil(n / B)``) and the divisor
    of the noisy gradient sum (``int(n * rate)``) from the *exact* row count ``n``: the released
    update's scale then reveals ``n`` (its noise norm is ``z C sqrt(d) / (n q)``), outside any
    accounting. fedready derives both from the count the client has released (its noisy count,
    a charged Gaussian release), so the update's scale is post-processing of that release, and the
    rate the accountant charges is the rate the sampler draws with. Poisson subsampling's
    amplification depends on the rate alone, not on ``n`` (Mironov et al. 2019, arXiv:1908.10530),
    so the accounting stays exact whatever the true ``n``.
    """
    if rows < 1 or batch_size < 1:
        raise ValueError(f"rows and batch_size must be >= 1, got {rows} and {batch_size}")
    batches = max(1, math.ceil(rows / batch_size))
    rate = 1.0 / batches
    return rate, rows * rate, batches


# How Opacus computes per-sample clipping. "ghost" (Li et al. 2021, arXiv:2110.05679) gets each sample's
# gradient norm without materialising per-sample gradients; it gives the same clipped, noised update as
# per-sample "hooks" (tests/client/test_training.py) and is the faster of the two for every model fedready
# ships (benchmarks/dp_overhead.py: about half the time of hooks for the default MLP, 40x less for mlp-large).
GRAD_SAMPLE_MODES = ("ghost", "hooks")
DEFAULT_GRAD_SAMPLE_MODE = "ghost"


class OptimizerHook(Protocol):
    """Sees every optimisation step of one local training (simulations only: the sample-level privacy audit).

    :func:`train` calls :meth:`attach` once the optimiser is built (the Opacus ``DPOptimizer`` under DP,
    after :func:`~fedready.privacy.randomness.harden_optimizer`) and :meth:`close` after the last step.
    """

    def attach(self, optimizer: torch.optim.Optimizer, *, sample_rate: float, noise_multiplier: float | None,
               max_grad_norm: float, batch_size: int) -> None: ...  # fmt: skip

    def close(self) -> None: ...


# (partition id, server round) -> the round's hook, or None
OptimizerHooks = Callable[[int, int], "OptimizerHook | None"]


class _Rows(Dataset):
    """Training rows as two tensors, fetched a whole batch at a time.

    ``TensorDataset`` makes the loader index and stack every row on its own (most of a small
    model's step); ``__getitems__`` hands over the batch's rows in one indexing operation, in
    the sampler's order, so the batches (and so the training) are exactly the same.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.y[idx]


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # already a batch (``_Rows.__getitems__``); Opacus wraps this for empty Poisson batches


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator) -> DataLoader:
    return DataLoader(_Rows(x, y), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=_as_batch)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    seed: int | None,
    optimizer: str = "sgd",
    noise_multiplier: float | None = None,
    max_grad_norm: float = 1.0,
    history: list[tuple[float, float, int]] | None = None,
    accountant: str = "rdp",
    max_steps: int | None = None,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    optimizer_hook: OptimizerHook | None = None,
    released_rows: int | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` epochs.

    With ``noise_multiplier`` set, training is DP-SGD (Abadi et al. 2016,
    arXiv:1607.00133) through Opacus: Poisson sampling, per-sample clipping to
    ``max_grad_norm`` and Gaussian noise. The sample rate ``1 / ceil(released_rows / batch_size)``
    and the divisor of the noisy sum come from ``released_rows``, the row count the client has
    released (its noisy count), never from ``len(y)`` (:func:`poisson_plan`); it is required under
    DP. ``TrainResult.released`` is what Opacus's own accountant recorded for this pass (the
    client charges exactly that); ``TrainResult.history`` is ``history`` followed by it.
    ``grad_sample_mode`` picks how Opacus clips per sample (``"ghost"`` or ``"hooks"``: the same
    update, at different speeds).

    ``seed`` drives the batch sampling (and, under DP, the noise). Pass ``None`` for DP:
    sampling and noise then come from operating-system entropy (:mod:`fedready.privacy.randomness`).
    A known seed under DP makes the released update reproducible from the seed, which voids the
    guarantee; only ``--insecure-seeded-noise`` does that, and it is stamped everywhere.

    ``optimizer_hook`` (simulations only) is attached to the optimiser before the first step and
    closed after the last (:class:`OptimizerHook`).
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {grad_sample_mode!r}")
    t_setup = time.perf_counter()
    gen = secret_torch_generator() if seed is None else seeded_torch_generator(seed)
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
        if released_rows is None:
            raise ValueError("DP-SGD needs released_rows (the client's noisy row count): the sample rate and the "
                             "update's scale must not come from the exact row count")  # fmt: skip
        rate, normaliser, _ = poisson_plan(int(released_rows), batch_size)
        # Poisson sampling of the real rows at the released count's rate, with the secret generator
        loader = DPDataLoader(_Rows(x, y), sample_rate=rate, generator=gen, collate_fn=_as_batch)
        ghost = grad_sample_mode == "ghost"
        extra = {"criterion": criterion, "grad_sample_mode": "ghost"} if ghost else {}
        with warnings.catch_warnings():
            # Opacus's "Secure RNG turned off" advice (from the constructor and make_private), once per client
            # and round: our noise generator is seeded from OS entropy (fedready.privacy's dp generator)
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=accountant)  # an empty history: what it records is this pass alone
            private = engine.make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=False,  # the loader above already samples (make_private would use the exact n)
                noise_generator=gen,
                **extra,
            )
        if ghost:  # the criterion comes back wrapped: its backward clips per sample
            module, opt, criterion, loader = private
        else:
            module, opt, loader = private
        # make_private sized the divisor as int(len(rows) / len(loader)) and the accountant's rate as
        # 1 / len(loader): both from the exact row count. Replace both with the released count's.
        opt.expected_batch_size = normaliser
        opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=rate))
        if hasattr(module, "forbid_grad_accumulation"):
            module.forbid_grad_accumulation()  # what make_private does under Poisson sampling
        harden_optimizer(opt)  # Opacus's floating-point-safe noise sampler, with our secret generator
        # Opacus's loader deep-copies the first batch only to learn what an empty Poisson batch looks
        # like; tell it up front (our two tensors with no rows) and save the copy on every round.
        collate, rows = getattr(loader, "collate_fn", None), loader.dataset
        if isinstance(rows, _Rows) and getattr(collate, "first_batch", False) is None:
            collate.first_batch = (rows.x[:0], rows.y[:0])
    if optimizer_hook is not None:
        rate = float(getattr(loader, "sample_rate", min(1.0, batch_size / max(len(y), 1))))
        optimizer_hook.attach(opt, sample_rate=rate, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              batch_size=batch_size)  # fmt: skip
    module.train()
    steps, total = 0, 0.0
    per_epoch = poisson_plan(int(released_rows), batch_size)[2] if engine is not None else len(loader)
    budget = max_steps if max_steps is not None else epochs * per_epoch
    clock = time.perf_counter
    sampling = compute = stepping = 0.0
    noising = [0.0]
    if engine is not None and profiling.enabled():  # time the noise draw inside the optimiser step
        add_noise = opt.add_noise

        def _timed_add_noise() -> None:
            t = clock()
            add_noise()
            noising[0] += clock() - t

        opt.add_noise = _timed_add_noise  # type: ignore[method-assign]
    t0 = clock()
    setup = t0 - t_setup
    with warnings.catch_warnings():
        # Opacus's ghost clipping warns on each of its two backward passes that a full backward hook fires with
        # no input requiring gradients (it is meant to: the hooks only read the layers' outputs' gradients)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        while steps < budget:
            batches = iter(loader)
            while steps < budget:
                t0 = clock()
                batch = next(batches, None)
                t1 = clock()
                sampling += t1 - t0
                if batch is None:
                    break
                xb, yb = batch
                opt.zero_grad(set_to_none=True)
                out = module(xb)
                # Poisson sampling can draw an empty batch: it is still a step (noise is
                # still added and accounted), with a zero loss instead of a NaN mean.
                loss = criterion(out, yb) if len(xb) or extra else out.sum()
                loss.backward()
                t2 = clock()
                compute += t2 - t1
                opt.step()
                stepping += clock() - t2
                steps += 1
                total += float(loss.detach()) if len(xb) else 0.0  # ghost's wrapped loss of nothing is NaN
    if optimizer_hook is not None:
        optimizer_hook.close()
    released = tuple((float(z), float(q), int(n)) for z, q, n in engine.accountant.history) if engine else ()
    hist = [*map(tuple, history or []), *released]
    phases = {"engine-setup": setup, "sampling": sampling, "forward-backward": compute,
              "step (clip, update)": stepping - noising[0]}  # fmt: skip
    if noising[0]:
        phases["noise"] = noising[0]
    return TrainResult(steps=steps, loss=total / max(steps, 1), history=hist, released=released,  # type: ignore[arg-type]
                       phases=phases)  # fmt: skip
