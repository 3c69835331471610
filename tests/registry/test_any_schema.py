"""The edge path on a small synthetic schema (not Adult): packaging, validation, the fairness rule, monitoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedready.errors import IntegrityError
from fedready.registry import EdgeAgent, package_run
from fedready.schema import DataSchema

SCHEMA = {
    "name": "loans",
    "columns": [
        {"name": "income", "kind": "numeric", "min": 0, "max": 200, "bins": [50, 100]},
        {"name": "term", "kind": "numeric", "min": 1, "max": 30},
        {"name": "region", "kind": "categorical", "categories": ["north", "south"]},
        {"name": "group", "kind": "categorical", "categories": ["a", "b"]},
    ],
    "target": {"column": "repaid", "positive": ["yes"], "negative": ["no"]},
    "sensitive": ["group"],
}  # fmt: skip
_NONE = {"p_ignore": 0.0, "prediction_constant": 0}
RULE = {"attribute": "group", "groups": {
    "a": {"op0": ">", "op1": ">", "t0": 0.9, "t1": 0.0, "p0": 0.5, "p1": 0.5, **_NONE},  # randomised
    "b": {"op0": ">", "op1": ">", "t0": 0.5, "t1": 0.5, "p0": 1.0, "p1": 0.0, **_NONE},  # a plain cut-off
}}  # fmt: skip


def _rows(n: int, seed: int = 0, *, income_shift: float = 0.0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{"income": f"{rng.uniform(10, 150) + income_shift:.1f}", "term": str(int(rng.integers(1, 30))),
             "region": str(rng.choice(["north", "south"])), "group": str(rng.choice(["a", "b"]))}
            for _ in range(n)]  # fmt: skip


def _loans_run(path, *, thresholds: dict | None):
    """A run folder of the synthetic schema with a small random MLP, its clients' profile and a fairness rule."""
    from fedready.config import make_config
    from fedready.encoding import FeatureEncoder
    from fedready.modelio import arrays_digest, save_npz
    from fedready.monitoring import NoiseRecord, count_rows, profile_document

    schema = DataSchema.model_validate(SCHEMA)
    width = FeatureEncoder(schema).width
    rng = np.random.default_rng(1)
    arrays = {"0.weight": rng.normal(0, 1, (8, width)).astype(np.float32), "0.bias": np.zeros(8, np.float32),
              "2.weight": rng.normal(0, 1, (2, 8)).astype(np.float32), "2.bias": np.zeros(2, np.float32)}  # fmt: skip
    path.mkdir(parents=True)
    (path / "model.npz").write_bytes(save_npz(arrays))
    (path / "schema.json").write_text(json.dumps(schema.to_dict()))
    (path / "config.json").write_text(json.dumps({"config": make_config(rounds=1).model_dump()}))
    (path / "summary.json").write_text(json.dumps({"run_id": "loans", "model_digest": arrays_digest(arrays)}))
    (path / "ledger.json").write_text(json.dumps({"accountant": "rdp", "delta": 1e-5, "entries": [], "declines": []}))
    rows = _rows(2000, seed=2)
    cols = {c: np.array([r[c] for r in rows]) for c in rows[0]}
    counts = count_rows(schema, cols, scores=np.full(len(rows), 0.5), predictions=np.zeros(len(rows), int))
    doc = profile_document(schema, counts, NoiseRecord("none"), model_digest=arrays_digest(arrays), clients=1)
    (path / "reference_profile.json").write_text(json.dumps(doc))
    if thresholds is not None:
        (path / "thresholds.json").write_text(json.dumps(thresholds))
    return path


@pytest.fixture
def loans_device(tmp_path, keys):
    art, _ = package_run(_loans_run(tmp_path / "run", thresholds=RULE), key=keys["operator"][0], version="0.1.0",
                         out=tmp_path / "artifacts")  # fmt: skip
    agent = EdgeAgent(tmp_path / "device")
    agent.install(art, public_key=keys["operator"][1])
    return agent


