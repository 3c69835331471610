"""The auditing statistics: Steinke et al.'s one-run bound, Andrew et al.'s Gaussian fit, canaries and scores."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from fedready.contract import row_validity, validate_contract
from fedready.encoding import FeatureEncoder
from fedready.privacy.auditing import (
    AUDIT_FILE,
    AUDIT_FORMAT,
    canary_audit,
    canary_records,
    canary_update,
    cosine_scores,
    default_guess_grid,
    empirical_privacy_line,
    flatten_update,
    gaussian_fit_epsilon,
    gradient_canary_scores,
    inclusion_bits,
    isotropic_directions,
    loss_scores,
    one_run_audit,
    one_run_epsilon,
    one_run_p_value,
    read_audits,
    subsampled_gaussian_scores,
    two_gaussian_epsilon,
)
from fedready.schema import CategoricalColumn, DataSchema, NumericColumn, Target

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def _listing_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke et al.'s appendix listing, written out as a plain loop (the oracle)."""
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, total / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def _perfect_guessing_bound(r: int, beta: float) -> float:
    """Theorem 1 with delta = 0 and r right guesses out of r: q^r = beta, eps = logit(q)."""
    q = beta ** (1.0 / r)
    return math.log(q / (1.0 - q))


counts = st.integers(1, 400).flatmap(
    lambda m: st.integers(0, m).flatmap(lambda r: st.tuples(st.just(m), st.just(r), st.integers(0, r)))
)
deltas = st.sampled_from([0.0, 1e-6, 1e-5, 1e-3])


# ---------------------------------------------------------------- the one-run bound


@FAST
@given(mrv=counts, eps=st.floats(0, 8), delta=deltas)
def test_p_value_is_the_papers_listing(mrv, eps, delta):
    m, r, v = mrv
    got = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(_listing_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("r", [10, 100, 1000, 5000])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_perfect_guessing_without_delta_gives_theorem_1s_closed_form(r, confidence):
    got = one_run_epsilon(canaries=r, guesses=r, correct=r, delta=0.0, confidence=confidence)
    assert got == pytest.approx(_perfect_guessing_bound(r, 1 - confidence), rel=1e-9)


@FAST
@given(mrv=counts, delta=deltas)
def test_bound_is_zero_for_guesses_at_chance(mrv, delta):
    m, r, v = mrv
    assume(r >= 1)
    v = min(v, r // 2)  # at most half right: what coin flips achieve
    assert one_run_epsilon(canaries=m, guesses=r, correct=v, delta=delta) == 0.0


@FAST
@given(mrv=counts, extra=st.integers(1, 50), delta=deltas)
def test_bound_grows_with_right_guesses(mrv, extra, delta):
    m, r, v = mrv
    more = min(r, v + extra)
    low = one_run_epsilon(canaries=m, guesses=r, correct=v, delta=delta)
    high = one_run_epsilon(canaries=m, guesses=r, correct=more, delta=delta)
    assert high >= low


@FAST
@given(mrv=counts, eps=st.floats(0, 10), step=st.floats(1e-3, 3), delta=deltas)
def test_p_value_grows_with_epsilon(mrv, eps, step, delta):
    m, r, v = mrv
    p = [one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=e, delta=delta) for e in (eps, eps + step)]
    assert p[1] >= p[0] - 1e-12


@FAST
@given(mrv=counts, delta=deltas, confidence=st.sampled_from([0.9, 0.95, 0.99]))
def test_bound_never_exceeds_perfect_guessing_of_every_canary(mrv, delta, confidence):
    m, r, v = mrv
    got = one_run_epsilon(canaries=m, guesses=r, correct=v, delta=delta, confidence=confidence)
    assert got <= max(0.0, _perfect_guessing_bound(m, 1 - confidence)) + 1e-9  # too few canaries: never > 0
    # delta > 0 only weakens the claim being refuted
    assert got <= one_run_epsilon(canaries=m, guesses=r, correct=v, delta=0.0, confidence=confidence) + 1e-9


@FAST
@given(mrv=counts, delta=deltas)
def test_returned_bound_is_ruled_out_and_nothing_above_it_is(mrv, delta):
    m, r, v = mrv
    eps = one_run_epsilon(canaries=m, guesses=r, correct=v, delta=delta)
    assume(eps > 0)
    p_at = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    p_above = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps + 1e-6, delta=delta)
    assert p_at <= 1 - 0.95 < p_above


