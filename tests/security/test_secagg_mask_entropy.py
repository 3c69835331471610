"""Issue 21: Flower's SecAgg+ masks carry at most 32 bits of entropy; fedready's carry the whole seed's.

Flower's ``pseudo_rand_gen`` XOR-folds a 256-bit mask seed into a 32-bit Mersenne Twister seed, so two
seeds with the same fold give the same mask (whoever holds a masked vector can try all 2**32), and its
``randint(0, num_range - 1)`` never draws the ring's top value. fedready's SecAgg+ (client mod and server
workflow) expands the whole seed with HKDF + ChaCha20 (:mod:`fedready.privacy.masks`); the SecAgg+ end
to end test (tests/server/test_secagg_e2e.py) shows both sides agree (the unmasked sum is the mean).
"""

from __future__ import annotations

import importlib
import os

import numpy as np
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from fedready.privacy.masks import full_entropy_masks, mask_stream

SHAPES = [(40, 25), (), (7,)]
FLOWER = ("flwr.client.mod.secure_aggregation.secaggplus_mod",
          "flwr.server.workflow.secure_aggregation.secaggplus_workflow")  # fmt: skip


def _same_fold(seed: bytes) -> bytes:
    """Another 32-byte seed with the same XOR of its 4-byte words (flip one bit in two words)."""
    b = bytearray(seed)
    b[0] ^= 0x01
    b[4] ^= 0x01
    return bytes(b)


def test_mask_seed_folding_attack_makes_distinct_secrets_share_a_mask():
    a = os.urandom(32)
    b = _same_fold(a)
    assert a != b
    flower_a, flower_b = pseudo_rand_gen(a, 2**32, SHAPES), pseudo_rand_gen(b, 2**32, SHAPES)
    assert all(np.array_equal(x, y) for x, y in zip(flower_a, flower_b, strict=True))  # the harm: <= 32 bits
    ours_a, ours_b = mask_stream(a, 2**32, SHAPES), mask_stream(b, 2**32, SHAPES)
    assert not np.array_equal(ours_a[0], ours_b[0])  # every bit of the seed changes the mask
    assert [x.shape for x in ours_a] == [x.shape for x in flower_a] and all(x.dtype == np.int64 for x in ours_a)
    assert np.array_equal(mask_stream(a, 2**32, SHAPES)[0], ours_a[0])  # the same seed: the same mask


def test_masks_cover_the_whole_ring():
    seed = os.urandom(32)
    assert pseudo_rand_gen(seed, 8, [(20_000,)])[0].max() == 6  # Flower never draws the top value
    ours = mask_stream(seed, 8, [(20_000,)])[0]
    counts = np.bincount(ours, minlength=8)
    assert ours.min() == 0 and ours.max() == 7 and len(counts) == 8
    assert np.all(np.abs(counts - 2500) < 5 * np.sqrt(2500))  # uniform, within 5 sigma per value


def test_both_sides_of_fedready_secagg_use_the_full_entropy_generator(monkeypatch):
    from flwr.server.workflow import SecAggPlusWorkflow

    import fedready.client.secagg as client_secagg
    from fedready.server.secagg import _FullEntropySecAggPlus

    seen = []

    def current() -> list[bool]:
        return [importlib.import_module(m).pseudo_rand_gen is mask_stream for m in FLOWER]

    monkeypatch.setattr(client_secagg, "secaggplus_mod", lambda msg, ctx, nxt: seen.append(("client", current())))
    client_secagg.full_entropy_secaggplus_mod(None, None, None)
    monkeypatch.setattr(SecAggPlusWorkflow, "unmask_stage", lambda self, g, c, s: seen.append(("server", current())))
    _FullEntropySecAggPlus(num_shares=3, reconstruction_threshold=2).unmask_stage(None, None, None)
    assert seen == [("client", [True, True]), ("server", [True, True])]
    assert current() == [False, False]  # Flower's own generator is back outside fedready's SecAgg+
    with full_entropy_masks(), full_entropy_masks():  # re-entrant
        assert current() == [True, True]
    assert current() == [False, False]
