"""Issue 21, finding 2: a coordinator estimates a client's exact row count from its updates' norms.

Opacus divides the noisy gradient sum by ``int(n q)`` computed from the exact ``n``: the noise part of
each update then has norm about ``lr z C sqrt(steps d) / (n q)``, and the coordinator, who is sent z,
q and the steps, reads ``n`` off it to a few rows. fedready divides by the released noisy count's
expected batch instead, so the same estimate recovers the noisy count, and is no closer to ``n``.

Both tests run the real client code (:func:`fedready.client.app.local_update`, through the audit's
:func:`~fedready.simulations.audit.local_client_updates`) on clients of 16 different sizes; the second
puts the old divisor back on purpose and shows the attack working, so the first can fail.
"""

from __future__ import annotations

import numpy as np

import fedready.client.app as client_app
from fedready.config import make_config
from fedready.federation import task_of
from fedready.simulations.audit import local_client_updates
from tests.fixtures.row_count import norm_estimate_of_n, rows_of

COUNT_NOISE = 40.0  # rows: the noisy count's own error, which the estimate must not beat


def _attack() -> tuple[float, float]:
    """RMSE over 16 clients of the norm-based estimate of n, and of the noisy count each client sent."""
    cfg = make_config(count_noise=COUNT_NOISE, lr_schedule="constant")
    rng = np.random.default_rng(7)
    start = {k: v.detach().numpy().copy() for k, v in task_of(cfg).model(seed=0).state_dict().items()}
    d = sum(v.size for v in start.values())
    est, sent = [], []
    for j, n in enumerate(rng.integers(120, 900, size=16)):
        rounds, state = local_client_updates(cfg, rows_of(cfg, int(n), rng), rounds=3, node=j, global_arrays=start)
        est.append(norm_estimate_of_n(rounds, parameters=d, max_grad_norm=cfg.max_grad_norm) - n)
        sent.append(state.noisy_rows - n)
    return float(np.sqrt(np.mean(np.square(est)))), float(np.sqrt(np.mean(np.square(sent))))


def _exact_divisor(monkeypatch) -> None:
    """The bug, re-introduced: the sampler and the divisor built from the exact row count (Opacus's default)."""
    real = client_app.train

    def train(model, x, y, **kw):
        if kw.get("released_rows") is not None:
            kw["released_rows"] = len(y)
        return real(model, x, y, **kw)

    monkeypatch.setattr(client_app, "train", train)


def test_update_norms_reveal_no_more_about_the_row_count_than_the_noisy_count():
    norm_error, count_error = _attack()
    # the norms estimate the noisy count: their error about n is the count's own (16 draws of std 40)
    assert norm_error >= 0.6 * count_error
    assert norm_error >= 0.4 * COUNT_NOISE


def test_update_norms_reveal_the_row_count_when_the_divisor_is_the_exact_count(monkeypatch):
    _exact_divisor(monkeypatch)
    norm_error, count_error = _attack()
    assert norm_error < 0.3 * count_error and norm_error < 12  # a few rows: the attack of finding 2