def test_randomized_response_at_a_known_epsilon_is_exceeded_at_most_beta_of_the_time():
    # Each canary's bit is reported truthfully with probability e^eps / (1 + e^eps): exactly eps-DP.
    # Guessing every canary makes the bound a binomial test, so it exceeds eps at most 5% of the time.
    rng = np.random.default_rng(17)
    eps, m, trials = 1.0, 1000, 2000
    q = math.exp(eps) / (1 + math.exp(eps))
    right = rng.binomial(m, q, size=trials)
    bounds = np.array([one_run_epsilon(canaries=m, guesses=m, correct=int(v), delta=0.0) for v in right])
    exceed = float((bounds > eps).mean())
    assert exceed <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)
    assert np.median(bounds) > 0.75 * eps  # and the bound is informative, not trivially 0


def test_gaussian_mechanism_bound_with_the_guess_grid_is_valid():
    # Each canary's score is N(1, sigma^2) if included, N(0, sigma^2) if not: the Gaussian mechanism with
    # sensitivity 1, whose exact epsilon at delta dp-accounting computes. The grid's best bound stays below it.
    rng = np.random.default_rng(5)
    delta, m, trials = 1e-5, 600, 150
    for sigma in (0.3, 0.6):
        true_eps = dp_accounting.get_epsilon_gaussian(sigma, delta)
        bounds = []
        for _ in range(trials):
            bits = inclusion_bits(m, rng=rng)
            scores = bits + sigma * rng.standard_normal(m)
            bounds.append(one_run_audit(scores, bits, delta=delta).epsilon)
        assert np.mean(np.array(bounds) > true_eps) <= 0.05
        assert np.median(bounds) > 1.0  # informative: these mechanisms leak a lot


def test_trying_a_grid_of_guess_counts_is_paid_for_with_a_union_bound():
    rng = np.random.default_rng(0)
    bits = inclusion_bits(400, rng=rng)
    scores = bits + 0.3 * rng.standard_normal(400)
    single = one_run_audit(scores, bits, delta=1e-5, guesses=[(100, 0)])
    assert single.epsilon == one_run_epsilon(canaries=400, guesses=100, correct=single.correct, delta=1e-5)
    assert single.hypotheses == 1
    repeated = one_run_audit(scores, bits, delta=1e-5, guesses=[(100, 0)] * 4)
    tested_at = 1 - 0.05 / 4
    assert repeated.epsilon == one_run_epsilon(canaries=400, guesses=100, correct=single.correct, delta=1e-5,
                                               confidence=tested_at)  # fmt: skip
    assert repeated.epsilon < single.epsilon


def test_default_grid_is_fixed_fractions_of_the_canaries():
    assert default_guess_grid(1600) == [(100, 0), (200, 0), (400, 0), (600, 0)]
    assert default_guess_grid(3) == [(1, 0)]
    grid = default_guess_grid(1000)
    assert all(0 < kp + kn <= 1000 for kp, kn in grid)


def test_scores_that_carry_no_information_give_no_bound():
    # All scores tie: the guesses follow canary index, independent of the bits.
    rng = np.random.default_rng(3)
    bits = inclusion_bits(2000, rng=rng)
    audit = one_run_audit(np.zeros(2000), bits, delta=1e-5)
    assert audit.epsilon == 0.0


