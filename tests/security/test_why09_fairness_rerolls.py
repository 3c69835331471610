"""Why 9: the randomised fairness decision could be re-rolled, and a missing or odd sensitive value skipped it."""

from __future__ import annotations

import json

import pytest

from fedready.errors import IntegrityError
from fedready.registry import EdgeAgent, EdgeServer, ServeConfig, package_run
from tests.registry.test_edge_attacks import ROW
from tests.security.test_why05_hostile_http_clients import _post, _raw

# Men between 0.1 and 0.9 are approved with probability 0.5: the draw decides
RULE = {"attribute": "sex", "constraint": "equalized_odds", "groups": {
    "Female": {"op0": ">", "op1": ">", "t0": 0.5, "t1": 0.5, "p0": 1.0, "p1": 0.0, "p_ignore": 0.0,
               "prediction_constant": 0.0},
    "Male": {"op0": ">", "op1": ">", "t0": 0.9, "t1": 0.1, "p0": 0.5, "p1": 0.5, "p_ignore": 0.0,
             "prediction_constant": 0.0}}}  # fmt: skip


def _device(tmp_path, keys, name: str, rule: dict) -> EdgeAgent:
    from tests.security.conftest import write_fake_run

    run = write_fake_run(tmp_path / f"run-{name}", seed=4)
    (run / "thresholds.json").write_text(json.dumps(rule))
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / f"art-{name}")
    agent = EdgeAgent(tmp_path / f"device-{name}")
    agent.install(art, public_key=keys["operator"][1])
    return agent


@pytest.fixture
def randomised(tmp_path, keys):
    return _device(tmp_path, keys, "randomised", RULE)


def test_resending_a_row_with_another_request_id_cannot_reroll_its_decision(randomised):
    predictor = randomised.predictor()
    rows = [{**ROW, "age": str(a), "hours-per-week": str(h)} for a in range(20, 80, 3) for h in (20, 40, 60)]
    undecided = [r for r, p in zip(rows, predictor.predict(rows), strict=True) if p.get("positive_probability") == 0.5]
    assert len(undecided) >= 10  # the draw matters for these rows
    row = undecided[0]
    # the attack: the same person, resent with a different ignored field, key order or spacing
    variants = [{**row, "request_id": str(i)} for i in range(12)]
    variants += [dict(reversed(list(row.items()))), {k: f" {v} " for k, v in row.items()},
                 {**row, "age": f"{row['age']}.0"}]  # fmt: skip
    decisions = {p["prediction"] for p in predictor.predict(variants)}
    assert len(decisions) == 1
    # still a fair coin across people (the rule's 0.5 holds), and secret: another device draws differently
    first = [p["prediction"] for p in predictor.predict(undecided)]
    assert 0 < sum(first) < len(first)
    server = EdgeServer(randomised.home, ServeConfig(port=0))
    server.start()
    try:
        served = {json.loads(_raw(server, _post(json.dumps(v).encode()))[2])["prediction"] for v in variants[:6]}
    finally:
        server.stop()
    assert served == decisions


@pytest.mark.parametrize(("change", "words"), [({"sex": None}, "'sex' is missing"),
                                               ({"sex": "male"}, "'sex' is 'male'"),
                                               ({"sex": "Other"}, "not one of Female, Male")])  # fmt: skip
def test_missing_or_unknown_sensitive_value_is_refused_not_silently_unprocessed(randomised, change, words):
    row = {k: v for k, v in {**ROW, **change}.items() if v is not None}
    with pytest.raises(IntegrityError, match=words):
        randomised.predictor().predict([row])
    server = EdgeServer(randomised.home, ServeConfig(port=0))
    server.start()
    try:
        status, _, body = _raw(server, _post(json.dumps(row).encode()))
    finally:
        server.stop()
    assert status == 422 and words in json.loads(body)["error"]


def test_an_explicit_fallback_in_the_artifact_answers_unknown_groups_as_documented(tmp_path, keys):
    agent = _device(tmp_path, keys, "fallback", {**RULE, "unknown_group": "no-post-processing"})
    (result,) = agent.predictor().predict([{k: v for k, v in ROW.items() if k != "sex"}])
    assert result["threshold"] == 0.5 and result["prediction"] == int(result["probability"] >= 0.5)
