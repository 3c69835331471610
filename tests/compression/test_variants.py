"""Variants built from a really trained teacher: shapes, sparsity, fidelity of int8 and students."""

import numpy as np
import pytest
import torch

from fedready.compression import mlp_layers, mlp_to_onnx, onnx_predict_proba
from fedready.compression.pipeline import public_split
from fedready.compression.variants import (
    count,
    distil,
    fine_tune,
    prune_structured,
    prune_unstructured,
    quantize,
    teacher_logits,
)
from fedready.errors import ConfigError
from fedready.models import create_model

_TEACHER_STATE: dict = {}


@pytest.fixture(scope="module")
def trained():
    """A 3x256 teacher trained centrally for two epochs (a stand-in for a federated global model)."""
    from fedready.task import load_task

    task = load_task()
    x, y = task.x_train, task.y_train
    torch.manual_seed(0)
    model = create_model("mlp-large", x.shape[1], seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    layers = mlp_layers(state)
    xh, yh = task.x_test, task.y_test
    tr, ev = public_split(len(xh), share=0.5, seed=0)
    _TEACHER_STATE.update(state)  # the weights as a run folder holds them (see _as_run)
    return layers, xh[tr], xh[ev], yh[ev]


def _as_run(folder, state):
    """The trained teacher as a finished run folder (config.json, summary.json, model.npz), as compress reads it."""
    import json

    from fedready.config import make_config
    from fedready.federation import record_run
    from fedready.modelio import arrays_digest, save_npz

    record_run(make_config(model="mlp-large"), folder, simulated=True)
    (folder / "model.npz").write_bytes(save_npz(state))
    (folder / "summary.json").write_text(json.dumps({"model_digest": arrays_digest(state)}))
    return folder


def _labels(layers, x):
    return teacher_logits(layers, x).argmax(1)


def test_structured_pruning_really_removes_units(trained):
    layers, *_ = trained
    slim = prune_structured(layers, keep=0.25)
    assert [w.shape for w, _ in slim] == [(64, layers[0][0].shape[1]), (64, 64), (64, 64), (2, 64)]
    assert count(slim)[0] < count(layers)[0] / 8
    # keeping every unit changes nothing
    full = prune_structured(layers, keep=1.0)
    x = np.random.default_rng(0).normal(size=(50, layers[0][0].shape[1])).astype(np.float32)
    np.testing.assert_allclose(teacher_logits(full, x), teacher_logits(layers, x), rtol=1e-5, atol=1e-5)


def test_unstructured_pruning_zeroes_the_share_asked_and_fine_tune_keeps_zeros(trained):
    layers, x_tr, *_ = trained
    pruned, masks = prune_unstructured(layers, sparsity=0.5)
    weights = sum(w.size for w, _ in layers)
    zeros = sum(int((w == 0).sum()) for w, _ in pruned)
    assert abs(zeros / weights - 0.5) < 0.01
    tuned = fine_tune(pruned, layers, x_tr[:1000], masks=masks, epochs=1, seed=0)
    assert sum(int((w == 0).sum()) for w, _ in tuned) >= zeros


def test_int8_variants_agree_with_fp32_labels(trained):
    layers, x_tr, x_ev, _ = trained
    fp32 = mlp_to_onnx(layers)
    ref = onnx_predict_proba(fp32, x_ev) >= 0.5
    # static int8 also quantises the activations: on this 3x256 teacher its agreement measured 0.9855 in two
    # fresh-clone runs of the suite (the teacher differs slightly with the worker's torch threads) and above
    # 0.99 in others; dynamic int8 (weights only) stays above 0.99. The release itself is decided by the
    # variant gates (min_agreement on the benchmark), not by this bound.
    for mode, bound in (("dynamic", 0.99), ("static", 0.975)):
        q = quantize(fp32, mode=mode, calibration=x_tr)
        assert len(q) < len(fp32.SerializeToString()) / 3
        agree = np.mean((onnx_predict_proba(q, x_ev) >= 0.5) == ref)
        assert agree >= bound, (mode, agree)


def test_distilled_student_follows_the_teacher(trained):
    layers, x_tr, x_ev, y_ev = trained
    student = distil(layers, x_tr, widths=(32,), epochs=15, seed=0)
    assert [w.shape[0] for w, _ in student] == [32, 2]
    assert np.mean(_labels(student, x_ev) == _labels(layers, x_ev)) > 0.95
    teacher_acc = np.mean(_labels(layers, x_ev) == y_ev)
    assert np.mean(_labels(student, x_ev) == y_ev) > teacher_acc - 0.01


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda L, x: prune_structured(L, keep=0.0), "keep"),
        (lambda L, x: prune_unstructured(L, sparsity=1.0), "sparsity"),
        (lambda L, x: distil(L, x, widths=(), epochs=1, seed=0), "student-widths"),
        (lambda L, x: quantize(mlp_to_onnx(L), mode="int4"), "quantization"),
        (lambda L, x: quantize(mlp_to_onnx(L), mode="static", calibration=None), "calibration"),
    ],
)
def test_bad_options_name_the_field(trained, call, field):
    layers, x_tr, *_ = trained
    with pytest.raises(ConfigError, match=f"^{field}:"):
        call(layers, x_tr)


def test_unfair_variant_is_not_selected_even_when_smallest(trained, tmp_path):
    """A tiny model that decides by sex alone is the smallest file; the fairness gate keeps it out."""
    from fedready.compression.pipeline import gate_assessor, measure, select
    from fedready.compression.variants import Variant
    from fedready.datasets.adult import adult_schema
    from fedready.encoding import FeatureEncoder

    layers, *_ = trained
    names = FeatureEncoder(adult_schema()).feature_names
    w = np.zeros((2, len(names)), dtype=np.float32)
    w[1, names.index("sex=Male")] = 5.0  # men: positive, women: negative, whatever else they are
    unfair = mlp_to_onnx([(w, np.array([0.0, 0.0], dtype=np.float32))]).SerializeToString()
    fair = mlp_to_onnx(layers).SerializeToString()
    assert len(unfair) < len(fair)
    variants = [
        Variant("fp32", fair, (), *count(layers)),
        Variant("sex-only", unfair, ("hand-made",), 2 * len(names), 1),
    ]
    policy = tmp_path / "fair.toml"
    # a variant is judged against the trained model: its change of the equalized odds difference by sex
    policy.write_text("[gates]\nmin_accuracy = 0.5\n[variant_gates.max_equalized_odds_change]\nsex = 0.1\n")
    run = _as_run(tmp_path / "run", _TEACHER_STATE)
    assess, x, y = gate_assessor(run, policy)
    measured = measure(variants, x, y, assess, timing=False)
    by_name = {m.variant.name: m for m in measured}
    failed = [g for g in by_name["sex-only"].gates if g.outcome == "fail"]
    assert [g.gate for g in failed] == ["max_equalized_odds_change[sex]"] and failed[0].lo > 0.1
    assert by_name["fp32"].passed
    assert select(measured).variant.name == "fp32"
