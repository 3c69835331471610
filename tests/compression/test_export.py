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


@pytest.mark.parametrize("factory", ["residual_layernorm", "residual_batchnorm"])
def test_a_user_model_exports_through_torch_and_matches_to_1e5(factory):
    from fedready.compression.export import module_to_onnx, onnx_probabilities

    model = create_model(f"fedready_test_models:{factory}", 12, num_classes=3, seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    proto = module_to_onnx(model, 12, scale=1.7)
    x = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(x)) / 1.7, dim=1).numpy()
    got = onnx_probabilities(proto, x)
    assert got.shape == (300, 3) and np.max(np.abs(got - ref)) < 1e-5
    assert module_to_onnx(model, 12, scale=1.7).SerializeToString() == proto.SerializeToString()  # deterministic


def test_every_variant_that_applies_is_built_for_a_user_model_and_the_rest_is_said():
    from fedready.compression.export import onnx_probabilities
    from fedready.compression.pipeline import CompressionOptions, build_variants

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    model = create_model("fedready_test_models:residual_layernorm", 12, num_classes=3, seed=0)
    skipped: list = []
    variants = build_variants(model, x, CompressionOptions(epochs=2), y, skipped=skipped, model="mine:net")
    names = [v.name for v in variants]
    assert names[:4] == ["fp32", "int8-dynamic", "int8-static", "prune-unstructured-0.5"]
    assert "student-64" in names and not any(n.startswith("prune-structured") for n in names)
    assert [s["variant"] for s in skipped] == ["prune-structured"] and "mine:net" in skipped[0]["reason"]
    pruned = next(v for v in variants if v.name == "prune-unstructured-0.5")
    assert pruned.nonzero < 0.8 * pruned.parameters  # half the Linear weights are zero
    for v in variants:
        assert onnx_probabilities(v.onnx, x[:5]).shape == (5, 3)
