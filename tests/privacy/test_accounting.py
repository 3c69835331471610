import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedready.errors import ConfigError
from fedready.privacy.accounting import calibrate_noise, compose_epsilon, dp_accounting_epsilon


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    epsilon=st.floats(0.3, 8.0),
    delta=st.sampled_from([1e-6, 1e-5, 1e-4]),
    rate=st.floats(0.01, 1.0),
    steps=st.integers(1, 400),
)
def test_calibrated_noise_never_exceeds_the_budget_and_is_tight(epsilon, delta, rate, steps):
    sigma = calibrate_noise(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps)
    spent = compose_epsilon([(sigma, rate, steps)], delta=delta)
    assert spent <= epsilon
    assert spent >= 0.97 * epsilon  # no budget wasted beyond Opacus's search tolerance


def test_composition_over_rounds_equals_one_long_run():
    # Ten rounds of 13 steps compose to the same epsilon as 130 steps in one go.
    per_round = [(2.0, 0.1, 13)] * 10
    assert compose_epsilon(per_round, delta=1e-5) == pytest.approx(compose_epsilon([(2.0, 0.1, 130)], delta=1e-5))


def test_per_round_reporting_understates_the_spending():
    # The peer pattern: a new PrivacyEngine per round reports one round's epsilon.
    one_round = compose_epsilon([(1.0, 0.1, 10)], delta=1e-5)
    composed = compose_epsilon([(1.0, 0.1, 10)] * 10, delta=1e-5)
    assert composed > 2 * one_round


def test_matches_opacus_directly():
    acc = RDPAccountant()
    acc.history = [(1.3, 0.05, 200)]
    assert compose_epsilon([(1.3, 0.05, 200)], delta=1e-5) == acc.get_epsilon(1e-5)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    history=st.lists(
        st.tuples(st.sampled_from([0.6, 1.1, 7.65625, 20.0]), st.sampled_from([1 / 3, 0.01, 0.2, 1.0]),
                  st.integers(1, 60)),
        min_size=1, max_size=8,
    ),
    delta=st.sampled_from([1e-6, 1e-5, 1e-3]),
)  # fmt: skip
def test_cached_rdp_curves_give_exactly_what_opacus_returns(history, delta):
    # compose_epsilon caches each (noise, rate) curve; Opacus recomputes it on every call
    acc = RDPAccountant()
    merged: dict = {}
    for s, q, n in history:
        merged[(s, q)] = merged.get((s, q), 0) + n
    acc.history = [(s, q, n) for (s, q), n in merged.items()]
    assert compose_epsilon(history, delta=delta) == acc.get_epsilon(delta=delta)


def test_prv_accountant_is_available_and_tighter():
    h = [(1.0, 0.05, 300)]
    assert compose_epsilon(h, delta=1e-5, accountant="prv") < compose_epsilon(h, delta=1e-5, accountant="rdp")


def test_empty_history_costs_nothing():
    assert compose_epsilon([], delta=1e-5) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_epsilon": 0.0}, "epsilon"),
        ({"target_epsilon": -1.0}, "epsilon"),
        ({"target_epsilon": math.inf}, "epsilon"),
        ({"target_delta": 1.0}, "delta"),
        ({"sample_rate": 0.0}, "batch_size"),
        ({"steps": 0}, "rounds"),
        ({"accountant": "moments"}, "accountant"),
    ],
)
def test_invalid_calibration_inputs_name_the_field(kwargs, field):
    args = {"target_epsilon": 1.0, "target_delta": 1e-5, "sample_rate": 0.1, "steps": 10, **kwargs}
    with pytest.raises(ConfigError) as e:
        calibrate_noise(**args)
    assert e.value.field == field


def _dp_accounting_direct(z: float, q: float, rounds: int, delta: float) -> float:
    """The Poisson-subsampled Gaussian composed ``rounds`` times, written here with dp-accounting alone."""
    import dp_accounting
    from dp_accounting import rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    acc = rdp.RdpAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def test_client_level_epsilon_equals_an_independent_computation_within_one_percent():
    """The issue's reference: 100 clients, 10 expected per round (Poisson), 50 rounds, z = 1, delta 1e-5."""
    from fedready.privacy.ledger import Ledger

    led = Ledger(run_id="r", delta=1e-5, target_epsilon=None, accountant="rdp")
    for r in range(1, 51):  # what the server charges per released round
        led.charge(round=r, client="*", level="client", noise_multiplier=1.0, sample_rate=10 / 100, steps=1,
                   delta=1e-5)  # fmt: skip
    independent = _dp_accounting_direct(1.0, 0.1, 50, 1e-5)
    assert led.client_level_epsilon == pytest.approx(independent, rel=0.01)
    assert 5.8 < led.client_level_epsilon < 5.95  # the mechanism as implemented: 5.88


