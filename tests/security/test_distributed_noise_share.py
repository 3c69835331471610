"""Distributed noise under SecAgg+ is the organisation's choice, and no sum of fewer than t shares is used.

A client that adds only a 1/t share of the noise on its summed counts relies on SecAgg+ to hide its
vector inside a sum of at least t. Two attacks on that: a coordinator whose run config asks for
distributed noise from a site that never opted in (the site must add its whole noise anyway), and a
coordinator that sets up the query's SecAgg+ round with a threshold below t, or finds fewer than t
shares in the sum (the client refuses to send a share; the server refuses to use the sum).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedready.client.app as client_app
from fedready import constants as K
from fedready.client.app import Decline, SecAggSetup, answer_through_secagg
from fedready.client.state import query_noise_split
from fedready.config import QUERY_MODULUS, QUERY_SECAGG_CLIP, make_config, query_threshold
from fedready.federation import task_of
from fedready.server.secagg import secure_sum
from tests.client.test_site_refuses_loosening import _context, write_site_files
from tests.client.test_site_refuses_loosening import _task_identity as _task_identity  # noqa: F401 -- autouse


@pytest.fixture
def site(tmp_path):
    return write_site_files(tmp_path)


@pytest.fixture
def noise_calls(monkeypatch):
    """Every discrete Gaussian variance the client draws its summed counts' noise with."""
    calls: list[float] = []
    real = client_app.sample_discrete_gaussian

    def spy(sigma2, size, **kw):
        calls.append(float(sigma2))
        return real(sigma2, size, **kw)

    monkeypatch.setattr(client_app, "sample_discrete_gaussian", spy)
    return calls


def _ask(tmp_path, data, schema, *, allow: str = "", threshold: int | None = None, clip: float | None = None,
         modulus: int = QUERY_MODULUS, query_clip: int = QUERY_SECAGG_CLIP):  # fmt: skip
    cfg = make_config(data=str(data), schema=str(schema), num_clients=10, secagg=True, query_distributed_noise=True,
                      query_secagg_clip=query_clip)  # fmt: skip
    t = query_threshold(cfg)
    setup = SecAggSetup(threshold=t if threshold is None else threshold,
                        clipping_range=float(cfg.query_secagg_clip if clip is None else clip),
                        quantization_range=2 * cfg.query_secagg_clip, max_weight=1.0, mod_range=modulus)  # fmt: skip
    model = {k: v.detach().numpy() for k, v in task_of(cfg).model(seed=0).state_dict().items()}
    ctx = _context(tmp_path, data, schema, allow)
    out = answer_through_secagg(cfg, ctx, "/tmp/run-dn", {K.QUERY: K.QUERY_GROUP_COUNTS, K.SERVER_ROUND: 3}, model,
                                setup)  # fmt: skip
    return cfg, t, out


def _whole_std(cfg, out) -> float:
    vectors = len(json.loads(out[1][K.QUERY_LAYOUT]))
    return query_noise_split(cfg.query_noise, cfg.query_accuracy_share, accuracy=True, sum_vectors=vectors)[1]


def _events(tmp_path, name):
    return [e for e in map(json.loads, (tmp_path / "audit.jsonl").read_text().splitlines()) if e["event"] == name]


def test_share_only_attack_on_a_site_that_never_opted_in_gets_the_whole_noise(site, noise_calls):
    tmp_path, data, schema = site
    cfg, t, out = _ask(tmp_path, data, schema)  # the run asks for distributed noise; the site's limits say nothing
    assert not isinstance(out, Decline), out
    vector, metrics = out
    std = _whole_std(cfg, out)
    # every count it sends through SecAgg+ carries its whole noise, never a 1/t share
    assert noise_calls and all(v == pytest.approx(std**2) for v in noise_calls)
    assert metrics[K.QUERY_SHARES] == 0 and metrics[K.QUERY_SHARE_STD] == pytest.approx(std)
    assert vector.dtype == np.float64 and np.array_equal(vector, np.rint(vector))  # integers: SecAgg+ keeps them
    (answered,) = _events(tmp_path, "query-answered")  # the organisation's own record says so
    assert answered["distributed_noise"] is False and answered["shares"] == 0
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    (query,) = [r for r in ledger["releases"] if r["level"] == "query"]
    assert query["noise_multiplier"] == pytest.approx(cfg.query_noise)  # the whole noise: today's local guarantee


def test_a_site_that_opts_in_adds_a_share_and_records_it(site, noise_calls):
    tmp_path, data, schema = site
    cfg, t, out = _ask(tmp_path, data, schema, allow="allow_distributed_noise = true\n")
    assert not isinstance(out, Decline), out
    std = _whole_std(cfg, out)
    assert t == 9 and noise_calls and all(v == pytest.approx(std**2 / t) for v in noise_calls)
    assert out[1][K.QUERY_SHARES] == t and out[1][K.QUERY_SHARE_STD] == pytest.approx(std / t**0.5)
    (answered,) = _events(tmp_path, "query-answered")
    assert answered["distributed_noise"] is True and answered["shares"] == t and answered["tau"] == 0.0
    # what is charged is the secure sum of >= t shares (KLS 2021, tau included): the planned multiplier
    assert out[1][K.HISTORY_SHARES][-1] == t and out[1][K.HISTORY_NOISE][-1] == pytest.approx(cfg.query_noise)


