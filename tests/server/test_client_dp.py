"""Client-level DP at the sensitivity the accountant assumes, on every path.

Each test adds or removes one client and measures how far the *pre-noise* aggregate moves:
never more than ``C / m`` (C the clip the noise is sized for, m the fixed denominator).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedready import constants as K
from fedready.server.client_dp import AdaptiveClipping, ClientLevelDP, clipped_sum
from fedready.server.validation import UpdateValidator

SHAPES = {"w": (4, 3), "b": (3,)}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _updates(n: int, seed: int, scale: float = 3.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: (rng.normal(0, scale, s)).astype(np.float32) for k, s in SHAPES.items()} for _ in range(n)]


def _reference() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}


def _dist(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def _strategy(**kw) -> ClientLevelDP:
    return ClientLevelDP(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.1, population=100, **kw)


def _pre_noise(dp: ClientLevelDP, updates, reference, **kw) -> dict[str, np.ndarray]:
    dp.aggregate_arrays(updates, reference, **kw)
    return dp.last_pre_noise


def test_the_denominator_is_fixed_so_one_client_moves_the_aggregate_by_at_most_c_over_m():
    ref = _reference()
    for seed in range(20):
        ups = _updates(12, seed)
        for drop in range(12):  # remove any one client (a dropout, a rejection, a decline: all contribute zero)
            dp = _strategy()
            with_all = _pre_noise(dp, ups, ref)
            without = _pre_noise(dp, ups[:drop] + ups[drop + 1 :], ref)
            assert _dist(with_all, without) <= dp.clipping_norm / dp.denominator + 1e-9
    # a variable denominator (the mean over replies) moves by about twice as much: the bug this replaces
    ups = _updates(2, 0, scale=100.0)
    mean_both = {k: np.mean([clipped_sum([u], ref, 1.0)[0][k] for u in ups], axis=0) for k in SHAPES}
    mean_one = clipped_sum(ups[:1], ref, 1.0)[0]
    assert _dist(mean_both, mean_one) > 1.0 / 2  # vs 1/m = 0.1 with m = 10 fixed


def test_adaptive_clipping_clips_and_noises_with_the_same_norm_then_updates_it():
    dp = _strategy(adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=1.0))
    ref = _reference()
    norms = []
    for r in range(5):
        c_before = dp.clipping_norm
        std_before = dp.noise_std()
        ups = _updates(10, r)
        a = _pre_noise(dp, ups, ref)
        assert dp.last_clip == c_before  # the aggregate was clipped with C(t) ...
        assert std_before == pytest.approx(dp.update_noise_multiplier * c_before)  # ... and noised for C(t)
        dp.clipping_norm = c_before
        b = _pre_noise(dp, ups[1:], ref)
        assert _dist(a, b) <= c_before / dp.denominator + 1e-9
        norms.append(dp.clipping_norm)
    assert norms[-1] != 1.0  # and C moved only after the release
    # Theorem 1 of Andrew et al.: the two releases together are the configured multiplier z
    z_upd, z_cnt = dp.update_noise_multiplier, 2 * dp.count_stddev
    assert (z_upd**-2 + z_cnt**-2) ** -0.5 == pytest.approx(dp.noise_multiplier)


def test_secagg_sum_of_client_clipped_updates_has_the_same_sensitivity():
    """Under SecAgg+ the server gets the sum of what clients clipped themselves; it must not re-scale it."""
    ref = _reference()
    dp = _strategy(clip_on_client=True)
    ups = [clipped_sum([u], ref, 1.0)[0] for u in _updates(9, 3)]  # what each client's fixedclipping_mod sends

    def secagg_sum(us):
        return {k: ref[k] + sum(u[k] for u in us) for k in ref}

    a = _pre_noise(dp, [secagg_sum(ups)], ref, summed_by_secagg=True)
    b = _pre_noise(dp, [secagg_sum(ups[:-1])], ref, summed_by_secagg=True)
    assert _dist(a, b) <= 1.0 / dp.denominator + 1e-9
    assert _dist(a, b) > 0.5 / dp.denominator  # the sum really was not clipped again as one vector


def test_poisson_sampling_takes_each_client_independently_at_rate_q():
    dp = _strategy()
    counts = np.array([len(dp.sample(range(100))) for _ in range(2000)])
    assert abs(counts.mean() - 10) < 0.3 and 2.0 < counts.var() < 12.0  # Binomial(100, 0.1): var 9
    # the draws come from OS entropy: two strategies built alike sample differently
    assert [dp.sample(range(100)) for _ in range(3)] != [_strategy().sample(range(100)) for _ in range(3)]


def test_noise_is_sized_for_the_sum_and_divided_by_the_fixed_denominator():
    dp = _strategy()
    ref = {"w": np.zeros(20000, dtype=np.float32)}
    out = dp.aggregate_arrays([], ref)  # nobody answered: the release is the noise alone
    assert np.std(out["w"]) == pytest.approx(dp.noise_multiplier * dp.clipping_norm / dp.denominator, rel=0.03)


def test_under_client_dp_a_rejection_never_depends_on_other_clients():
    ref = _reference()
    honest = _updates(5, 1)
    huge = {k: v * 1e6 for k, v in honest[0].items()}
    v = UpdateValidator(median_factor=2.0, structural_only=True)
    keep, rejected = v.validate([(str(i), i, u) for i, u in enumerate([*honest, huge])], ref)
    assert keep == list(range(6)) and rejected == []  # the clip bounds it; no median rule
    nan = {k: np.full_like(x, np.nan) for k, x in honest[0].items()}
    keep, rejected = v.validate([("0", 0, nan), ("1", 1, honest[1])], ref)
    assert keep == [1] and rejected[0].reason == K.REJECT_NON_FINITE


def test_aggregate_train_uses_replies_and_reports_the_clip():
    dp = _strategy()
    ref = ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})
    dp.current = ref
    replies = [Message(content=RecordDict({K.ARRAYS: ArrayRecord({k: Array(v) for k, v in u.items()}),
                                           K.METRICS: MetricRecord({K.NUM_EXAMPLES: 1})}),
                       dst_node_id=0, message_type=MessageType.TRAIN) for u in _updates(3, 9)]  # fmt: skip
    arrays, metrics = dp.aggregate_train(1, replies)
    assert metrics["aggregated"] == 3 and metrics["clipping-norm"] == 1.0
    assert {k: a.numpy().dtype for k, a in arrays.items()} == {k: np.dtype(np.float32) for k in SHAPES}