def test_perfect_scores_hit_the_cap_of_the_best_guess_count():
    bits = np.array([True, False] * 500)
    audit = one_run_audit(bits.astype(float), bits, delta=0.0, guesses=[(500, 500)])
    assert (audit.guesses, audit.correct) == (1000, 1000)
    assert audit.epsilon == pytest.approx(_perfect_guessing_bound(1000, 0.05), rel=1e-9)
    reversed_scores = one_run_audit(-bits.astype(float), bits, delta=0.0, guesses=[(500, 500)])
    assert reversed_scores.epsilon == 0.0  # the auditor must orient scores "higher = included"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canaries": 10, "guesses": 11, "correct": 1, "delta": 0.0}, "correct <= guesses <= canaries"),
        ({"canaries": 10, "guesses": 5, "correct": 6, "delta": 0.0}, "correct <= guesses <= canaries"),
        ({"canaries": 0, "guesses": 0, "correct": 0, "delta": 0.0}, "canaries must be >= 1"),
        ({"canaries": 10.0, "guesses": 5, "correct": 5, "delta": 0.0}, "canaries must be an integer"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": 1.0}, "delta must be in"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": -1e-5}, "delta must be in"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": 0.0, "confidence": 95}, "confidence must be in"),
    ],
)
def test_misuse_of_the_bound_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        one_run_epsilon(**kwargs)


@pytest.mark.parametrize(
    ("scores", "included", "guesses", "message"),
    [
        ([0.1, 0.2], [True], None, "one bit per canary"),
        ([0.1, float("nan")], [True, False], None, "finite"),
        ([[0.1, 0.2]], [[True, False]], None, "1-D"),
        ([0.1, 0.2], [2, 0], None, "0/1"),
        ([0.1, 0.2], [1, 0], [(2, 1)], "k_pos \\+ k_neg <= 2"),
        ([0.1, 0.2], [1, 0], [(-1, 1)], "both >= 0"),
        ([0.1, 0.2], [1, 0], [], "at least one"),
    ],
)
def test_misuse_of_the_audit_is_refused(scores, included, guesses, message):
    with pytest.raises(ValueError, match=message):
        one_run_audit(scores, included, delta=1e-5, guesses=guesses)


# ---------------------------------------------------------------- the Gaussian-fit estimate


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-6, 1e-5, 1e-3])
def test_two_gaussians_of_equal_variance_match_dp_accountings_gaussian_mechanism(sigma, delta):
    got = two_gaussian_epsilon(mu0=0.0, sigma0=sigma, mu1=1.0, sigma1=sigma, delta=delta)
    assert got == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma, delta), rel=1e-6)
    # location and scale do not matter, nor which side is which
    moved = two_gaussian_epsilon(mu0=5.0, sigma0=3 * sigma, mu1=2.0, sigma1=3 * sigma, delta=delta)
    assert moved == pytest.approx(got, rel=1e-6)


def _hockey_stick_by_quadrature(p, q, eps):
    def integrand(x):
        return max(p.pdf(x) - math.exp(eps) * q.pdf(x), 0.0)

    lo = min(p.ppf(1e-15), q.ppf(1e-15))
    hi = max(p.isf(1e-15), q.isf(1e-15))
    return integrate.quad(integrand, lo, hi, limit=500, points=[p.mean(), q.mean()])[0]


@pytest.mark.parametrize(("mu1", "sigma1"), [(1.0, 1.3), (1.0, 0.7), (0.2, 2.0), (3.0, 1.05)])
def test_unequal_variances_solve_the_hockey_stick_equation(mu1, sigma1):
    # Independent check by numerical integration: at the returned epsilon, the larger of the two
    # divergences equals delta.
    delta = 1e-4
    eps = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=mu1, sigma1=sigma1, delta=delta)
    p, q = stats.norm(mu1, sigma1), stats.norm(0.0, 1.0)
    worst = max(_hockey_stick_by_quadrature(p, q, eps), _hockey_stick_by_quadrature(q, p, eps))
    assert worst == pytest.approx(delta, rel=1e-3)


