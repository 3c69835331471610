"""Why 3: the pipeline's own device raised a false drift alarm on unshifted rows (the reference profile's scores
came from the trained model, the device serves the compressed, temperature-scaled variant)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from fedready.cli import BREACH_EXIT
from fedready.datasets.adult import load_adult
from fedready.registry._canonical import file_sha256
from tests.security.conftest import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_device(pipeline_run):
    """The device `fedready pipeline` leaves (the session's short run: 2 rounds of the default MLP)."""
    out, _, result = pipeline_run
    assert result.exit_code == 0, result.output
    return out / "device"


def _window(path, *, n=5000, age_shift=0.0, female_share=None, seed=0):
    test = load_adult("test")
    rng = np.random.default_rng(seed)
    if female_share is None:
        idx = np.arange(n)
    else:
        sex = test.columns["sex"]
        female, male = np.flatnonzero(sex == "Female"), np.flatnonzero(sex == "Male")
        k = int(female_share * n)
        idx = np.concatenate([rng.choice(female, k), rng.choice(male, n - k)])
    t = test.take(idx)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(t.columns))
        w.writeheader()
        for vals in zip(*t.columns.values(), strict=True):
            row = dict(zip(t.columns, vals, strict=True))
            if age_shift:
                row["age"] = f"{float(row['age']) + age_shift:g}"
            w.writerow(row)
    return path


@pytest.mark.parametrize(("case", "shift", "expected", "feature"), [
    ("unshifted", {}, 0, None),
    ("age+10", {"age_shift": 10}, BREACH_EXIT, "age"),
    ("70% female", {"female_share": 0.7}, BREACH_EXIT, "sex"),
])  # fmt: skip
def test_pipeline_device_alarms_on_real_shifts_only(pipeline_device, tmp_path, case, shift, expected, feature):
    device = shutil.copytree(pipeline_device, tmp_path / "device")  # a copy: each case has its own window
    version = json.loads((device / "device.json").read_text())["active"]
    profile = json.loads((device / "models" / version / "reference_profile.json").read_text())
    # the reference's outputs belong to the model the device serves, computed on public data
    assert profile["outputs"]["model_sha256"] == file_sha256(device / "models" / version / "model.onnx")
    assert profile["outputs"]["decisions"] == "shipped" and "public holdout" in profile["outputs"]["source"]
    rows = _window(tmp_path / "rows.csv", **shift)
    code, out = cli("edge", "predict", "--home", device, rows)
    assert code == 0, out
    code, out = cli("monitor", "--home", device, "--window", 5000, "--json")
    assert code == expected, out
    report = json.loads(out.splitlines()[0])
    assert report["rows"] == 5000
    if expected == 0:  # before: exit 3, "prediction-drift psi 0.697 > 0.2" on these very rows
        assert report["breaches"] == [] and report["prediction"]["psi"] < 0.1
    else:
        assert any(b["kind"] == "feature-drift" and b["feature"] == feature for b in report["breaches"]), report
