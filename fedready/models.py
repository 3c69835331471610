"""Model architectures for tabular classification: registered names, or a user's own factory.

A model is named either by a registered key (``logreg``, ``mlp``, ...) or by
``package.module:factory``, a function ``(in_features, num_classes) -> torch.nn.Module``
importable on every machine that trains or evaluates (the ClientApp runs only code its
organisation installed). Every model is checked with Opacus's ``ModuleValidator`` when it is
built: what Opacus can fix (BatchNorm -> GroupNorm) is fixed, the same way everywhere, so
the server, every client and the evaluation build the very same architecture; what it
cannot fix is refused with the validator's reason.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedready.errors import ConfigError

if TYPE_CHECKING:
    from fedready.schema import DataSchema

__all__ = [
    "BUILTIN_MODELS",
    "build_mlp",
    "check_model",
    "create_model",
    "evaluate",
    "is_builtin",
    "model_for_schema",
    "model_names",
    "resolve_factory",
]


def build_mlp(in_features: int, widths: tuple[int, ...], *, classes: int = 2) -> nn.Module:
    """A ``nn.Sequential`` of Linear layers with ReLU between them (hidden ``widths``)."""
    layers: list[nn.Module] = []
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


# name -> builder(in_features, num_classes). Opacus computes per-sample gradients for Linear
# layers natively, so every model here is made of Linear + elementwise activations only.
_MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "logreg": lambda d, k: build_mlp(d, (), classes=k),
    "mlp": lambda d, k: build_mlp(d, (16,), classes=k),  # default: small, so DP noise has few coordinates to hit
    "mlp-wide": lambda d, k: build_mlp(d, (64,), classes=k),
    "mlp-large": lambda d, k: build_mlp(d, (256, 256, 256), classes=k),  # the teacher worth compressing
}
BUILTIN_MODELS = tuple(_MODELS)  # the names --model takes besides a module:factory


def model_names() -> list[str]:
    """Return the registered model keys."""
    return list(_MODELS)


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a registered MLP (a plain chain of Linear layers) rather than a user factory."""
    return name in _MODELS


def _expected() -> str:
    return f"expected one of: {', '.join(_MODELS)}, or package.module:factory"


