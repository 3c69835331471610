import numpy as np
import pytest
import torch

from fedready.client import training
from fedready.models import create_model


def _run(mode: str, noise: float, *, rows: int = 600, batch: int = 128, steps: int | None = None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=rows) > 0).astype(np.int64)
    model = create_model("mlp-wide", 20, seed=1)
    res = training.train(model, x, y, epochs=1, batch_size=batch, lr=0.5, momentum=0.0, seed=3,
                         noise_multiplier=noise, max_grad_norm=0.5, grad_sample_mode=mode,
                         max_steps=steps, released_rows=rows)  # fmt: skip
    return model, res


@pytest.mark.parametrize("noise", [0.0, 1.0])
@pytest.mark.parametrize("shape", [{}, {"rows": 4, "batch": 2, "steps": 40}], ids=["batches", "empty-batches"])
def test_ghost_clipping_gives_the_same_update_and_accounting_as_per_sample_gradients(noise, shape):
    # 4 rows at rate 1/2: Poisson sampling draws an empty batch with probability 1/16 per step,
    # so 40 steps include empty ones (a step that still adds noise and is still accounted).
    a, ra = _run("hooks", noise, **shape)
    b, rb = _run("ghost", noise, **shape)
    assert ra.steps == rb.steps and ra.history == rb.history
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    assert abs(ra.loss - rb.loss) < 1e-4


def test_fedready_trains_with_ghost_clipping_and_refuses_an_unknown_mode():
    assert training.DEFAULT_GRAD_SAMPLE_MODE == "ghost"  # the fastest correct mode (benchmarks/dp_overhead.py)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        _run("functorch", 1.0)


@pytest.mark.parametrize("noise", [None, 1.0])
def test_batched_row_fetching_trains_exactly_as_a_tensor_dataset_loader(monkeypatch, noise):
    from torch.utils.data import DataLoader, TensorDataset

    def tensor_dataset_loader(x, y, batch_size, generator):  # what Opacus's examples use
        ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)

    sizes: list[int] = []
    fetch = training._Rows.__getitems__
    monkeypatch.setattr(training._Rows, "__getitems__", lambda self, idx: sizes.append(len(idx)) or fetch(self, idx))
    a, ra = _run("ghost", noise, rows=4, batch=2, steps=40)
    if noise is not None:  # Poisson sampling at rate 1/2 over 4 rows: empty batches and full ones
        assert 0 in sizes and max(sizes) >= 3
    monkeypatch.setattr(training, "_loader", tensor_dataset_loader)
    b, rb = _run("ghost", noise, rows=4, batch=2, steps=40)
    assert ra == rb
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_dp_noise_and_sampling_are_secret_unless_a_seed_is_forced():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def once(seed):
        model = create_model("mlp", 20, seed=1)
        training.train(model, x, y, epochs=1, batch_size=64, lr=0.5, momentum=0.0, seed=seed,
                       noise_multiplier=1.0, max_grad_norm=1.0, max_steps=3, released_rows=len(y))  # fmt: skip
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert not torch.equal(once(None), once(None))  # OS entropy: two runs never share noise
    assert torch.equal(once(5), once(5))  # a forced seed (--insecure-seeded-noise) reproduces bit for bit


def test_the_dp_optimizer_uses_opacus_floating_point_safe_noise(monkeypatch):
    from opacus.optimizers import optimizer as dp_optimizer
    from opacus.optimizers import optimizer_fast_gradient_clipping as ghost_optimizer

    modes = []
    real = dp_optimizer._generate_noise

    def spy(std, reference, generator=None, secure_mode=False):
        modes.append(secure_mode)
        return real(std, reference, generator, secure_mode)

    for module in (dp_optimizer, ghost_optimizer):  # hooks and ghost clipping each import it
        monkeypatch.setattr(module, "_generate_noise", spy)
    for mode in ("ghost", "hooks"):
        modes.clear()
        _run(mode, 1.0, steps=2)
        assert modes and all(modes)


def test_dp_training_prints_no_secure_rng_advice():
    """Opacus advises secure_mode on every PrivacyEngine (once per client and round under `flwr run`); fedready's
    generator is seeded from OS entropy, so the advice is noise in the user's output."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _run("hooks", 1.0, steps=2)
    assert not [w for w in seen if "Secure RNG" in str(w.message)]
