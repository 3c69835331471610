"""``fedready reproduce``: a DP artifact within its stated bounds, an insecure-seeded one bit for bit,
and a mismatch once the config is altered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.registry.conftest import SMALL, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sim_artifact(sim_run, keys, tmp_path_factory):
    from fedready.registry import package_run

    path, _ = package_run(sim_run, key=keys["operator"][0], version="1.0.0", out=tmp_path_factory.mktemp("simart"))
    return path


def test_dp_artifact_reproduces_within_the_stated_bounds_not_bit_for_bit(sim_artifact, keys, tmp_path):
    from fedready.config import make_config
    from fedready.modelio import load_npz, save_npz
    from fedready.registry._reproduce import _behaviour

    proc = run_cli(
        "reproduce",
        sim_artifact,
        "--public-key",
        keys["operator"][1],
        "--json",
        "--out",
        tmp_path,
        "--max-accuracy-gap",
        "0.05",
        "--min-agreement",
        "0.85",
    )  # a 3-round run: looser than the defaults
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["config_matches"] and report["data_matches"] and report["code_matches"]
    assert report["mode"] == "statistical" and report["match"] and report["within_bounds"]
    # secret noise: the re-run is a different model, which behaves the same
    assert report["reproduced_digest"] != json.loads((sim_artifact / "provenance.json").read_text())["model_digest"]
    assert report["agreement"] >= 0.85 and report["accuracy_gap"] <= 0.05
    # the check can fail: a re-run whose decisions are the opposite (output layer negated) is out of bounds
    rerun = Path(report["run_dir"])
    arrays = load_npz((rerun / "model.npz").read_bytes())
    last = [k for k in arrays if k.endswith("weight")][-1]
    flipped = {k: (-v if k in (last, last.replace("weight", "bias")) else v) for k, v in arrays.items()}
    (rerun / "model.npz").write_bytes(save_npz(flipped))
    cfg = make_config(**json.loads((sim_artifact / "config.json").read_text())["config"])
    summary = json.loads((rerun / "summary.json").read_text())
    out = _behaviour(sim_artifact, rerun, cfg, summary, 0.05, 0.85)
    assert not out["within_bounds"] and out["agreement"] < 0.85


def test_insecure_seeded_artifact_reproduces_bit_for_bit(keys, tmp_path, binary_task):
    from fedready.registry import package_run

    data = ["--data", binary_task["data"], "--schema", binary_task["schema"], "--test", binary_task["test"]]
    proc = run_cli("simulate", *SMALL, *data, "--rounds", "2", "--insecure-seeded-noise", "--out", tmp_path,
                   "--name", "s", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT PRIVATE" in json.loads(proc.stdout)["caveats"][0]
    art, _ = package_run(tmp_path / "s", key=keys["operator"][0], version="1.0.0", out=tmp_path / "art")
    report = json.loads(run_cli("reproduce", art, "--json").stdout)
    assert report["mode"] == "exact" and report["match"]
    assert report["reproduced_digest"] == json.loads((art / "provenance.json").read_text())["model_digest"]


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