def test_rows_of_another_schema_are_checked_and_decided_deterministically(loans_device):
    predictor = loans_device.predictor()
    rows = _rows(200)
    first = predictor.predict(rows)
    assert [p["prediction"] for p in first] == [p["prediction"] for p in predictor.predict(
        [{**r, "request_id": str(i)} for i, r in enumerate(rows)])]  # fmt: skip
    undecided = [p for p in first if 0 < p.get("positive_probability", 0) < 1]
    assert undecided and 0 < sum(p["prediction"] for p in undecided) < len(undecided)
    with pytest.raises(IntegrityError, match="row 2: column 'income' holds 'lots', not a number"):
        predictor.predict([rows[0], {**rows[1], "income": "lots"}])
    with pytest.raises(IntegrityError, match="row 1: 'group' is 'c', not one of a, b"):
        predictor.predict([{**rows[0], "group": "c"}])


def test_profile_of_a_schema_without_public_data_says_so_and_skips_the_rate_check(loans_device):
    from fedready.registry import monitor

    version = loans_device.state()["active"]
    profile = json.loads((loans_device.models / version / "reference_profile.json").read_text())
    assert profile["outputs"]["decisions"] == "before-post-processing" and "clients" in profile["outputs"]["source"]
    from fedready.monitoring import Recorder

    predictor = loans_device.predictor()
    for shift, feature in ((0.0, None), (60.0, "income")):
        rows = _rows(1000, seed=5, income_shift=shift)
        Recorder(loans_device.home).record(predictor.schema, rows, predictor.predict(rows), version=version,
                                           latency=0.0)  # fmt: skip
        report = monitor(loans_device.home, window=1000)
        assert report["prediction"]["positive_rate_checked"] is False
        assert {b["feature"] for b in report["breaches"] if b["kind"] == "feature-drift"} == (
            {feature} if feature else set())  # fmt: skip


def test_package_signs_an_explicit_fallback_for_unknown_groups(tmp_path, keys):
    run = _loans_run(tmp_path / "run", thresholds=RULE)
    art, _ = package_run(run, key=keys["operator"][0], version="0.2.0", out=tmp_path / "a", unknown_group="group:b")
    assert json.loads((art / "thresholds.json").read_text())["unknown_group"] == "group:b"
    agent = EdgeAgent(tmp_path / "device")
    agent.install(art, public_key=keys["operator"][1])
    (result,) = agent.predictor().predict([{**_rows(1)[0], "group": "c"}])  # decided by group b's rule
    assert result["positive_probability"] == float(result["probability"] > 0.5) == result["prediction"]
    from fedready.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown-group"):
        package_run(run, key=keys["operator"][0], version="0.3.0", out=tmp_path / "a", unknown_group="group:z")


# -- the task layer: a user's own CSV task (tests/conftest.py), binary and multi-class -------------------


def _task_run(path, task: dict, *, classes: int, compressed: bool, thresholds: dict | None = None):
    """A run folder of a synthetic task as `fedready simulate` (and, if ``compressed``, `compress`) leave it.

    The clients' profile counts the model on the training rows; the "compressed" variant is the fp32
    graph itself, its output profile written by compress's own :func:`public_outputs` on the benchmark.
    """
    from fedready.compression.export import mlp_layers, mlp_to_onnx
    from fedready.compression.pipeline import public_outputs
    from fedready.config import make_config
    from fedready.modelio import arrays_digest, save_npz
    from fedready.monitoring import NoiseRecord, count_rows, profile_document
    from fedready.task import TaskSpec, load_task

    t = load_task(TaskSpec(data=str(task["data"]), schema=str(task["schema"]), test=str(task["test"])))
    rng = np.random.default_rng(3)
    arrays = {"0.weight": rng.normal(0, 1, (8, t.in_features)).astype(np.float32),
              "0.bias": np.zeros(8, np.float32),
              "2.weight": rng.normal(0, 1, (classes, 8)).astype(np.float32),
              "2.bias": np.zeros(classes, np.float32)}  # fmt: skip
    onnx = mlp_to_onnx(mlp_layers(arrays)).SerializeToString()
    path.mkdir(parents=True)
    cfg = make_config(rounds=1, data=str(task["data"]), schema=str(task["schema"]), test=str(task["test"]))
    (path / "model.npz").write_bytes(save_npz(arrays))
    (path / "config.json").write_text(json.dumps({"config": cfg.model_dump()}))
    (path / "summary.json").write_text(json.dumps({"run_id": path.name, "model_digest": arrays_digest(arrays)}))
    (path / "ledger.json").write_text(json.dumps({"accountant": "rdp", "delta": 1e-5, "entries": [], "declines": []}))
    from fedready.compression.export import onnx_probabilities

    proba = onnx_probabilities(onnx, t.x_train)
    score = proba[:, 1] if classes == 2 else proba.max(axis=1)
    counts = count_rows(t.schema, t.train.columns, scores=score, predictions=proba.argmax(axis=1), labels=t.y_train)
    doc = profile_document(t.schema, counts, NoiseRecord("none"), model_digest=arrays_digest(arrays), clients=1)
    (path / "reference_profile.json").write_text(json.dumps(doc))
    if thresholds is not None:
        (path / "thresholds.json").write_text(json.dumps(thresholds))
    if compressed:
        (path / "compression").mkdir()
        (path / "compression" / "selected.onnx").write_bytes(onnx)
        (path / "compression" / "compression.json").write_text(json.dumps({"selected": "fp32"}))
        groups = {a: t.test.columns[a] for a in t.schema.sensitive}
        out = public_outputs(onnx, None, x=t.x_test, y=t.y_test, groups=groups, source=t.test_source)
        (path / "compression" / "output_profile.json").write_text(json.dumps(out))
    return path, t


