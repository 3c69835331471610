"""Model weights as NumPy arrays: digests and (de)serialisation helpers."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

import numpy as np

__all__ = ["arrays_digest", "load_npz", "save_npz"]


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Return ``sha256:<hex>`` over names, dtypes, shapes and bytes, in key order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def save_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise named arrays to ``.npz`` bytes (no pickles)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """Read named arrays written by :func:`save_npz` (pickles refused)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
