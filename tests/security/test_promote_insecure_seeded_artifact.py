"""Promoting a model trained with --insecure-seeded-noise: its DP noise can be recomputed from config.json.

Such a run's ledger says ``private: false`` (test_dp_noise_reconstruction.py shows why). The stamp
travels, signed, in the artifact's ``ledger_summary.json``; ``registry promote`` reads it there and
refuses, ``--force`` included, unless the operator passes ``--allow-not-private --reason``, which the
audit log records. A run without DP is refused the same way; the control, the same model trained
with secret noise, is promoted.
"""

from __future__ import annotations

import json

import pytest

from fedready.errors import ConfigError, IntegrityError
from fedready.privacy.ledger import Ledger
from fedready.registry import Registry, package_run
from tests.security.conftest import assert_one_line_error, cli, edit_json, resign, write_fake_run

RUNS = {"1.0.0": {"insecure_seeded_noise": True}, "1.1.0": {"dp": False}, "2.0.0": {}}  # version -> Ledger options


def _run(folder, **ledger):
    run = write_fake_run(folder)
    led = Ledger(run_id=run.name, delta=1e-5, target_epsilon=1.0, accountant="rdp", **ledger)
    (run / "ledger.json").write_text(json.dumps(led.to_dict()))
    (run / "evaluation.json").write_text(json.dumps({"passed": True}))
    return run


@pytest.fixture
def registry(tmp_path, keys):
    reg = Registry.init(tmp_path / "registry")
    for version, ledger in RUNS.items():
        art, _ = package_run(_run(tmp_path / version, **ledger), key=keys["operator"][0], version=version,
                             out=tmp_path / "artifacts")  # fmt: skip
        reg.publish(art, public_key=keys["operator"][1])
    return reg


def _promotions(reg: Registry) -> list[dict]:
    lines = (reg.path / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "promote"]


def test_ledger_summary_carries_the_privacy_stamp(registry, tmp_path):
    seeded = json.loads((tmp_path / "artifacts" / "1.0.0" / "ledger_summary.json").read_text())
    assert seeded["private"] is False and seeded["insecure_seeded_noise"] is True
    assert any("NOT PRIVATE" in c for c in seeded["caveats"]) and set(seeded["epsilon_parts"]) >= {"count", "sample"}
    secret = json.loads((tmp_path / "artifacts" / "2.0.0" / "ledger_summary.json").read_text())
    assert secret["private"] is True and secret["insecure_seeded_noise"] is False and secret["caveats"] == []


@pytest.mark.parametrize(("version", "words"), [("1.0.0", "--insecure-seeded-noise"), ("1.1.0", "without DP")])
def test_promoting_an_insecure_seeded_artifact_is_refused(registry, version, words):
    for extra in ([], ["--force", "--reason", "we know"]):
        code, out = cli("registry", "promote", registry.path, version, "--channel", "stable", "--approver", "alice",
                        *extra)  # fmt: skip
        assert_one_line_error(code, out, expect="error: private: ")
        assert code == 2 and words in out and "--allow-not-private --reason" in out, out
    with pytest.raises(ConfigError, match="is not private"):
        registry.promote(version, channel="canary", approver="alice", force=True, reason="r")
    assert registry.channel("stable") is None and registry.channel("canary") is None
    assert _promotions(registry) == []
    # the control: the same model trained with secret noise is promoted
    code, out = cli("registry", "promote", registry.path, "2.0.0", "--channel", "stable", "--approver", "alice")
    assert code == 0, out
    assert registry.channel("stable").version == "2.0.0"
    assert _promotions(registry)[0]["private"] is True and _promotions(registry)[0]["allow_not_private"] is False


def test_allowing_a_not_private_artifact_needs_a_reason_and_is_audit_logged(registry):
    code, out = cli("registry", "promote", registry.path, "1.0.0", "--channel", "canary", "--approver", "alice",
                    "--allow-not-private")  # fmt: skip
    assert_one_line_error(code, out, expect="--allow-not-private needs --reason")
    code, out = cli("registry", "promote", registry.path, "1.0.0", "--channel", "canary", "--approver", "alice",
                    "--allow-not-private", "--reason", "bit-exact reproduction demo")  # fmt: skip
    assert code == 0, out
    assert registry.channel("canary").version == "1.0.0"
    (entry,) = _promotions(registry)
    assert entry["private"] is False and entry["allow_not_private"] is True
    assert entry["reason"] == "bit-exact reproduction demo" and entry["approver"] == "alice"


def test_removing_the_not_private_stamp_breaks_the_signature(tmp_path, keys):
    art, _ = package_run(_run(tmp_path / "run", insecure_seeded_noise=True), key=keys["operator"][0],
                         version="1.0.0", out=tmp_path / "artifacts")  # fmt: skip
    edit_json(art / "ledger_summary.json", insecure_seeded_noise=False, private=True, caveats=[])
    reg = Registry.init(tmp_path / "registry")
    with pytest.raises(IntegrityError, match="ledger_summary.json"):
        reg.publish(art, public_key=keys["operator"][1])
    resign(art, keys["other"][0])  # re-signed by anyone but the operator: still refused
    with pytest.raises(IntegrityError, match="key mismatch"):
        reg.publish(art, public_key=keys["operator"][1])
    assert reg.versions() == []