@pytest.mark.parametrize(("z", "q", "steps"), [(1.0, 0.1, 50), (16.6, 1 / 3, 150), (12.0, 1.0, 1), (20.0, 1.0, 1)])
def test_dp_accounting_cross_check_agrees_with_opacus(z, q, steps):
    from fedready.privacy.accounting import dp_accounting_epsilon

    theirs = dp_accounting_epsilon([(z, q, steps)], delta=1e-5)
    assert compose_epsilon([(z, q, steps)], delta=1e-5) == pytest.approx(theirs["rdp"], rel=0.01)
    assert theirs["pld"] <= theirs["rdp"] * 1.001  # PLD is the tighter bound


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    epsilon=st.floats(0.8, 4.0),
    count=st.sampled_from([5.0, 20.0, 50.0]),
    query=st.sampled_from([8.0, 12.0, 30.0]),
    rate=st.sampled_from([0.05, 1 / 3, 1.0]),
    steps=st.integers(10, 300),
)
def test_calibration_beside_other_releases_never_exceeds_the_budget(epsilon, count, query, rate, steps):
    from fedready.privacy.accounting import calibrate_with_releases

    others = [(count, 1.0, 1), (query, 1.0, 1)]
    if compose_epsilon(others, delta=1e-5) >= epsilon * 0.95:
        return  # too little left for training: refused (tested below)
    z = calibrate_with_releases(target_epsilon=epsilon, target_delta=1e-5, sample_rate=rate, steps=steps,
                                releases=others)  # fmt: skip
    total = compose_epsilon([*others, (z, rate, steps)], delta=1e-5)
    assert total <= epsilon
    assert total >= 0.99 * epsilon  # tight: no budget left unused
    # never less noise than training alone needs (the smallest such noise, not Opacus's search result: that
    # one stops anywhere within 0.01 of the target epsilon, so it can sit above the smallest)
    assert z >= 0.99 * calibrate_noise(target_epsilon=epsilon, target_delta=1e-5, sample_rate=rate, steps=steps)
    assert compose_epsilon([(z / (1 + 2e-4), rate, steps), *others], delta=1e-5) > epsilon  # and the smallest


def test_calibration_refuses_when_the_other_releases_spend_the_budget():
    from fedready.privacy.accounting import calibrate_with_releases

    with pytest.raises(ConfigError, match="count and query releases alone"):
        calibrate_with_releases(target_epsilon=0.2, target_delta=1e-5, sample_rate=0.1, steps=10,
                                releases=[(2.0, 1.0, 1)])  # fmt: skip


def test_a_tiny_noise_multiplier_skips_the_pld_instead_of_exhausting_memory():
    # z = 0.01: the PLD grid would need gigabytes (a run was OOM-killed); the RDP bound is still reported
    import resource

    from fedready.privacy.accounting import PLD_MIN_NOISE, dp_accounting_epsilon

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = dp_accounting_epsilon([(0.01, 1.0, 2), (1.0, 0.1, 5)], delta=1e-5)
    assert out["pld"] is None and out["rdp"] > 1_000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no grid was built
    at_limit = dp_accounting_epsilon([(PLD_MIN_NOISE, 1.0, 1)], delta=1e-5)
    assert at_limit["pld"] is not None and at_limit["pld"] <= at_limit["rdp"] * 1.001


def test_dp_accounting_cross_check_is_the_same_with_a_runs_repeated_releases_merged():
    """A run's history repeats one (z, q) every round; the cross-check self-composes them once (fast, same value)."""
    import dp_accounting
    from dp_accounting import rdp

    history = [(0.9, 1.0, 1)] + [(1.1, 0.05, 20)] * 30 + [(3.0, 1.0, 1)]
    got = dp_accounting_epsilon(history, delta=1e-5)
    one_by_one = rdp.RdpAccountant()
    for z, q, n in history:  # the releases composed one by one, as they happened
        base = dp_accounting.GaussianDpEvent(z)
        event = base if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, base)
        one_by_one.compose(dp_accounting.SelfComposedDpEvent(event, n))
    assert got["rdp"] == pytest.approx(one_by_one.get_epsilon(1e-5), rel=1e-9)
    assert got["pld"] <= got["rdp"]  # the PLD is the tighter bound, and still an upper bound
    assert compose_epsilon(history, delta=1e-5) == pytest.approx(got["rdp"], rel=0.02)


def test_calibration_beside_releases_whose_best_order_is_below_two_still_finds_the_noise():
    """Integer orders alone cannot fit here (the count release spends the budget on them): all orders can."""
    from fedready.privacy.accounting import calibrate_with_releases

    releases = [(0.2, 1.0, 1)]
    z = calibrate_with_releases(target_epsilon=35.104, target_delta=1e-5, sample_rate=0.1, steps=10, releases=releases)
    assert compose_epsilon([*releases, (z, 0.1, 10)], delta=1e-5) <= 35.104


@pytest.mark.parametrize(("rate", "steps", "field"), [(0.0, 10, "batch_size"), (1.5, 10, "batch_size"),
                                                      (0.1, 0, "rounds")])  # fmt: skip
def test_calibration_beside_releases_refuses_an_impossible_rate_or_step_count(rate, steps, field):
    from fedready.privacy.accounting import calibrate_with_releases

    with pytest.raises(ConfigError) as e:
        calibrate_with_releases(target_epsilon=1.0, target_delta=1e-5, sample_rate=rate, steps=steps,
                                releases=[(20.0, 1.0, 1)])  # fmt: skip
    assert e.value.field == field
