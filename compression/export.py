"""Export fedready's MLPs to ONNX straight from their weights.

The graph is written with ``onnx.helper`` (Gemm + Relu, then Softmax), not traced through
``torch.onnx``: every model fedready trains is a stack of Linear layers with ReLU between
them, so the graph is known up front, the bytes are deterministic for the same weights
(which signing and ``fedready reproduce`` rely on), and exporting needs neither torch nor
its exporter's extra dependencies. A test checks the outputs against PyTorch to 1e-5.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedready._io import atomic_write_bytes
from fedready.errors import IntegrityError
from fedready.modelio import load_npz

__all__ = [
    "INPUT",
    "LOGITS",
    "PROBABILITIES",
    "export_run",
    "mlp_layers",
    "mlp_to_onnx",
    "onnx_predict_proba",
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


def onnx_predict_proba(model: bytes | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Return ``P(y = 1)`` for each row of ``x`` using ONNX Runtime on the CPU."""
    (proba,) = session(model).run([PROBABILITIES], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})
    return proba[:, 1]


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Export a run's ``model.npz`` to ``model.onnx`` (in the run folder unless ``out`` is given).

    The ONNX metadata records the run id, model digest and schema digest from ``summary.json``
    and ``config.json`` when they exist, so the file alone names where it came from.
    """
    run = Path(run_dir)
    npz = run / "model.npz"
    if not npz.exists():
        raise IntegrityError(f"{npz} does not exist; run `fedready simulate` to completion first")
    arrays = load_npz(npz.read_bytes())
    meta: dict[str, str] = {"fedready.run_id": run.name}
    summary = run / "summary.json"
    if summary.exists():
        meta["fedready.model_digest"] = json.loads(summary.read_text())["model_digest"]
    model = mlp_to_onnx(mlp_layers(arrays), metadata=meta)
    target = Path(out) if out is not None else run / "model.onnx"
    atomic_write_bytes(target, model.SerializeToString())
    return target
