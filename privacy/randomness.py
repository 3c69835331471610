"""Secret randomness for every DP mechanism: operating-system entropy, never the configuration.

Notes
-----
A DP guarantee holds only if the adversary cannot predict the noise. If the noise and the
Poisson sampling are drawn from a generator seeded by ``--seed`` (which is written to
``config.json``, shipped in every artifact, and chosen by the coordinator in a deployment),
anyone with the configuration and the round's starting model can re-run the client's
training bit for bit, subtract the noise, and test membership exactly. So every generator
that drives noise or sampling is seeded here from ``os.urandom`` (128 bits for NumPy's PCG64,
64 bits, the most torch's Mersenne Twister takes, for torch), and the seed is never logged,
returned or saved.

Residual caveats, stated in the README next to the epsilon:

* torch's CPU generator is a Mersenne Twister, not a cryptographic generator: its state could
  be recovered from hundreds of its raw outputs, but no raw output is ever released, only
  sums of clipped gradients plus noise. Opacus's ``secure_mode`` would use ``torchcsprng``,
  which has no build for our torch; see :func:`harden_optimizer`.
* Floating-point Gaussian samples leak through their low-order bits (Mironov 2012, "On
  significance of the least significant bits for differential privacy", CCS; Jin et al. 2022,
  arXiv:2112.05307). :func:`harden_optimizer` turns on Opacus's mitigation (each noise value
  is the scaled sum of four Gaussian draws, arXiv:2107.10138, Sec. 5.1), which Opacus only
  uses in ``secure_mode``.

``--insecure-seeded-noise`` (a research option) derives the seeds from the configuration
instead, so two runs are bit-identical; such runs are stamped "not private" everywhere and
``registry promote`` refuses their artifacts.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["dp_numpy_rng", "harden_optimizer", "secret_numpy_rng", "secret_torch_generator", "seeded_torch_generator"]


def secret_numpy_rng() -> np.random.Generator:
    """A NumPy generator seeded with 128 bits of operating-system entropy."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def dp_numpy_rng(insecure_seed: tuple[int, ...] | None = None) -> np.random.Generator:
    """The generator for one DP mechanism: secret, unless ``--insecure-seeded-noise`` gives its seed parts."""
    if insecure_seed is None:
        return secret_numpy_rng()
    return np.random.default_rng(np.random.SeedSequence([int(x) for x in insecure_seed]))


def secret_torch_generator():  # -> torch.Generator (torch imported lazily: edge installs have none)
    """A torch CPU generator seeded with 64 bits of operating-system entropy (the most it takes)."""
    import torch

    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def seeded_torch_generator(seed: int):
    """A torch generator with a *known* seed: only for ``--insecure-seeded-noise`` and non-private runs."""
    import torch

    return torch.Generator().manual_seed(int(seed))


def harden_optimizer(optimizer) -> None:
    """Use Opacus's floating-point-safe noise sampler on a DP optimizer with our own generator.

    Opacus draws each noise value as the scaled sum of four Gaussians (robust to the
    least-significant-bit attacks of arXiv:2112.05307) only when ``secure_mode`` is on, and
    ``secure_mode`` requires ``torchcsprng``. The flag on the optimizer selects the sampler alone;
    the generator stays the OS-entropy-seeded one handed to ``make_private``.
    """
    if not hasattr(optimizer, "secure_mode"):
        raise TypeError(f"expected an Opacus DPOptimizer, got {type(optimizer).__name__}")
    optimizer.secure_mode = True