def test_two_gaussians_edge_cases():
    assert two_gaussian_epsilon(mu0=1.0, sigma0=2.0, mu1=1.0, sigma1=2.0, delta=1e-5) == 0.0
    assert two_gaussian_epsilon(mu0=0.0, sigma0=0.0, mu1=1.0, sigma1=1.0, delta=1e-5) == math.inf
    close = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=0.1, sigma1=1.0, delta=1e-5)
    far = two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=0.5, sigma1=1.0, delta=1e-5)
    assert 0 <= close < far
    with pytest.raises(ValueError, match="delta must be in"):
        two_gaussian_epsilon(mu0=0.0, sigma0=1.0, mu1=1.0, sigma1=1.0, delta=0.0)
    with pytest.raises(ValueError, match="standard deviations"):
        two_gaussian_epsilon(mu0=0.0, sigma0=-1.0, mu1=1.0, sigma1=1.0, delta=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_fit_recovers_a_simulated_gaussian_mechanism(sigma):
    rng = np.random.default_rng(11)
    delta = 1e-5
    inside = 1.0 + sigma * rng.standard_normal(50_000)
    outside = sigma * rng.standard_normal(50_000)
    got = gaussian_fit_epsilon(inside, outside, delta=delta)
    assert got == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma, delta), rel=0.03)


def test_canary_audit_reports_bound_and_estimate_and_round_trips_to_json():
    rng = np.random.default_rng(2)
    bits = inclusion_bits(500, rng=rng)
    scores = bits + 0.5 * rng.standard_normal(500)
    audit = canary_audit(scores, bits, delta=1e-5)
    true_eps = dp_accounting.get_epsilon_gaussian(0.5, 1e-5)
    assert 0 < audit.bound.epsilon < true_eps
    assert audit.estimate == pytest.approx(true_eps, rel=0.25)  # an estimate: 500 canaries, sampling error
    assert audit.in_mean > audit.out_mean
    d = audit.to_dict()
    assert d["bound"]["epsilon"] == audit.bound.epsilon and d["estimate"] == audit.estimate
    with pytest.raises(ValueError, match="at least 2 included and 2 excluded"):
        canary_audit([0.0, 1.0, 2.0], [True, True, False], delta=1e-5)


# ---------------------------------------------------------------- canaries and scores


