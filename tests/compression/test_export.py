import numpy as np
import pytest
import torch

from fedready.compression import mlp_layers, mlp_to_onnx, onnx_predict_proba
from fedready.errors import IntegrityError
from fedready.models import create_model


@pytest.mark.parametrize("name", ["logreg", "mlp", "mlp-large"])
def test_onnx_matches_pytorch_to_1e5(name):
    torch.manual_seed(1)
    model = create_model(name, 40, seed=3).eval()
    with torch.no_grad():  # non-trivial weights, not only the initialisation, at each layer's own scale
        for p in model.parameters():  # (a fixed 0.3 drove mlp-large's logits past 100: every output 0 or 1)
            p.add_(torch.randn_like(p) * p.std())
    x = np.random.default_rng(0).normal(size=(500, 40)).astype(np.float32)
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    onnx_model = mlp_to_onnx(mlp_layers(arrays))
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)), dim=1)[:, 1].numpy()
    assert ((ref > 0.01) & (ref < 0.99)).mean() > 0.5  # the comparison is over scores, not saturated 0s and 1s
    got = onnx_predict_proba(onnx_model, x)
    assert np.max(np.abs(got - ref)) < 1e-5


def test_export_is_deterministic():
    arrays = {k: v.numpy() for k, v in create_model("mlp", 10, seed=0).state_dict().items()}
    a = mlp_to_onnx(mlp_layers(arrays)).SerializeToString()
    b = mlp_to_onnx(mlp_layers(arrays)).SerializeToString()
    assert a == b


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"0.weight": np.zeros((2, 3))}, "lacks its bias"),
        (
            {"0.weight": np.zeros((4, 3)), "0.bias": np.zeros(4), "2.weight": np.zeros((2, 5)), "2.bias": np.zeros(2)},
            "do not chain",
        ),
        ({"conv.weight": np.zeros((2, 3))}, "not a Linear layer"),
    ],
)
def test_malformed_models_are_refused(arrays, words):
    with pytest.raises(IntegrityError, match=words):
        mlp_layers(arrays)
