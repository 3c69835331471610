"""Export models to ONNX: fedready's MLPs straight from their weights, any other model through torch.

The built-in models (``logreg``, ``mlp``, ...) are stacks of Linear layers with ReLU between
them, so their graph is written with ``onnx.helper`` (Gemm + Relu, then Softmax): known up
front, the bytes deterministic for the same weights (which signing and ``fedready reproduce``
rely on), and exporting needs no torch. A user's own model (``--model module:factory``) goes
through torch's TorchScript-based exporter (:func:`module_to_onnx`; the newer dynamo exporter
needs ``onnxscript``, one more dependency), and every export is checked against PyTorch to
1e-5 before it is written. Both graphs take ``features`` and return ``logits`` and
``probabilities`` (softmax), ``[batch, classes]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedready.errors import IntegrityError
from fedready.files import atomic_write_bytes
from fedready.modelio import load_npz

__all__ = [
    "INPUT",
    "LOGITS",
    "PROBABILITIES",
    "export_run",
    "mlp_layers",
    "mlp_to_onnx",
    "module_to_onnx",
    "onnx_predict_proba",
    "onnx_probabilities",
    "run_onnx",
    "session",
]

INPUT = "features"
LOGITS = "logits"
PROBABILITIES = "probabilities"
OPSET = 17

_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


def mlp_layers(arrays: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``[(weight, bias), ...]`` in layer order from a ``nn.Sequential`` state dict.

    Raises
    ------
    IntegrityError
        If the arrays are not a chain of Linear layers (unexpected keys, missing bias,
        shapes that do not connect).
    """
    found: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        m = _KEY.match(key)
        if m is None:
            raise IntegrityError(f"model array '{key}' is not a Linear layer's weight or bias")
        found.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value, dtype=np.float32)
    layers = []
    prev_out = None
    for idx in sorted(found):
        part = found[idx]
        if set(part) != {"weight", "bias"}:
            raise IntegrityError(f"layer {idx} lacks its {'bias' if 'weight' in part else 'weight'}")
        w, b = part["weight"], part["bias"]
        if w.ndim != 2 or b.shape != (w.shape[0],) or (prev_out is not None and w.shape[1] != prev_out):
            raise IntegrityError(f"layer {idx} has shapes {w.shape} and {b.shape} that do not chain")
        layers.append((w, b))
        prev_out = w.shape[0]
    if not layers:
        raise IntegrityError("the model holds no layers")
    return layers


def mlp_to_onnx(
    layers: list[tuple[np.ndarray, np.ndarray]],
    *,
    name: str = "fedready-mlp",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Build an ONNX model computing ``softmax(W_k relu(... relu(W_1 x + b_1)) + b_k)``.

    The model takes ``features`` (float32, ``[batch, in_features]``) and returns ``logits``
    and ``probabilities`` (``[batch, classes]``); the batch dimension is dynamic.
    """
    nodes, inits = [], []
    cur = INPUT
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == len(layers) - 1
        out = LOGITS if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out], transB=1, name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            out = f"a{i}"
        cur = out
    nodes.append(helper.make_node("Softmax", [LOGITS], [PROBABILITIES], axis=1, name="softmax"))
    d_in, d_out = layers[0][0].shape[1], layers[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", d_in])],
        [
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", d_out]),
            helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", d_out]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fedready")
    model.ir_version = 8  # readable by every onnxruntime since 1.14
    for k, v in sorted((metadata or {}).items()):
        model.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(model)
    return model


def session(model: bytes | onnx.ModelProto, *, threads: int = 1):
    """An ONNX Runtime CPU session; one intra-op thread by default, as on a small device."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def onnx_probabilities(model: bytes | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(rows, classes)`` for each row of ``x``, with ONNX Runtime on the CPU."""
    (proba,) = session(model).run([PROBABILITIES], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})
    return proba


def onnx_predict_proba(model: bytes | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Return ``P(y = 1)`` for each row of ``x`` (a binary model) using ONNX Runtime on the CPU."""
    return onnx_probabilities(model, x)[:, 1]


TOLERANCE = 1e-5  # largest difference allowed between ONNX Runtime's and PyTorch's probabilities


def _check_against_torch(logits: Any, proto: onnx.ModelProto, in_features: int) -> None:
    """Raise IntegrityError if the exported graph's probabilities differ from PyTorch's by more than 1e-5."""
    import torch

    x = np.random.default_rng(0).normal(size=(64, in_features)).astype(np.float32)
    with torch.no_grad():
        ref = torch.softmax(logits(torch.from_numpy(x)), dim=1).numpy()
    got = onnx_probabilities(proto, x)
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= TOLERANCE:
        raise IntegrityError(f"the ONNX export differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}); the model "
                             "uses an operation the exporter does not reproduce")  # fmt: skip


def module_to_onnx(
    module: Any, in_features: int, *, scale: float = 1.0, metadata: Mapping[str, str] | None = None
) -> onnx.ModelProto:
    """Export any ``torch.nn.Module`` returning logits to ONNX, checked against PyTorch to 1e-5.

    ``scale`` divides the logits before the softmax (a temperature folded into the graph).

    Raises
    ------
    IntegrityError
        If torch cannot export the model, or the exported outputs differ from PyTorch's.
    """
    import io
    import warnings

    import torch
    from torch import nn

    class _Head(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.inner(x) / scale
            return logits, torch.softmax(logits, dim=1)

    head = _Head(module).eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            batch = {0: "batch"}
            torch.onnx.export(head, (torch.zeros(2, in_features),), buf, input_names=[INPUT],
                              output_names=[LOGITS, PROBABILITIES], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT: batch, LOGITS: batch, PROBABILITIES: batch})  # fmt: skip
    except Exception as e:  # noqa: BLE001 -- torch's exporter raises many unrelated types; one message for all
        raise IntegrityError(f"torch cannot export the model to ONNX ({type(e).__name__}: {e})") from e
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in sorted((metadata or {}).items()):
        proto.metadata_props.add(key=k, value=str(v))
    onnx.checker.check_model(proto)
    _check_against_torch(lambda t: module(t) / scale, proto, in_features)
    return proto


def run_onnx(run_dir: str | Path, *, metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX graph of a run's global model: built from the weights for the built-in MLPs, else exported."""
    run = Path(run_dir)
    arrays = load_npz((run / "model.npz").read_bytes())
    config = json.loads((run / "config.json").read_text()).get("config", {}) if (run / "config.json").exists() else {}
    from fedready.models import is_builtin

    if is_builtin(config.get("model", "mlp")):
        return mlp_to_onnx(mlp_layers(arrays), metadata=metadata)
    from fedready.encoding import FeatureEncoder
    from fedready.evaluation.model import load_run

    rm = load_run(run)
    return module_to_onnx(rm.module, FeatureEncoder(rm.schema).width, metadata=metadata)


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Export a run's ``model.npz`` to ``model.onnx`` (in the run folder unless ``out`` is given).

    The ONNX metadata records the run id, model digest and schema digest from ``summary.json``
    and ``config.json`` when they exist, so the file alone names where it came from.
    """
    run = Path(run_dir)
    npz = run / "model.npz"
    if not npz.exists():
        raise IntegrityError(f"{npz} does not exist; run `fedready simulate` to completion first")
    meta: dict[str, str] = {"fedready.run_id": run.name}
    summary = run / "summary.json"
    if summary.exists():
        meta["fedready.model_digest"] = json.loads(summary.read_text())["model_digest"]
    model = run_onnx(run, metadata=meta)
    target = Path(out) if out is not None else run / "model.onnx"
    atomic_write_bytes(target, model.SerializeToString())
    return target
