"""Edge variants of the global model: ONNX export (and, later, pruning, distillation, quantisation)."""

from fedready.compression.export import export_run, mlp_layers, mlp_to_onnx, onnx_predict_proba

__all__ = ["export_run", "mlp_layers", "mlp_to_onnx", "onnx_predict_proba"]
