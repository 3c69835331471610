import numpy as np
import pytest
import torch

from fedready.client import training
from fedready.models import create_model


def _run(monkeypatch, ghost: bool, noise: float):
    monkeypatch.setattr(training, "_GHOST_ABOVE", 0 if ghost else 10**18)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=600) > 0).astype(np.int64)
    model = create_model("mlp-wide", 20, seed=1)
    res = training.train(model, x, y, epochs=1, batch_size=128, lr=0.5, momentum=0.0, seed=3,
                         noise_multiplier=noise, max_grad_norm=0.5)  # fmt: skip
    return model, res


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_ghost_clipping_gives_the_same_update_and_accounting_as_per_sample_gradients(monkeypatch, noise):
    a, ra = _run(monkeypatch, ghost=False, noise=noise)
    b, rb = _run(monkeypatch, ghost=True, noise=noise)
    assert ra.steps == rb.steps and ra.history == rb.history
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert abs(ra.loss - rb.loss) < 1e-4


def test_large_models_switch_to_ghost_clipping():
    assert training._ghost_clipping(create_model("mlp-large", 167), 1024)
    assert not training._ghost_clipping(create_model("mlp", 167), 1024)
