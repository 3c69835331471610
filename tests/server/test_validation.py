import json

import numpy as np
import pytest

from fedready import constants as K
from fedready.server.validation import UpdateValidator, dp_sgd_scale, update_norm

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


def _dp_round(rows, *, boost=None, seed=0, params=8, lr=1.0, clip=1.0, steps=3, batch=256):
    """Updates of one DP-SGD round: a shared gradient direction (60% of the clip per step) plus each client's noise.

    A client's sample rate is min(1, batch / rows) and its noise multiplier grows as it shrinks (less
    amplification), as the clients calibrate it: the smallest clients send by far the largest updates.
    """
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(params)
    direction /= np.linalg.norm(direction)
    updates, scales = [], []
    for i, n in enumerate(rows):
        rate = min(1.0, batch / n)
        sigma = 1.0 if rate < 1 else 1.0 * (batch / n) * 100
        drift, noise = dp_sgd_scale(steps=steps, noise_multiplier=sigma, sample_rate=rate, rows=n, lr=lr, clip=clip,
                                    params=params)  # fmt: skip
        delta = 0.6 * drift * direction + noise / np.sqrt(params) * rng.standard_normal(params)
        if boost is not None and i == boost:
            delta = 100 * delta
        arrays = {"w": delta[:6].reshape(3, 2).astype(np.float32), "b": delta[6:].astype(np.float32)}
        updates.append((str(i), 100 + i, arrays))
        scales.append((drift, noise))
    return updates, scales


SKEWED = [40, 90, 600, 2500, 8000, 12000]  # rows per client: 300x between the smallest and the largest


@pytest.mark.parametrize("seed", range(5))
def test_under_dp_an_honest_client_of_a_very_different_size_is_not_rejected(seed):
    updates, scales = _dp_round(SKEWED, seed=seed)
    norms = [update_norm(u, REF) for _, _, u in updates]
    assert max(norms) > 10 * float(np.median(norms))  # the raw median rule would reject the smallest client
    assert _reasons(updates, median_factor=10)[1] != {}
    keep, rej = UpdateValidator(median_factor=10).validate(updates, REF, scales)
    assert keep == list(range(len(SKEWED))) and rej == []


@pytest.mark.parametrize("boost", range(len(SKEWED)))
def test_under_dp_a_x100_update_is_still_rejected_whatever_the_clients_size(boost):
    updates, scales = _dp_round(SKEWED, boost=boost, seed=boost)
    keep, rej = UpdateValidator(median_factor=10).validate(updates, REF, scales)
    assert [(r.client, r.reason) for r in rej] == [(str(boost), K.REJECT_NORM_MEDIAN)]
    assert "x an honest update of its size" in rej[0].detail


def test_dp_sgd_scale_is_the_clipped_steps_and_the_noise_random_walk():
    drift, noise = dp_sgd_scale(steps=4, noise_multiplier=2.0, sample_rate=0.5, rows=200, lr=0.5, clip=1.5, params=25)
    assert drift == pytest.approx(0.5 * 1.5 * 4)
    assert noise == pytest.approx(0.5 * 1.5 * 2.0 * np.sqrt(4 * 25) / 100)


def test_a_client_rejected_in_most_rounds_is_named_in_one_line(tmp_path):
    from fedready.server.app import mostly_rejected, rejection_lines

    rej = {"client": "3", "reason": K.REJECT_NORM_MEDIAN, "norm": 424.4}
    history = [{"round": r, "trained": ["1", "2", "3"], "rejected": [rej] if r != 2 else []} for r in (1, 2, 3)]
    history[1]["rejected"] = [{**rej, "client": "2"}]  # client 2: once in three rounds, not most
    assert mostly_rejected(history) == [("3", 2, 3, [K.REJECT_NORM_MEDIAN])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    assert rejection_lines(tmp_path) == [
        f"warning: client 3's updates were rejected in 2 of the 3 rounds it trained in ({K.REJECT_NORM_MEDIAN}): its "
        f"rows barely shaped the model (see {tmp_path}/audit.jsonl)"
    ]
