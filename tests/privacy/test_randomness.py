"""What draws the DP noise: the torch generator's whole MT19937 state from OS entropy, not a 64-bit seed."""

from __future__ import annotations

import struct

import numpy as np
import torch

from fedready.privacy.randomness import secret_numpy_rng, secret_torch_generator


def _words(gen: torch.Generator) -> np.ndarray:
    raw = gen.get_state().numpy().tobytes()
    return np.frombuffer(raw[24 : 24 + 8 * 624], dtype="<u8")


def test_the_noise_generator_state_is_filled_from_os_entropy_not_from_a_seed():
    a, b = secret_torch_generator(), secret_torch_generator()
    wa, wb = _words(a), _words(b)
    # 624 independent 32-bit words each: a 64-bit seed's expansion could not be told apart from this by
    # a glance, but two draws sharing any word would be a 2^-32 event per word
    assert (wa != wb).sum() == 624 and wa.max() < 2**32 and len(np.unique(wa)) > 620
    assert struct.unpack_from("<QiiQ", a.get_state().numpy().tobytes(), 0) == (0, 1, 1, 0)  # twists before output
    x, y = torch.randn(1000, generator=a), torch.randn(1000, generator=b)
    assert not torch.equal(x, y) and abs(float(x.mean())) < 0.2 and 0.8 < float(x.std()) < 1.2


def test_the_state_is_not_one_a_64_bit_seed_gives():
    gen = secret_torch_generator()
    words = _words(gen)
    # MT19937's seeding fills word i+1 from word i (Knuth's multiplier): a seeded state obeys it, ours does not
    seeded = _words(torch.Generator().manual_seed(int(words[0])))
    assert seeded[0] == words[0] and not np.array_equal(seeded[1:], words[1:])
    follows = [(1812433253 * (int(w) ^ (int(w) >> 30)) + i + 1) & 0xFFFFFFFF == int(words[i + 1])
               for i, w in enumerate(words[:-1])]  # fmt: skip
    assert sum(follows) < 3


def test_numpy_draws_are_pcg64_from_os_entropy():
    a, b = secret_numpy_rng(), secret_numpy_rng()
    assert type(a.bit_generator).__name__ == "PCG64" and a.random() != b.random()