def test_multiclass_device_compares_like_with_like_on_its_own_benchmark(multiclass_task, keys, tmp_path):
    from typer.testing import CliRunner

    from fedready.cli import app

    run, task = _task_run(tmp_path / "run", multiclass_task, classes=3, compressed=True)
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "artifacts")
    profile = json.loads((art / "reference_profile.json").read_text())
    assert profile["outputs"]["decisions"] == "shipped" and profile["outputs"]["rows"] == len(task.test)
    assert len(profile["counts"]["predictions"]) == 3 and sum(profile["counts"]["predictions"]) == len(task.test)
    home = tmp_path / "device"
    EdgeAgent(home).install(art, public_key=keys["operator"][1])
    # the benchmark CSV as it is: 5% of `score` is "?", a declared missing value, read as its fill value
    res = CliRunner().invoke(app, ["edge", "predict", "--home", str(home), str(multiclass_task["test"])])
    assert res.exit_code == 0, res.output
    results = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(results) == len(task.test) and set(results[0]["probabilities"]) == {"0", "1", "2"}
    from fedready.registry import monitor

    report = monitor(home, window=len(task.test))
    # the same model on the same rows: the device counts exactly what the profile holds
    assert report["prediction"]["psi"] == pytest.approx(0.0, abs=1e-9)
    window = np.bincount([r["prediction"] for r in results], minlength=3).tolist()
    assert window == profile["counts"]["predictions"]
    predictor = EdgeAgent(home).predictor()
    row = {"age": "?", "income": "5000", "group": "A", "color": "red", "score": "0.1"}
    fill = task.schema.column("age").fill  # a declared missing value is the value training read it as
    assert predictor.predict([row, {**row, "age": None}]) == predictor.predict([{**row, "age": fill}]) * 2
    with pytest.raises(IntegrityError, match="row 1: column 'age' holds 'old', not a number"):
        predictor.predict([{**row, "age": "old"}])


def test_fp32_with_post_processing_takes_its_outputs_from_the_runs_benchmark(binary_task, keys, tmp_path):
    rule = {"attribute": "group", "thresholds": {"A": 0.6, "B": 0.4}, "default": 0.5}
    run, task = _task_run(tmp_path / "run", binary_task, classes=2, compressed=False, thresholds=rule)
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "artifacts")
    profile = json.loads((art / "reference_profile.json").read_text())
    outputs = profile["outputs"]
    assert outputs["decisions"] == "shipped" and outputs["source"] == task.test_source
    assert outputs["post_processing"] == "thresholds.json" and outputs["rows"] == len(task.test)
    clients = json.loads((run / "reference_profile.json").read_text())
    assert profile["counts"]["features"] == clients["counts"]["features"]
    agent = EdgeAgent(tmp_path / "device")
    agent.install(art, public_key=keys["operator"][1])
    rows = [dict(zip(task.test.columns, v, strict=True)) for v in zip(*task.test.columns.values(), strict=True)]
    decided = sum(r["prediction"] for r in agent.predictor().predict(rows))
    assert profile["counts"]["predictions"] == [len(rows) - decided, decided]
