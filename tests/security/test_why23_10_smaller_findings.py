"""Issue 23, Why 10: smaller findings.

* The version and file-name patterns accepted a trailing newline: a signed ``"1.0.0\\n"`` installed as
  ``models/1.0.0\\n``, printed as 1.0.0 and got around immutability.
* ``edge rollback`` checked signatures only when ``device.json`` had no digests, and never compared the
  provenance version with the folder name.
* After a failed reload, 500 bodies leaked device paths and ``/health`` still said ``ok``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from fedready.errors import ConfigError, IntegrityError
from fedready.registry import EdgeAgent, Registry
from fedready.registry._canonical import check_file_name, check_version
from tests.registry.test_edge_attacks import ROW
from tests.security.conftest import assert_one_line_error, cli, copy_artifact, edit_json, resign
from tests.security.test_why05_hostile_http_clients import _post, _raw


@pytest.mark.parametrize("version", ["1.0.0\n", "1.0.0\r\n", "1.0.0\x00", "1.0.0 "])
def test_why23_10_a_version_with_a_trailing_newline_is_refused_everywhere(tmp_path, artifact, keys, version):
    with pytest.raises(ConfigError, match="is not a valid version"):
        check_version(version)
    with pytest.raises(IntegrityError, match="is not allowed in an artifact"):
        check_file_name("model.onnx\n")
    crafted = copy_artifact(artifact, tmp_path / "crafted")
    edit_json(crafted / "provenance.json", version=version)
    resign(crafted, keys["operator"][0])  # a genuine signature over the odd version
    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact, public_key=keys["operator"][1])
    code, out = cli("edge", "install", crafted, "--home", agent.home)
    assert_one_line_error(code, out, expect="names an unsafe version")
    assert sorted(p.name for p in agent.models.iterdir()) == ["1.0.0"]  # no second, look-alike folder
    reg = Registry.init(tmp_path / "registry")
    with pytest.raises(IntegrityError, match="which no device installs"):
        reg.publish(crafted, public_key=keys["operator"][1])


@pytest.fixture
def two_models(tmp_path, artifact, artifact_v2, keys):
    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact_v2, public_key=keys["operator"][1])
    agent.install(artifact)  # active 1.0.0, previous 2.0.0
    return agent


def test_why23_10_rollback_verifies_the_signature_even_without_recorded_digests(two_models):
    agent = two_models
    state = json.loads((agent.home / "device.json").read_text())
    del state["digests"]  # a device.json from before digests, or edited by a local user
    (agent.home / "device.json").write_text(json.dumps(state))
    (agent.models / "2.0.0" / "thresholds.json").write_text(json.dumps({"attribute": "sex", "thresholds": {},
                                                                         "default": 0.0}))  # fmt: skip
    code, out = cli("edge", "rollback", "--home", agent.home)
    assert_one_line_error(code, out, expect="thresholds.json")
    assert agent.state()["active"] == "1.0.0"


def test_why23_10_rollback_refuses_a_signed_model_copied_under_another_version(two_models, tmp_path):
    agent = two_models
    shutil.rmtree(agent.models / "2.0.0")
    shutil.copytree(agent.models / "1.0.0", agent.models / "2.0.0")  # genuine files, signed as 1.0.0
    state = json.loads((agent.home / "device.json").read_text())
    state["digests"]["2.0.0"] = state["digests"]["1.0.0"]  # a local user fixing up the recorded digests too
    (agent.home / "device.json").write_text(json.dumps(state))
    code, out = cli("edge", "rollback", "--home", agent.home)
    assert_one_line_error(code, out, expect="the signed provenance names version '1.0.0', not '2.0.0'")
    assert agent.state()["active"] == "1.0.0"


def test_why23_10_a_failed_reload_answers_503_without_paths_and_health_says_so(device, serve, artifact_v2):
    server = serve()
    assert _raw(server, _post(json.dumps(ROW).encode()))[0] == 200
    device.install(artifact_v2)  # edge update/install switches the active model under the running server
    (device.models / "2.0.0" / "model.onnx").write_bytes(b"not a model any more")
    status, _, body = _raw(server, _post(json.dumps(ROW).encode()))
    home = str(device.home).encode()
    assert status == 503 and home not in body and b"does not load" in body, body
    status, _, body = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")
    health = json.loads(body)
    assert status == 503 and health["status"] == "no-model" and home not in body, health
    assert _raw(server, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 503
    shutil.rmtree(device.models / "1.0.0", ignore_errors=True)  # nothing to fall back to on disk either
    device.install(artifact_v2.parent / "2.0.0")  # the operator repairs the device: the server recovers
    assert _raw(server, _post(json.dumps(ROW).encode()))[0] == 200
    assert json.loads(_raw(server, b"GET /health HTTP/1.1\r\n\r\n")[2])["status"] == "ok"
