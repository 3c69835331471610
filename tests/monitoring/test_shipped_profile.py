"""The reference profile describes the model a device serves: the compressed variant, post-processing included.

A short `fedready compress` (lenient policy, so a temperature-scaled variant is selected) on a demo run,
then `fedready package`: the artifact's profile keeps the clients' feature histograms and takes its
score and decision histograms from the selected variant on the public holdout (issue 16, Why 3).
"""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from fedready.cli import BREACH_EXIT
from fedready.datasets.adult import adult_schema, load_adult
from fedready.encoding import FeatureEncoder
from fedready.monitoring import compare
from fedready.monitoring.edge import load_window
from fedready.registry import EdgeAgent, package_run
from fedready.thresholds import DecisionRule
from tests.registry.conftest import keys, write_fake_run  # noqa: F401 -- the operator key fixture
from tests.security.conftest import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    from fedready.compression.pipeline import CompressionOptions, compress_run

    run = write_fake_run(tmp_path_factory.mktemp("runs") / "run")
    policy = run.parent / "lenient.toml"
    policy.write_text("[gates]\nmax_ece = 1.0\n")  # every variant passes: the smallest is selected
    report = compress_run(run, policy=policy, options=CompressionOptions(epochs=1, student_widths=(8,)), timing=False)
    assert report["selected"] not in (None, "fp32")
    return run


def test_output_profile_is_the_selected_variant_on_public_rows(compressed):
    from fedready.compression import onnx_predict_proba

    folder = compressed / "compression"
    doc = json.loads((folder / "output_profile.json").read_text())
    onnx = (folder / "selected.onnx").read_bytes()
    assert doc["model_sha256"] == hashlib.sha256(onnx).hexdigest() and doc["post_processing"] == "thresholds.json"
    table, schema = load_adult("test"), adult_schema()
    scores = onnx_predict_proba(onnx, FeatureEncoder(schema).transform(table.columns))
    expected = np.bincount(np.searchsorted(np.arange(1, 10) / 10, scores, side="right"), minlength=10)
    assert doc["counts"]["scores"] == expected.tolist() and doc["rows"] == len(table)
    rule = DecisionRule.load(folder / "thresholds.json")
    positive = rule.expected_positive(scores, table.columns[rule.attribute]).sum()
    assert doc["counts"]["predictions"][1] == pytest.approx(positive, abs=1e-3)


def _csv(path, *, age_shift=0.0, n=5000):
    t = load_adult("test").take(np.arange(n))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(t.columns))
        w.writeheader()
        for vals in zip(*t.columns.values(), strict=True):
            row = dict(zip(t.columns, vals, strict=True))
            row["age"] = f"{float(row['age']) + age_shift:g}"
            w.writerow(row)
    return path


@pytest.mark.parametrize(("age_shift", "expected"), [(0.0, 0), (10.0, BREACH_EXIT)])
def test_device_serving_the_selected_variant_does_not_cry_wolf(compressed, keys, tmp_path, age_shift, expected):  # noqa: F811
    art, _ = package_run(compressed, key=keys["operator"][0], version="1.0.0", out=tmp_path / "artifacts")
    profile = json.loads((art / "reference_profile.json").read_text())
    clients = json.loads((compressed / "reference_profile.json").read_text())
    assert profile["counts"]["features"] == clients["counts"]["features"]  # the clients' inputs, unchanged
    assert profile["outputs"]["decisions"] == "shipped" and profile["outputs"]["rows"] == 16281
    home = tmp_path / "device"
    EdgeAgent(home).install(art, public_key=keys["operator"][1])
    assert cli("edge", "predict", "--home", home, _csv(tmp_path / "rows.csv", age_shift=age_shift))[0] == 0
    code, out = cli("monitor", "--home", home, "--window", 5000, "--json")
    assert code == expected, out
    report = json.loads(out.splitlines()[0])
    if expected == 0:
        assert report["breaches"] == [] and report["prediction"]["psi"] < 0.1
        # the profile as the clients released it describes the trained model, not the one served
        before = compare(clients, load_window(home, version="1.0.0", rows=5000))
        assert before["prediction"]["psi"] > report["prediction"]["psi"]
    else:
        assert {b["feature"] for b in report["breaches"] if b["kind"] == "feature-drift"} == {"age"}
