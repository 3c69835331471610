"""Packaging and verification of signed artifacts (model-signing bundles)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.errors import ConfigError, IntegrityError
from fedready.registry import Provenance, package_run, verify_artifact
from fedready.registry._artifact import payload_digests
from fedready.registry._canonical import canonical_json


def _copy(artifact, tmp_path):
    dst = tmp_path / artifact.name
    shutil.copytree(artifact, dst)
    return dst


def test_untouched_artifact_verifies(artifact, keys):
    prov = verify_artifact(artifact, public_key=keys["operator"][1])
    assert prov.version == "1.0.0" and prov.evaluation == "not-run" and prov.compression == {"status": "not-run"}
    assert prov.schema_digest.startswith("sha256:") and prov.packages["onnxruntime"]


def test_signature_covers_every_file(artifact):
    signed = payload_digests(artifact)
    on_disk = {p.name for p in artifact.iterdir() if p.name != "model.sig"}
    assert set(signed) == on_disk
    assert {"model.onnx", "schema.json", "provenance.json", "config.json", "ledger_summary.json"} <= on_disk
    for name, digest in signed.items():
        assert hashlib.sha256((artifact / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", ["model.onnx", "schema.json", "provenance.json", "ledger_summary.json"])
def test_flipped_byte_is_named(artifact, keys, tmp_path, name):
    art = _copy(artifact, tmp_path)
    data = bytearray((art / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / name).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"file '{name}' differs") as info:
        verify_artifact(art, public_key=keys["operator"][1])
    assert payload_digests(art)[name] in str(info.value)  # expected digest printed beside the actual one


def test_extra_file_is_refused(artifact, keys, tmp_path):
    art = _copy(artifact, tmp_path)
    (art / "backdoor.onnx").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="'backdoor.onnx' is not covered"):
        verify_artifact(art, public_key=keys["operator"][1])


def test_other_key_is_refused(artifact, keys):
    with pytest.raises(IntegrityError, match="key mismatch"):
        verify_artifact(artifact, public_key=keys["other"][1])


def test_republishing_different_bytes_is_refused(fake_run, artifact, keys, tmp_path):
    from tests.registry.conftest import write_fake_run

    # the same run again: the existing folder is kept as it is
    path, new = package_run(fake_run, key=keys["operator"][0], version="1.0.0", out=artifact.parent)
    assert (path, new) == (artifact, False)
    other = write_fake_run(tmp_path / "fake", seed=1)
    before = (artifact / "model.sig").read_bytes()
    with pytest.raises(ConfigError, match="immutable"):
        package_run(other, key=keys["operator"][0], version="1.0.0", out=artifact.parent)
    assert (artifact / "model.sig").read_bytes() == before


def test_evaluation_reports_are_packaged_and_gate_recorded(fake_run, keys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    (run / "evaluation.json").write_text(json.dumps({"passed": False, "gates": []}))
    (run / "thresholds.json").write_text(json.dumps({"attribute": "sex", "thresholds": {"Female": 0.4}}))
    (run / "model_card.md").write_text("# card\n")
    art, _ = package_run(run, key=keys["operator"][0], version="2.0.0", out=tmp_path / "art", parent_version="1.0.0")
    prov = verify_artifact(art, public_key=keys["operator"][1])
    assert prov.evaluation == "failed" and not prov.gates_passed and prov.parent_version == "1.0.0"
    assert {"evaluation.json", "thresholds.json", "model_card.md"} <= set(payload_digests(art))


def test_provenance_round_trips_unknown_fields_golden():
    data = {"version": "1.0.0", "run_id": "r", "model_digest": "sha256:00", "config_digest": "sha256:01",
            "schema_digest": "sha256:02", "fedready_version": "0.1.0", "git_commit": None, "packages": {"tuf": "7"},
            "parent_version": None, "evaluation": "not-run", "compression": {"status": "not-run"},
            "data_fingerprints": None, "created": "2026-01-01T00:00:00Z", "future_field": [1, 2]}  # fmt: skip
    prov = Provenance.from_dict(data)
    assert prov.extra == {"future_field": [1, 2]} and prov.to_dict() == data
    # golden: the canonical bytes of a provenance record never change silently
    digest = hashlib.sha256(canonical_json(prov.to_dict()).encode()).hexdigest()
    assert digest == GOLDEN_PROVENANCE_SHA256


GOLDEN_PROVENANCE_SHA256 = "d823681be44cd599caa47bf94e2d785370423ec36c2adbea8a858476ed3d81b6"


def test_cli_verify_exit_codes(artifact, keys, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(artifact), "--public-key", str(keys["operator"][1])])
    assert ok.exit_code == 0, ok.output
    art = _copy(artifact, tmp_path)
    (art / "schema.json").write_text((art / "schema.json").read_text() + " ")
    bad = runner.invoke(app, ["verify", str(art), "--public-key", str(keys["operator"][1])])
    assert bad.exit_code == 1 and "schema.json" in bad.output
    wrong = runner.invoke(app, ["verify", str(artifact), "--public-key", str(keys["other"][1])])
    assert wrong.exit_code == 1 and "key mismatch" in wrong.output


@pytest.mark.parametrize(("selected", "decision", "released"), [
    ("int8-dynamic", "passed", "passed"),  # a variant that passed its gates
    ("fp32", "undecided", "undecided"),  # none passed; fp32 as judged, its gates only undecided: canary at most
    (None, None, "failed"),  # none passed and fp32 failed one: the raw export ships nowhere without --force
])  # fmt: skip
def test_selected_compressed_model_is_packaged(fake_run, keys, tmp_path, selected, decision, released):
    from fedready.compression import mlp_layers, mlp_to_onnx
    from fedready.modelio import load_npz

    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    (run / "evaluation.json").write_text(json.dumps({"decision": "passed", "passed": True}))  # the model's gates
    (run / "compression").mkdir()
    report = {"selected": selected, "selected_decision": decision,
              "reason": None if decision == "passed" else "no variant passes every gate"}  # fmt: skip
    (run / "compression" / "compression.json").write_text(json.dumps(report))
    if selected:  # a stand-in for the compressed variant: a valid model whose bytes differ from the fp32 export
        layers = mlp_layers(load_npz((run / "model.npz").read_bytes()))
        variant = mlp_to_onnx(layers, metadata={"variant": selected}).SerializeToString()
        (run / "compression" / "selected.onnx").write_bytes(variant)
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "art")
    prov = verify_artifact(art, public_key=keys["operator"][1])
    assert (art / "compression.json").exists()
    assert prov.evaluation == released
    if selected:
        assert prov.compression["status"] == "selected" and prov.compression["selected"] == selected
        assert prov.compression.get("variant_decision") == (None if decision == "passed" else decision)
        assert (art / "model.onnx").read_bytes() == (run / "compression" / "selected.onnx").read_bytes()
    else:
        assert prov.compression == {"status": "none-selected", "reason": "no variant passes every gate"}
