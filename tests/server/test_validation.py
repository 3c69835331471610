import numpy as np
import pytest

from fedready import constants as K
from fedready.server.validation import UpdateValidator, update_norm

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def _upd(scale=0.1, seed=0, **override):
    rng = np.random.default_rng(seed)
    arrays = {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in REF.items()}
    arrays.update(override)
    return arrays


def _honest(n=5):
    return [(str(i), 100 + i, _upd(seed=i)) for i in range(n)]


def _reasons(updates, **kw):
    keep, rej = UpdateValidator(**kw).validate(updates, REF)
    return keep, {r.client: r.reason for r in rej}


def test_honest_updates_are_all_accepted():
    keep, reasons = _reasons(_honest())
    assert keep == [0, 1, 2, 3, 4] and reasons == {}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"w": np.zeros((2, 3), np.float32)}, K.REJECT_SHAPE),
        ({"extra": np.zeros(1, np.float32)}, K.REJECT_SHAPE),
        ({"w": np.zeros((3, 2), np.float64)}, K.REJECT_DTYPE),
        ({"b": np.array([np.nan, 0], np.float32)}, K.REJECT_NON_FINITE),
        ({"b": np.array([np.inf, 0], np.float32)}, K.REJECT_NON_FINITE),
    ],
)
def test_malformed_update_is_rejected_with_its_reason(bad, reason):
    updates = _honest()
    updates.append(("x", 9, _upd(seed=9, **bad)))
    keep, reasons = _reasons(updates)
    assert reasons == {"x": reason}
    assert 5 not in keep and len(keep) == 5


def test_scaled_update_is_rejected_against_the_round_median():
    updates = _honest()
    updates.append(("boost", 7, {k: v * 100 for k, v in _upd(seed=7).items()}))
    keep, reasons = _reasons(updates, median_factor=10)
    assert reasons == {"boost": K.REJECT_NORM_MEDIAN}


def test_update_above_the_clip_bound_is_rejected():
    updates = _honest()
    updates.append(("big", 8, _upd(scale=2.0, seed=8)))
    keep, reasons = _reasons(updates, clip_bound=1.0)
    assert reasons == {"big": K.REJECT_NORM_CLIP}


def test_every_rejection_reason_is_covered_here():
    # the parametrised cases above plus the two norm tests
    assert set(K.REJECT_REASONS) == {K.REJECT_SHAPE, K.REJECT_DTYPE, K.REJECT_NON_FINITE, K.REJECT_NORM_CLIP,
                                     K.REJECT_NORM_MEDIAN}  # fmt: skip


def test_update_norm():
    u = {"w": np.full((3, 2), 1.0, np.float32), "b": np.full(2, 1.0, np.float32)}
    assert update_norm(u, REF) == pytest.approx(np.sqrt(8))
