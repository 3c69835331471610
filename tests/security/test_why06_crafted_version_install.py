"""Why 6: `edge install` followed a crafted version out of HOME, deleting a folder and repointing device.json."""

from __future__ import annotations

import json

import pytest

from fedready.errors import IntegrityError
from fedready.registry import EdgeAgent
from tests.security.conftest import assert_one_line_error, cli, copy_artifact, edit_json, resign


def test_operator_signed_artifact_with_a_path_traversing_version_is_refused(tmp_path, artifact, keys):
    crafted = copy_artifact(artifact, tmp_path / "crafted")
    edit_json(crafted / "provenance.json", version="../../victim/important")
    resign(crafted, keys["operator"][0])  # the signature is genuine: only the version is hostile
    home = tmp_path / "home" / "device"
    victim = tmp_path / "home" / "victim" / "important"
    victim.mkdir(parents=True)
    (victim / "data.txt").write_text("keep me")
    agent = EdgeAgent(home)
    agent.install(artifact, public_key=keys["operator"][1])
    before = json.loads((home / "device.json").read_text())
    with pytest.raises(IntegrityError, match="names an unsafe version"):
        agent.install(crafted)
    assert (victim / "data.txt").read_text() == "keep me"
    assert json.loads((home / "device.json").read_text()) == before and agent.state()["active"] == "1.0.0"
    code, out = cli("edge", "install", crafted, "--home", home)
    assert_one_line_error(code, out, expect="'../../victim/important' is not a valid version")
    assert (victim / "data.txt").exists() and not list(home.parent.glob("victim/important/*.onnx"))
