"""Why 7: `edge rollback` activated the previous model unchecked; a locally edited thresholds.json went live."""

from __future__ import annotations

import json

import pytest

from fedready.errors import IntegrityError
from fedready.registry import EdgeAgent
from tests.registry.test_edge_attacks import ROW
from tests.security.conftest import assert_one_line_error, cli


@pytest.fixture
def two_models(tmp_path, artifact, artifact_v2, keys):
    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact_v2, public_key=keys["operator"][1])
    agent.install(artifact)  # active 1.0.0, previous 2.0.0 (kept for rollback)
    assert (agent.state()["active"], agent.state()["previous"]) == ("1.0.0", "2.0.0")
    return agent


def test_rollback_to_a_locally_edited_model_is_refused(two_models):
    agent = two_models
    thresholds = agent.models / "2.0.0" / "thresholds.json"
    rule = json.loads(thresholds.read_text())
    thresholds.write_text(json.dumps({**rule, "thresholds": {"Female": 0.0, "Male": 0.0}}))  # everybody approved
    with pytest.raises(IntegrityError, match="'thresholds.json' changed since it was verified"):
        agent.rollback()
    assert agent.state()["active"] == "1.0.0"
    assert agent.predictor().predict([ROW])[0]["version"] == "1.0.0"
    code, out = cli("edge", "rollback", "--home", agent.home)
    assert_one_line_error(code, out, expect="changed since it was verified")


def test_rollback_to_a_model_with_a_planted_file_is_refused(two_models):
    agent = two_models
    (agent.models / "2.0.0" / "extra.onnx").write_bytes(b"planted")
    with pytest.raises(IntegrityError, match="'extra.onnx' was added or removed"):
        agent.rollback()
    (agent.models / "2.0.0" / "extra.onnx").unlink()
    assert agent.rollback() == "2.0.0"  # untouched again: the rollback goes through
    assert agent.predictor().predict([ROW])[0]["version"] == "2.0.0"