def test_a_site_composing_its_ledger_with_prv_adds_its_whole_noise(site, noise_calls):
    tmp_path, data, schema = site
    # PRV would charge a share as a continuous Gaussian, under KLS 2021's zCDP bound: the share is not sent
    cfg, t, out = _ask(tmp_path, data, schema, allow='allow_distributed_noise = true\naccountant = "prv"\n')
    assert not isinstance(out, Decline), out
    std = _whole_std(cfg, out)
    assert noise_calls and all(v == pytest.approx(std**2) for v in noise_calls) and out[1][K.QUERY_SHARES] == 0


def test_coordinator_asking_for_a_sum_below_t_is_refused(site, noise_calls):
    tmp_path, data, schema = site
    # the query round's SecAgg+ would unmask a sum of 2 clients, while each share assumes t = 9
    cfg, t, out = _ask(tmp_path, data, schema, allow="allow_distributed_noise = true\n", threshold=2)
    assert isinstance(out, Decline) and out.reason == K.SECAGG_BELOW_T and f"t = {t}" in out.detail
    assert noise_calls == [] and not (tmp_path / "ledger.json").exists()  # nothing drawn, nothing released
    # an encoding that would clip counts (or round them) is refused before anything is read
    _, _, out = _ask(tmp_path, data, schema, allow="allow_distributed_noise = true\n", clip=8.0)
    assert isinstance(out, Decline) and out.reason == K.SECAGG_ENCODING
    # and so is a ring smaller than the query's, where the masked sum could wrap
    _, _, out = _ask(tmp_path, data, schema, allow="allow_distributed_noise = true\n", modulus=2**32)
    assert isinstance(out, Decline) and out.reason == K.SECAGG_ENCODING and "2^40" in out.detail
    assert noise_calls == [] and not (tmp_path / "ledger.json").exists()


def test_counts_near_the_clip_are_clamped_before_the_noise_not_an_error(site, monkeypatch):
    tmp_path, data, schema = site
    monkeypatch.setattr(client_app, "sample_discrete_gaussian", lambda sigma2, size, **kw: np.zeros(size, np.int64))
    clip = 92  # a share std of sqrt(80) (26.8 / 3): the clamp is at 92 - 89.4 = 2, below this client's counts
    cfg, t, out = _ask(tmp_path, data, schema, allow="allow_distributed_noise = true\n", query_clip=clip)
    assert not isinstance(out, Decline), out
    vector, metrics = out
    bound = int(clip - 10 * metrics[K.QUERY_SHARE_STD])
    assert bound == 2 and np.abs(vector).max() == bound  # (no noise here) the exact counts were clamped, not refused


def test_server_refuses_a_secure_sum_of_fewer_than_t_clients_holding_shares():
    layout = json.dumps([["counts/sex", 8]])
    share = {K.QUERY_SHARES: 9, K.QUERY_SHARE_STD: 40.0, K.QUERY_LAYOUT: layout}
    whole = {K.QUERY_SHARES: 0, K.QUERY_SHARE_STD: 120.0, K.QUERY_LAYOUT: layout}
    mean = np.arange(8.0)
    out = secure_sum([share] * 8, mean, 9)  # eight sharers: 8/9 of the whole noise
    assert out["sums"] == {} and "at least t = 9" in out["refused"] and out["noise_std"] == 0.0
    out = secure_sum([share] * 3 + [whole] * 5, mean, 9)  # eight clients in all, below t
    assert out["sums"] == {} and "8 client(s)" in out["refused"]
    out = secure_sum([{**share, K.QUERY_SHARES: 4}] * 9 + [whole], mean, 9)  # shares made for another t
    assert out["sums"] == {} and "[4]" in out["refused"]
    # a sum of n >= t clients carries at least the whole noise whatever the mix: one whole-noise client is s^2
    out = secure_sum([share] * 3 + [whole] * 7, mean, 9)
    assert not out["refused"] and np.array_equal(out["sums"]["counts/sex"], np.arange(8.0) * 10)
    assert out["noise_std"] == pytest.approx((3 * 40.0**2 + 7 * 120.0**2) ** 0.5)
    out = secure_sum([share] * 9 + [whole], mean, 9)
    assert not out["refused"] and np.array_equal(out["sums"]["counts/sex"], np.arange(8.0) * 10)
    assert out["noise_std"] == pytest.approx((9 * 40.0**2 + 120.0**2) ** 0.5)


def test_secure_sum_records_the_least_noise_multiplier_a_client_charged():
    layout = json.dumps([["counts/sex", 2]])

    def answer(z):  # a client's history: its row count (level 0), then this answer (level 2) charged at z
        history = {K.HISTORY_LEVEL: [0, 2], K.HISTORY_NOISE: [20.0, z]}
        return {K.QUERY_SHARES: 0, K.QUERY_SHARE_STD: 100.0, K.QUERY_LAYOUT: layout,
                K.HISTORY_JSON: json.dumps(history)}  # fmt: skip

    out = secure_sum([answer(12.0), answer(11.5), answer(12.0)], np.zeros(2), 2)
    assert out["charged_noise_multiplier"] == pytest.approx(11.5)
    out = secure_sum([{K.QUERY_SHARES: 0, K.QUERY_SHARE_STD: 100.0, K.QUERY_LAYOUT: layout}] * 3, np.zeros(2), 2)
    assert out["charged_noise_multiplier"] is None  # no history: the profile falls back to --query-noise
