"""Model architectures for tabular binary classification, registered under string keys."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedready.errors import ConfigError

__all__ = ["build_mlp", "create_model", "model_names"]


def build_mlp(in_features: int, widths: tuple[int, ...], *, classes: int = 2) -> nn.Module:
    """A ``nn.Sequential`` of Linear layers with ReLU between them (hidden ``widths``)."""
    layers: list[nn.Module] = []
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


# name -> builder(in_features). Opacus computes per-sample gradients for Linear layers
# natively, so every model here is made of Linear + elementwise activations only.
_MODELS: dict[str, Callable[[int], nn.Module]] = {
    "logreg": lambda d: build_mlp(d, ()),
    "mlp": lambda d: build_mlp(d, (16,)),  # default: small, so DP noise has few coordinates to hit
    "mlp-wide": lambda d: build_mlp(d, (64,)),
    "mlp-large": lambda d: build_mlp(d, (256, 256, 256)),  # the teacher worth compressing
}


def model_names() -> list[str]:
    """Return the registered model keys."""
    return list(_MODELS)


def create_model(name: str, in_features: int, *, seed: int = 0) -> nn.Module:
    """Build the model registered under ``name`` with deterministic initial weights.

    Raises
    ------
    ConfigError
        If ``name`` is not registered.
    """
    builder = _MODELS.get(name)
    if builder is None:
        raise ConfigError("model", f"unknown model '{name}'; expected one of: {', '.join(_MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return builder(in_features)