def test_isotropic_directions_are_unit_uniform_and_reproducible():
    d = isotropic_directions(4000, 50, rng=np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    # uniform on the sphere: mean 0 and second moment I / dim
    assert np.abs(d.mean(axis=0)).max() < 4 / math.sqrt(4000 * 50)
    assert np.allclose(d.T @ d / 4000, np.eye(50) / 50, atol=0.01)
    again = isotropic_directions(4000, 50, rng=np.random.default_rng(0))
    assert np.array_equal(d, again)


def test_orthogonal_directions_are_orthonormal_and_each_still_isotropic():
    rng = np.random.default_rng(1)
    d = isotropic_directions(30, 40, rng=rng, orthogonal=True)
    assert np.allclose(d @ d.T, np.eye(30), atol=1e-10)
    # the first coordinate of a uniform unit vector has variance 1 / dim
    firsts = np.array([isotropic_directions(3, 40, rng=rng, orthogonal=True)[0, 0] for _ in range(3000)])
    assert firsts.var() == pytest.approx(1 / 40, rel=0.1)
    with pytest.raises(ValueError, match="count <= dim"):
        isotropic_directions(41, 40, rng=rng, orthogonal=True)
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        isotropic_directions(3, 40, rng=np.random.RandomState(0))


def test_canary_update_matches_the_model_and_has_the_clipping_norm():
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    like = {k: v.numpy() for k, v in model.state_dict().items()}
    dim = sum(a.size for a in like.values())
    direction = isotropic_directions(1, dim, rng=np.random.default_rng(4))[0]
    update = canary_update(direction, like, norm=0.7)
    assert list(update) == sorted(like)
    assert all(update[k].shape == like[k].shape and update[k].dtype == like[k].dtype for k in like)
    assert np.linalg.norm(flatten_update(update)) == pytest.approx(0.7, rel=1e-6)
    assert np.allclose(flatten_update(update), 0.7 * direction, atol=1e-6)
    shuffled = dict(reversed(list(like.items())))  # arrival order does not change the layout
    assert np.array_equal(flatten_update(canary_update(direction, shuffled, norm=0.7)), flatten_update(update))
    with pytest.raises(ValueError, match=f"the model has {dim}"):
        canary_update(direction[:-1], like, norm=0.7)
    with pytest.raises(ValueError, match="clipping bound"):
        canary_update(direction, like, norm=0.0)


def test_cosine_scores_find_the_inserted_canaries_of_a_model_delta():
    rng = np.random.default_rng(6)
    like = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(50, np.float32)}
    directions = isotropic_directions(20, 2050, rng=rng)
    bits = np.arange(20) < 10
    delta = {k: np.zeros_like(v) for k, v in like.items()}
    for j in np.flatnonzero(bits):
        for k, v in canary_update(directions[j], like, norm=1.0).items():
            delta[k] += v
    cos = cosine_scores(delta, directions)
    assert cos[bits].min() > cos[~bits].max()
    assert cosine_scores(directions[3], directions)[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="all zeros"):
        cosine_scores(np.zeros(2050), directions)
    with pytest.raises(ValueError, match="canary directions have 2050"):
        cosine_scores(np.ones(7), directions)


def test_gradient_canary_score_is_positive_when_descent_followed_the_canary():
    g = isotropic_directions(5, 30, rng=np.random.default_rng(8)) * 3.0
    delta = -0.1 * g[2]  # one SGD step on canary 2's gradient
    scores = gradient_canary_scores(delta, g)
    assert scores[2] == pytest.approx(0.3) and np.argmax(scores) == 2


def test_loss_score_is_minus_the_cross_entropy():
    logits = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    expected = -torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy()
    assert np.allclose(loss_scores(logits.numpy(), labels.numpy()), expected, atol=1e-6)
    with pytest.raises(ValueError, match="labels must be integers"):
        loss_scores(logits.numpy(), np.full(64, 3))


def test_subsampled_gaussian_score_ignores_a_canarys_steady_drift():
    rng = np.random.default_rng(9)
    rounds, q, z = 50, 0.1, 1.0
    sampled = rng.random((2, rounds)) < q
    present = sampled[0] + z * rng.standard_normal(rounds)
    absent = z * rng.standard_normal(rounds)
    base = subsampled_gaussian_scores(np.stack([present, absent]), sample_rate=q, noise_multiplier=z)
    drifted = subsampled_gaussian_scores(np.stack([present + 2.0, absent - 3.0]), sample_rate=q, noise_multiplier=z)
    assert np.allclose(base, drifted)
    with pytest.raises(ValueError, match="sample_rate"):
        subsampled_gaussian_scores(np.zeros((2, 3)), sample_rate=1.0, noise_multiplier=z)


def _toy_schema() -> DataSchema:
    return DataSchema(
        name="toy",
        columns=[
            NumericColumn(name="dose", min=-3.5, max=12.0, bins=[0.0, 5.0]),
            NumericColumn(name="income", min=0.0, max=1e6, transform="log1p"),
            CategoricalColumn(name="site", categories=["north", "south", "east"]),
            NumericColumn(name="row-id", min=0.0, max=1e9),
        ],
        target=Target(column="outcome", positive=["yes", "y"], negative=["no"]),
        ignore=["row-id"],
    )