@lru_cache(maxsize=16)
def resolve_factory(name: str) -> Callable[[int, int], nn.Module]:
    """The builder ``(in_features, num_classes) -> nn.Module`` named by ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is neither registered nor an importable ``package.module:factory``.
    """
    if name in _MODELS:
        return _MODELS[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("model", f"unknown model '{name}'; {_expected()}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError("model", f"cannot import '{module_name}' for --model {name} ({e}); install the module "
                                   "or put its folder on PYTHONPATH") from e  # fmt: skip
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError("model", f"'{module_name}' has no function '{attr}'; --model takes package.module:factory "
                                   "with factory(in_features, num_classes) -> nn.Module")  # fmt: skip
    return factory


def _batchnorm1d_to_groupnorm(model: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d`` with ``GroupNorm(1, C)``: a tabular layer's features normalised together.

    Opacus's own fix gives ``min(32, C)`` groups, meant for images: on a ``[batch, C]`` input with
    ``C <= 32`` every group then holds one value, normalises it to zero, and a single row cannot be
    scored at all. One group is LayerNorm over the features, per row, so it needs no batch.
    """
    for child_name, child in model.named_children():
        if isinstance(child, nn.BatchNorm1d):
            setattr(model, child_name, nn.GroupNorm(1, child.num_features, affine=child.affine))
        else:
            _batchnorm1d_to_groupnorm(child)
    if isinstance(model, nn.BatchNorm1d):
        return nn.GroupNorm(1, model.num_features, affine=model.affine)
    return model


def _fix(name: str, model: nn.Module) -> tuple[nn.Module, str | None]:
    """Apply Opacus's fixes; return the model and a one-line note of what changed (or None).

    Raises
    ------
    ConfigError
        With the validator's reason when Opacus cannot make the model trainable with DP-SGD.
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = ModuleValidator.validate(model, strict=False)
        note = None
        if before:
            types_before = {type(m).__name__ for m in model.modules()}
            replaced = sorted(t for t in types_before if "BatchNorm" in t or t in ("LSTM", "MultiheadAttention"))
            model = _batchnorm1d_to_groupnorm(model)
            model = ModuleValidator.fix(model)
            added = sorted({type(m).__name__ for m in model.modules()} - types_before)
            note = (
                f"model {name}: {', '.join(replaced) or 'unsupported layers'} replaced with "
                f"{', '.join(added) or 'private equivalents'} for Opacus (DP-SGD cannot use statistics of the "
                "batch; BatchNorm1d becomes one group, the features normalised per row)"
            )
        errors = [*ModuleValidator.validate(model, strict=False), *GradSampleModule.validate(model, strict=False)]
    if errors:
        reason = " ".join(str(errors[0]).split())
        raise ConfigError("model", f"Opacus cannot train model {name} with DP-SGD: {reason}")
    return model, note


def create_model(name: str, in_features: int, *, num_classes: int = 2, seed: int = 0) -> nn.Module:
    """Build the model named ``name`` with deterministic initial weights.

    Parameters
    ----------
    name : str
        A registered key (:func:`model_names`) or ``package.module:factory``.
    in_features, num_classes : int
        Width of the encoded input and number of classes (the output width).
    seed : int
        Seed of the initial weights (the same on every party for the same seed).

    Raises
    ------
    ConfigError
        If ``name`` is unknown, the factory fails or returns something other than a module
        whose output has ``num_classes`` columns, or Opacus cannot train it.
    """
    factory = resolve_factory(name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = factory(in_features, num_classes)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError("model", f"factory {name}({in_features}, {num_classes}) failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"factory {name} returned {type(model).__name__}, not a torch.nn.Module")
    if name in _MODELS:
        return model
    model, _ = _fix(name, model)
    _check_output(name, model, in_features, num_classes)
    return model


def _check_output(name: str, model: nn.Module, in_features: int, num_classes: int) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_features))
    except RuntimeError as e:
        raise ConfigError("model", f"model {name} fails on a [2, {in_features}] input: {e}") from e
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError("model", f"model {name} must return logits of shape [batch, {num_classes}] for "
                                   f"{num_classes} classes, got {got}")  # fmt: skip


def check_model(name: str, in_features: int, num_classes: int) -> str | None:
    """Build the model once to check it; return the one-line note of an Opacus fix, if any.

    Raises
    ------
    ConfigError
        As :func:`create_model`.
    """
    if name in _MODELS:
        return None
    factory = resolve_factory(name)
    with torch.random.fork_rng():
        model = factory(in_features, num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"factory {name} returned {type(model).__name__}, not a torch.nn.Module")
    _, note = _fix(name, model)
    create_model(name, in_features, num_classes=num_classes)
    return note


def model_for_schema(
    name: str, schema: DataSchema, *, seed: int = 0, arrays: Mapping[str, np.ndarray] | None = None
) -> nn.Module:
    """The model ``name`` shaped for ``schema`` (its encoded width and its classes).

    With ``arrays`` the weights are loaded and the model is put in evaluation mode.

    Raises
    ------
    ConfigError
        If the arrays do not fit (another schema or model trained them).
    """
    from fedready.encoding import FeatureEncoder

    width, k = FeatureEncoder(schema).width, schema.target.num_classes
    model = create_model(name, width, num_classes=k, seed=seed)
    if arrays is None:
        return model
    try:
        model.load_state_dict({key: torch.from_numpy(np.array(v)) for key, v in arrays.items()})
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError("schema", f"the model's weights do not fit model '{name}' on schema '{schema.name}' "
                                    f"({width} inputs, {k} classes); pass the schema and model the run was "
                                    f"trained with ({first})") from e  # fmt: skip
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return (loss, accuracy) of ``model`` on ``x``, ``y``."""
    model.eval()
    logits = model(torch.from_numpy(x))
    loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
    acc = float((logits.argmax(1).numpy() == y).mean())
    return loss, acc
