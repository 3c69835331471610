"""Secret randomness for every DP mechanism: operating-system entropy, never the configuration.

Notes
-----
A DP guarantee holds only if the adversary cannot predict the noise. If the noise and the
Poisson sampling are drawn from a generator seeded by ``--seed`` (which is written to
``config.json``, shipped in every artifact, and chosen by the coordinator in a deployment),
anyone with the configuration and the round's starting model can re-run the client's
training bit for bit, subtract the noise, and test membership exactly. So every generator
that drives noise or sampling is seeded here from ``os.urandom``, and the seed is never logged,
returned or saved:

* **DP-SGD noise and Poisson sampling** (torch): a CPU ``torch.Generator`` (MT19937) whose whole
  state, 624 words of 32 bits (19,968 bits), is filled from ``os.urandom``
  (:func:`secret_torch_generator`), not a seed: ``manual_seed`` takes at most 64 bits, which a
  brute-force search over seeds could in principle enumerate. One generator per client and round
  draws both the Poisson batches and the noise.
* **Everything else** (the noisy row count, the post-training query noise, client-level noise,
  client sampling, the audit's canaries): NumPy's PCG64 seeded through ``SeedSequence`` with 128
  bits of ``os.urandom`` (:func:`secret_numpy_rng`).

What this resists, and what not (stated in docs/reference/privacy.md next to the guarantee):

* Guessing or replaying the noise from anything the coordinator knows or chooses (``--seed``, the
  configuration, the round), and brute force over seeds (2**128 and 2**19968 possibilities).
* Neither generator is cryptographic: MT19937 is linear, and 624 consecutive *raw* 32-bit outputs
  give its state away (PCG64 similarly from a few outputs). No raw output is ever released, only
  sums of clipped gradients plus noise rounded to float32, and no attack recovering either state
  from such sums is known; but there is no cryptographic argument for it either. Opacus's
  ``secure_mode`` would draw from ``torchcsprng`` (AES-CTR): its last release (0.2.1, 2021) is
  built for torch 1.8 and Python <= 3.9, and pip finds no distribution for our Python 3.11 and
  torch 2.13, so it cannot be used; see :func:`harden_optimizer`.
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
    """A NumPy PCG64 generator seeded (through ``SeedSequence``) with 128 bits of operating-system entropy."""
    return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))


def dp_numpy_rng(insecure_seed: tuple[int, ...] | None = None) -> np.random.Generator:
    """The generator for one DP mechanism: secret, unless ``--insecure-seeded-noise`` gives its seed parts."""
    if insecure_seed is None:
        return secret_numpy_rng()
    return np.random.default_rng(np.random.SeedSequence([int(x) for x in insecure_seed]))


_MT_WORDS = 624  # MT19937's state: 624 words of 32 bits
_MT_HEADER = "<QiiQ"  # torch's CPU generator state: initial seed, left, seeded, next, then 624 uint64 words


def secret_torch_generator():  # -> torch.Generator (torch imported lazily: edge installs have none)
    """A torch CPU generator (MT19937) whose whole state, 19,968 bits, comes from operating-system entropy.

    Notes
    -----
    ``manual_seed`` takes a 64-bit seed; this writes the 624 state words themselves through
    ``set_state`` (torch's documented state layout: a header, then the words as uint64), with
    ``left = 1`` so the first draw twists the state before any output. The recorded "initial
    seed" is 0 and means nothing. A state that torch does not accept raises (never a weaker
    fallback).
    """
    import struct

    import torch

    gen = torch.Generator().manual_seed(0)
    state = bytearray(gen.get_state().numpy().tobytes())
    words = np.frombuffer(os.urandom(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    header = struct.calcsize(_MT_HEADER)
    struct.pack_into(_MT_HEADER, state, 0, 0, 1, 1, 0)  # seed (none), left, seeded, next
    state[header : header + 8 * _MT_WORDS] = words.tobytes()
    gen.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())
    return gen


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
