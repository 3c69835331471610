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
    from fedready.monitoring import monitor

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
