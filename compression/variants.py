"""Edge variants of a trained model: pruning, distillation and int8 quantisation.

The built-in MLPs are handled as a list of (weight, bias) layers; any other PyTorch model
(``--model module:factory``) as a module: unstructured pruning and fine-tuning work on
every Linear and convolution weight of it, distillation trains an MLP student on its
logits, and int8 quantisation works on any ONNX graph. Structured pruning removes hidden
units of a plain Linear chain and so applies to the built-in MLPs only.

Every step here sees only the server's public transfer set and the (already private)
global model, never a client's data, so each variant is post-processing of the DP
model and the ledger's epsilon still holds (Dwork & Roth 2014, Prop. 2.1). A step
that touched client data would have to be accounted like a training round.

Fine-tuning and distillation fit the teacher's soft labels (Hinton et al. 2015,
arXiv:1503.02531) rather than the transfer set's own labels, so the public labels
are only ever used to *measure* variants.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from fedready.compression.export import INPUT, mlp_layers, mlp_to_onnx
from fedready.errors import ConfigError

__all__ = [
    "Layers",
    "Variant",
    "count_module",
    "distil",
    "fine_tune",
    "fine_tune_module",
    "fit_temperature",
    "module_logits",
    "prune_module_unstructured",
    "prune_structured",
    "prune_unstructured",
    "quantize",
    "temperature_scale",
]

Layers = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Variant:
    """One candidate edge model: its ONNX bytes and how it was made."""

    name: str
    onnx: bytes
    steps: tuple[str, ...]
    parameters: int  # weights and biases that are stored (zeros of unstructured pruning included)
    nonzero: int
    details: dict = field(default_factory=dict)


def count(layers: Layers) -> tuple[int, int]:
    """Return (stored parameters, non-zero parameters)."""
    total = sum(w.size + b.size for w, b in layers)
    nonzero = sum(int(np.count_nonzero(w)) + int(np.count_nonzero(b)) for w, b in layers)
    return total, nonzero


def _torch_mlp(layers: Layers):
    import torch
    from torch import nn

    mods: list[nn.Module] = []
    for i, (w, b) in enumerate(layers):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < len(layers) - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def _layers_of(model) -> Layers:
    return mlp_layers({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def teacher_logits(layers: Layers, x: np.ndarray) -> np.ndarray:
    """The teacher's logits on ``x`` (NumPy forward pass, float32)."""
    h = x.astype(np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def module_logits(model, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Logits of any PyTorch model on ``x`` (evaluation mode, float32)."""
    import torch

    model.eval()
    with torch.no_grad():
        parts = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))).numpy()
                 for i in range(0, len(x), batch_size)]  # fmt: skip
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _prunable(model) -> list:
    """The layers whose weights pruning may zero: every Linear and convolution."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]


def count_module(model) -> tuple[int, int]:
    """Return (stored parameters, non-zero parameters) of a PyTorch model."""
    params = [p.detach() for p in model.parameters()]
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


def fine_tune_module(
    model, teacher: np.ndarray, x: np.ndarray, *, epochs: int, seed: int, lr: float = 3e-3,
    temperature: float = 2.0, masks: Sequence[np.ndarray | None] | None = None, batch_size: int = 256,
):  # fmt: skip
    """Fit any PyTorch ``model`` (in place) to the soft labels of ``teacher`` logits on the public set ``x``.

    ``masks`` (one per :func:`_prunable` layer, or None) keep pruned weights at zero during
    fine-tuning, through ``torch.nn.utils.prune.custom_from_mask``. Returns the model.
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.utils import prune

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers = _prunable(model)
    for lin, mask in zip(layers, masks or [None] * len(layers), strict=True):
        if mask is not None:
            prune.custom_from_mask(lin, "weight", torch.from_numpy(mask.astype(np.float32)))
    xt = torch.from_numpy(x.astype(np.float32))
    soft = torch.softmax(torch.from_numpy(np.asarray(teacher, dtype=np.float32)) / temperature, dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for s in range(steps_per_epoch):
                idx = order[s * batch_size : (s + 1) * batch_size]
                log_p = F.log_softmax(model(xt[idx]) / temperature, dim=1)
                loss = F.kl_div(log_p, soft[idx], reduction="batchmean") * temperature**2
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    for lin in layers:
        if prune.is_pruned(lin):
            prune.remove(lin, "weight")
    return model.eval()


def fine_tune(
    student: Layers, teacher: Layers | np.ndarray, x: np.ndarray, *, epochs: int, seed: int, lr: float = 3e-3,
    temperature: float = 2.0, masks: Sequence[np.ndarray | None] | None = None, batch_size: int = 256,
) -> Layers:  # fmt: skip
    """Fit the MLP ``student`` to ``teacher``'s soft labels on the public transfer set ``x``.

    ``teacher`` is an MLP's layers or the teacher's logits on ``x`` (any model). ``masks``
    keep pruned weights at zero (see :func:`fine_tune_module`).
    """
    targets = teacher if isinstance(teacher, np.ndarray) else teacher_logits(teacher, x)
    model = fine_tune_module(_torch_mlp(student), targets, x, epochs=epochs, seed=seed, lr=lr,
                             temperature=temperature, masks=masks, batch_size=batch_size)  # fmt: skip
    return _layers_of(model)


def prune_module_unstructured(model, *, sparsity: float) -> tuple[object, list[np.ndarray]]:
    """A copy of any PyTorch model with the ``sparsity`` share of its Linear/conv weights zeroed, and the masks.

    Uses ``torch.nn.utils.prune.global_unstructured`` (L1) across every prunable layer.
    """
    import copy

    from torch.nn.utils import prune

    if not 0.0 < sparsity < 1.0:
        raise ConfigError("sparsity", f"must be in (0, 1), got {sparsity}")
    model = copy.deepcopy(model)
    layers = _prunable(model)
    if not layers:
        raise ConfigError("sparsity", "the model has no Linear or convolution weights to prune")
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    masks = [m.weight_mask.detach().numpy().copy() for m in layers]
    for m in layers:
        prune.remove(m, "weight")
    return model, masks


def prune_unstructured(layers: Layers, *, sparsity: float) -> tuple[Layers, list[np.ndarray]]:
    """Zero the ``sparsity`` share of weights with the smallest magnitude, across all layers.

    Uses ``torch.nn.utils.prune.global_unstructured`` (L1). The matrices keep their shape, so
    the dense ONNX file does not shrink: this variant saves multiply-adds on sparse kernels
    and compresses well, not bytes on disk. Returns the pruned layers and their masks.
    """
    model, masks = prune_module_unstructured(_torch_mlp(layers), sparsity=sparsity)
    return _layers_of(model), masks


def prune_structured(layers: Layers, *, keep: float) -> Layers:
    """Remove hidden units so each hidden layer keeps ``keep`` of its units; the model really shrinks.

    A unit's importance is the product of the L2 norms of its incoming and outgoing
    weights (what it can contribute to the next layer); the least important units are
    deleted together with their rows, biases and the next layer's columns.
    """
    if not 0.0 < keep <= 1.0:
        raise ConfigError("keep", f"must be in (0, 1], got {keep}")
    out = [(w.copy(), b.copy()) for w, b in layers]
    for i in range(len(out) - 1):
        w, b = out[i]
        w_next, b_next = out[i + 1]
        score = np.linalg.norm(w, axis=1) * np.linalg.norm(w_next, axis=0)
        k = max(1, int(round(keep * w.shape[0])))
        kept = np.sort(np.argsort(-score, kind="stable")[:k])
        out[i] = (w[kept], b[kept])
        out[i + 1] = (w_next[:, kept], b_next)
    return out


def distil(
    teacher: Layers | np.ndarray, x: np.ndarray, *, widths: Sequence[int], epochs: int, seed: int, lr: float = 3e-3
) -> Layers:
    """Train a fresh student MLP with hidden ``widths`` on the teacher's soft labels over ``x``.

    ``teacher`` is an MLP's layers or the teacher's logits on ``x`` (any model).
    """
    import torch

    if not widths or any(w < 1 for w in widths):
        raise ConfigError("student-widths", f"need one or more positive widths, got {list(widths)}")
    from fedready.models import build_mlp

    targets = teacher if isinstance(teacher, np.ndarray) else teacher_logits(teacher, x)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        init = _layers_of(build_mlp(x.shape[1], tuple(widths), classes=targets.shape[1]))
    return fine_tune(init, targets, x, epochs=epochs, seed=seed, lr=lr)


def quantize(model: onnx.ModelProto, *, mode: str, calibration: np.ndarray | None = None) -> bytes:
    """Quantise weights (and, for ``static``, activations) to int8 with ONNX Runtime's tools.

    ``dynamic`` quantises weights ahead of time and activations per batch at run time;
    ``static`` (QDQ format, per-channel weights) fixes activation ranges from
    ``calibration`` rows, which must come from public data, never a client's.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self, rows: np.ndarray) -> None:
            self._it = iter([{INPUT: rows[i : i + 256]} for i in range(0, len(rows), 256)])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d, "in.onnx"), Path(d, "out.onnx")
        onnx.save(model, src)
        import logging

        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT warns via root
        if mode == "dynamic":
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        elif mode == "static":
            if calibration is None or len(calibration) == 0:
                raise ConfigError("calibration", "static quantisation needs public calibration rows")
            quantize_static(
                src, dst, _Reader(calibration.astype(np.float32)), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
            )  # fmt: skip
        else:
            raise ConfigError("quantization", f"unknown mode '{mode}'; expected one of: dynamic, static")
        data = dst.read_bytes()
        for leftover in Path(d).glob("*"):
            os.unlink(leftover)
    return data


def temperature_scale(layers: Layers, x: np.ndarray, y: np.ndarray) -> tuple[Layers, float]:
    """Fit one temperature ``T`` on labelled public rows and fold it into the last layer.

    Temperature scaling (Guo et al. 2017, arXiv:1706.04599) divides the logits by ``T`` chosen
    to minimise the negative log-likelihood; it never changes which class has the larger
    logit, so accuracy is untouched while the probabilities become calibrated. Dividing the
    last layer's weights and bias by ``T`` gives the same logits, so the exported graph is
    unchanged in shape and size. DP training tends to leave models miscalibrated.
    """
    t = fit_temperature(teacher_logits(layers, x), y)
    w, b_last = layers[-1]
    return [*layers[:-1], ((w / t).astype(np.float32), (b_last / t).astype(np.float32))], t


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)`` on labels ``y``."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    y = np.asarray(y, dtype=np.int64)

    def nll(t: float) -> float:
        s = z / t
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    lo, hi = np.log(0.05), np.log(20.0)  # golden-section search over log T
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if nll(np.exp(a)) < nll(np.exp(b)):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return float(np.exp((lo + hi) / 2))


def to_onnx(layers: Layers) -> onnx.ModelProto:
    """Export ``layers`` (fp32) to ONNX."""
    return mlp_to_onnx(layers)