@pytest.mark.parametrize("which", ["toy", "adult"])
def test_canary_records_are_valid_rows_of_any_schema(which, adult_schema):
    schema = _toy_schema() if which == "toy" else adult_schema
    rng = np.random.default_rng(12)
    rows = canary_records(schema, 300, rng=rng)
    assert len(rows) == 300
    assert set(rows.columns) == {c.name for c in schema.columns} | {schema.target.column}
    for col in schema.columns:
        raw = rows.columns[col.name]
        if isinstance(col, NumericColumn):
            x = raw.astype(float)
            assert (x >= col.min).all() and (x <= col.max).all()
            assert np.ptp(x) > 0.5 * (col.max - col.min) or col.transform == "log1p"
        else:
            assert set(raw) <= set(col.categories) and len(set(raw)) > 1
    assert row_validity(rows, schema).all()
    assert validate_contract(rows, schema).ok
    labels = rows.labels(schema)
    assert 0.35 < labels.mean() < 0.65  # a fair coin per row by default
    assert FeatureEncoder(schema).transform(rows.columns).shape == (300, FeatureEncoder(schema).width)
    assert (canary_records(schema, 20, rng=rng, label=1).labels(schema) == 1).all()
    assert (canary_records(schema, 20, rng=rng, label=0).labels(schema) == 0).all()


def test_log_columns_spread_canaries_over_orders_of_magnitude():
    rows = canary_records(_toy_schema(), 2000, rng=np.random.default_rng(13))
    income = rows.columns["income"].astype(float)
    assert np.median(income) < 2e3  # uniform in log1p space, not in raw units (median would be 5e5)


def test_canary_records_misuse_is_refused(adult_schema):
    with pytest.raises(ValueError, match="label must be None"):
        canary_records(adult_schema, 3, rng=np.random.default_rng(0), label=2)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        canary_records(adult_schema, 0, rng=np.random.default_rng(0))


def test_inclusion_bits_are_fair_coins():
    bits = inclusion_bits(20_000, rng=np.random.default_rng(14))
    assert bits.dtype == bool and abs(bits.mean() - 0.5) < 0.015


def test_subsampled_gaussian_score_without_the_median_is_the_likelihood_ratio_and_takes_rate_one():
    rng = np.random.default_rng(3)
    y = rng.normal(0.3, 1.5, (4, 7))
    q, z = 0.2, 1.5
    expected = np.log(1 - q + q * np.exp((y - 0.5) / z**2)).sum(axis=1)
    assert np.allclose(subsampled_gaussian_scores(y, sample_rate=q, noise_multiplier=z, subtract_median=False),
                       expected)  # fmt: skip
    every_round = subsampled_gaussian_scores(y, sample_rate=1.0, noise_multiplier=z, subtract_median=False)
    assert np.allclose(every_round, ((y - 0.5) / z**2).sum(axis=1))
    with pytest.raises(ValueError, match="its own median"):
        subsampled_gaussian_scores(y, sample_rate=1.0, noise_multiplier=z)


def test_recorded_audits_are_read_back_and_a_foreign_file_is_ignored(tmp_path):
    assert read_audits(tmp_path) == {}
    (tmp_path / AUDIT_FILE).write_text('{"format": "something-else", "audits": {"client": {}}}')
    assert read_audits(tmp_path) == {}
    audit = {"level": "client", "epsilon_lower_bound": 0.25, "delta": 1e-5, "confidence": 0.9, "canaries": 500,
             "accounted": {"epsilon": 1.84}, "exceeds_accounted": False}  # fmt: skip
    (tmp_path / AUDIT_FILE).write_text(json.dumps({"format": AUDIT_FORMAT, "audits": {"client": audit}}))
    assert read_audits(tmp_path) == {"client": audit}
    line = empirical_privacy_line(audit)
    assert line.startswith("empirical privacy (client level): epsilon >= 0.250 at delta 1e-05 (90% confidence")
    assert "500 canary clients" in line and "vs accounted 1.840" in line and "not a guarantee" in line
