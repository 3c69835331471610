"""SecAgg+ masks with the full entropy of their seeds: a ChaCha20 stream keyed by HKDF-SHA256.

Notes
-----
Flower 1.42 expands each SecAgg+ mask seed (a client's 32-byte private-mask seed, or the key a pair
of clients derive by ECDH) with ``pseudo_rand_gen``, which folds the seed into 32 bits by XOR and
seeds NumPy's Mersenne Twister with them: every mask is one of at most 2**32 sequences. Whoever
sees a masked vector can try them all (one masked vector minus a candidate mask is either uniform
noise or a clipped, quantised update), so the mask hides an update behind 32 bits, not 256. Its
``randint(0, num_range - 1)`` also draws from ``num_range - 1`` values, not the whole ring.

:func:`mask_stream` keys a ChaCha20 stream (RFC 8439) with HKDF-SHA256 (RFC 5869) of the whole
seed, and reduces 64-bit words modulo ``num_range`` (Flower requires a power of two, so the masks
are exactly uniform over the ring; for any other range the bias is below ``num_range / 2**64``).
A mask is then as hard to guess as the seed itself (the security of SecAgg+, Bell et al. 2020,
rests on the PRG being cryptographic).

:func:`full_entropy_masks` puts :func:`mask_stream` in the place of Flower's generator for as long
as it is held, on the client (around ``secaggplus_mod``) and on the server (around the workflow's
unmasking stage), where Flower's modules look it up at call time. Both sides must use it: a client
of another SecAgg+ implementation produces a sum the server cannot unmask (the run's model is then
garbage, not leaked). It is the only change; the protocol is Flower's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["MASK_INFO", "full_entropy_masks", "mask_stream"]

MASK_INFO = b"fedready secagg+ mask v1"  # HKDF info: masks of no other protocol share this key
_FLOWER_MODULES = ("flwr.client.mod.secure_aggregation.secaggplus_mod",
                   "flwr.server.workflow.secure_aggregation.secaggplus_workflow")  # fmt: skip
_lock = threading.Lock()
_holders = 0
_originals: dict[str, object] = {}


def mask_stream(seed: bytes, num_range: int, dimensions_list: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks for arrays of ``dimensions_list``, uniform over ``[0, num_range)``, from all of ``seed``.

    The signature of Flower's ``pseudo_rand_gen`` (a drop-in replacement): one int64 array per shape
    (a 0-d array for an empty shape), drawn in order from one ChaCha20 keystream.

    Raises
    ------
    ValueError
        If ``seed`` is shorter than 16 bytes or ``num_range`` is not in ``[2, 2**63]``.
    """
    if len(seed) < 16:
        raise ValueError(f"a mask seed needs at least 16 bytes of entropy, got {len(seed)}")
    if not 2 <= num_range <= 2**63:
        raise ValueError(f"num_range must be in [2, 2**63], got {num_range}")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASK_INFO).derive(bytes(seed))
    sizes = [int(np.prod(d, dtype=np.int64)) if len(d) else 1 for d in dimensions_list]
    total = sum(sizes)
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(b"\x00" * (8 * total)), dtype="<u8")
    values = (words % np.uint64(num_range)).astype(np.int64)
    out, start = [], 0
    for d, size in zip(dimensions_list, sizes, strict=True):
        chunk = values[start : start + size]
        out.append(np.array(chunk[0], dtype=np.int64) if len(d) == 0 else chunk.reshape(d))
        start += size
    return out


@contextmanager
def full_entropy_masks() -> Iterator[None]:
    """Use :func:`mask_stream` for Flower's SecAgg+ masks while held (re-entrant, thread-safe)."""
    import importlib

    global _holders
    with _lock:
        if _holders == 0:
            for name in _FLOWER_MODULES:
                module = importlib.import_module(name)
                _originals[name] = module.pseudo_rand_gen
                module.pseudo_rand_gen = mask_stream
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                for name in _FLOWER_MODULES:
                    importlib.import_module(name).pseudo_rand_gen = _originals.pop(name)
