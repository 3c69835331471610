"""The ledger charges what Opacus did: the rate, steps and noise multiplier of its own accountant.

Issue 21, finding 3: the client charged ``1 / ceil(noisy count / B)`` while Opacus sampled at
``1 / ceil(n / B)`` from the exact n, so on either side of a batch boundary the charged rate could be
half the real one. Here the real client code (:func:`fedready.client.app.local_update`) runs with
chosen exact sizes ``n`` and chosen noisy counts on both sides of each ``ceil(n / B)`` boundary; spies
on Opacus's own objects record the rate its sampler draws with, the rate and noise multiplier its
accountant records at every step, and the divisor its optimiser applies.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant
from opacus.optimizers.optimizer import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedready.client.app import Decline, local_update
from fedready.client.state import ClientPrivacyState, Release, Store
from fedready.config import make_config
from fedready.federation import task_of
from tests.fixtures.row_count import rows_of

B = 256
SIZES = (255, 256, 257, 1020, 1023, 1024, 1025)


def _noisy_counts(n: int) -> list[int]:
    """Noisy counts around n and on both sides of the boundary ceil(n / B) B nearest to n."""
    edge = B * round(n / B)
    return sorted({n - 6, n, n + 6, edge, edge + 1})


@pytest.fixture
def spies(monkeypatch):
    seen: dict[str, list] = {"sampler": [], "accountant": [], "divisor": []}
    step, sample, scale = RDPAccountant.step, UniformWithReplacementSampler.__iter__, DPOptimizer.scale_grad

    def accountant_step(self, *, noise_multiplier, sample_rate):
        seen["accountant"].append((noise_multiplier, sample_rate))
        return step(self, noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    def sampler_iter(self):
        seen["sampler"].append(self.sample_rate)
        return sample(self)

    def scale_grad(self):
        seen["divisor"].append(self.expected_batch_size)
        return scale(self)

    monkeypatch.setattr(RDPAccountant, "step", accountant_step)
    monkeypatch.setattr(UniformWithReplacementSampler, "__iter__", sampler_iter)
    monkeypatch.setattr(DPOptimizer, "scale_grad", scale_grad)
    return seen


@pytest.mark.parametrize("n", SIZES)
def test_the_charged_rate_steps_and_noise_are_opacus_own_for_any_noisy_count(n, spies):
    cfg = make_config(batch_size=B, local_steps=0, local_epochs=1, rounds=5)  # whole epochs: steps follow the rate
    rng = np.random.default_rng(n)
    rows = rows_of(cfg, n, rng)
    start = {k: v.detach().numpy().copy() for k, v in task_of(cfg).model(seed=0).state_dict().items()}
    charged_rates = set()
    for node, m in enumerate(_noisy_counts(n)):
        for v in spies.values():
            v.clear()
        ctx = Context(run_id=0, node_id=node, node_config={"partition-id": node}, state=RecordDict(), run_config={})
        # the client's noisy count, as if drawn: the test chooses it on either side of the boundary
        Store(ctx, None).save(ClientPrivacyState(releases=[Release("count", 1, cfg.count_noise, 1.0, 1)],
                                                 noisy_rows=m))  # fmt: skip
        out = local_update(cfg, ctx, None, 1, start, train_rows=rows)
        assert not isinstance(out, Decline), out
        _, metrics = out
        (charged,) = [r for r in Store(ctx, None).load().releases if r.level == "sample"]
        # what Opacus's own accountant recorded, step by step
        assert len(spies["accountant"]) == charged.steps == metrics["steps"]
        assert set(spies["accountant"]) == {(charged.noise, charged.rate)}
        # the rate its sampler drew every batch with is the one charged, and it comes from the noisy count
        assert set(spies["sampler"]) == {charged.rate} == {1.0 / -(-m // B)}
        assert charged.steps == -(-m // B)  # one epoch at that rate
        # the divisor of every step is the noisy count's expected batch, whatever the exact n
        assert spies["divisor"] and all(d == pytest.approx(m * charged.rate) for d in spies["divisor"])
        assert (metrics["sample-rate"], metrics["noise-multiplier"]) == (charged.rate, charged.noise)
        charged_rates.add(charged.rate)
    assert len(charged_rates) == 2  # the grid really straddles a boundary: two rates were charged
