"""The Python API: the same jobs as the CLI, typed results, errors before anything runs."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import fedready
from fedready.api import model_name
from fedready.errors import ConfigError


def test_no_submodule_shadows_an_api_function():
    for info in pkgutil.iter_modules(fedready.__path__):
        if info.name not in ("cli",):
            importlib.import_module(f"fedready.{info.name}")
    for name in ("simulate", "evaluate", "compress", "pipeline"):
        assert callable(getattr(fedready, name)), name
    assert set(fedready.__all__) >= {"simulate", "evaluate", "compress", "pipeline", "SimulationResult"}


def test_a_factory_function_is_named_by_its_module():
    from fedready_test_models import residual_layernorm

    assert model_name(residual_layernorm) == "fedready_test_models:residual_layernorm"
    assert model_name("mlp") == "mlp"

    def local(in_features, num_classes):  # a closure cannot be imported by the clients
        return None

    with pytest.raises(ConfigError, match="importable module"):
        model_name(local)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"epsilon": 0}, "epsilon: must be > 0"), ({"num_clients": 400}, "400 clients need at least"),
     ({"partitioner": "zipf"}, "unknown partitioner 'zipf'")],
)  # fmt: skip
def test_simulate_refuses_bad_options_before_anything_runs(binary_task, tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        fedready.simulate(binary_task["data"], binary_task["schema"], out=tmp_path, **options)
    assert not any(tmp_path.iterdir())  # nothing written
