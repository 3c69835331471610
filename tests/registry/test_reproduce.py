"""``fedready reproduce`` on a simulated artifact: the same digest, and a mismatch once the config is altered."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.registry.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_artifact(sim_run, keys, tmp_path_factory):
    from fedready.registry import package_run

    path, _ = package_run(sim_run, key=keys["operator"][0], version="1.0.0", out=tmp_path_factory.mktemp("simart"))
    return path


def test_reproduce_matches_recorded_digest(sim_artifact, keys):
    proc = run_cli("reproduce", sim_artifact, "--public-key", keys["operator"][1], "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["match"] and report["config_matches"]
    assert report["reproduced_digest"] == json.loads((sim_artifact / "provenance.json").read_text())["model_digest"]


def test_reproduce_reports_mismatch_when_config_is_altered(sim_artifact, keys, tmp_path):
    altered = tmp_path / "1.0.0"
    shutil.copytree(sim_artifact, altered)
    data = json.loads((altered / "config.json").read_text())
    data["config"]["seed"] = 1
    (altered / "config.json").write_text(json.dumps(data))
    # the signature already refuses the altered artifact ...
    signed = run_cli("reproduce", altered, "--public-key", keys["operator"][1])
    assert signed.returncode == 1 and "file 'config.json' differs" in signed.stderr
    # ... and without it, the config no longer has the recorded digest: a mismatch, without training
    proc = run_cli("reproduce", altered, "--json", timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert not report["match"] and not report["config_matches"] and report["reproduced_digest"] is None
    assert "MISMATCH" in proc.stderr and "nothing was re-run" in proc.stderr
