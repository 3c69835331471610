"""The TUF registry: publishing, gates, approvals, review dates, rollback, audit, key rotation."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from tuf.api.metadata import Metadata

from fedready.audit import verify_chain
from fedready.errors import ConfigError, IntegrityError
from fedready.registry import DEFAULT_EXPIRY, Registry, in_canary


@pytest.fixture
def reg(tmp_path, artifact, artifact_v2, keys):
    r = Registry.init(tmp_path / "registry")
    r.publish(artifact, public_key=keys["operator"][1])
    r.publish(artifact_v2, public_key=keys["operator"][1])
    return r


def _audit(reg):
    return [json.loads(line) for line in (reg.path / "audit.jsonl").read_text().splitlines()]


def test_init_writes_every_role_with_default_expiry(tmp_path):
    reg = Registry.init(tmp_path / "r")
    for role, period in DEFAULT_EXPIRY.items():
        md = Metadata.from_file(str(reg.metadata_dir / f"{role}.json"))
        left = md.signed.expires - dt.datetime.now(dt.UTC)
        assert period - dt.timedelta(minutes=5) < left <= period
    assert (reg.metadata_dir / "1.root.json").exists()
    assert oct((reg.keys_dir / "root.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="already holds a registry"):
        Registry.init(tmp_path / "r")


def test_unsigned_or_foreign_artifact_is_not_published(tmp_path, artifact_evil, keys):
    reg = Registry.init(tmp_path / "r")
    with pytest.raises(IntegrityError, match="key mismatch"):
        reg.publish(artifact_evil, public_key=keys["operator"][1])
    assert reg.versions() == []


def test_published_version_is_immutable(reg, artifact, keys, tmp_path):
    assert reg.publish(artifact, public_key=keys["operator"][1]) == "1.0.0"  # same bytes: no-op
    # other bytes, correctly signed, under the published version 2.0.0
    from fedready.registry import package_run
    from tests.registry.conftest import write_fake_run

    run = write_fake_run(tmp_path / "run", seed=3)
    art, _ = package_run(run, key=keys["operator"][0], version="2.0.0", out=tmp_path / "out")
    with pytest.raises(ConfigError, match="already published with different contents"):
        reg.publish(art, public_key=keys["operator"][1])


@pytest.mark.parametrize(
    ("version", "message"),
    [("1.0.0", "has no evaluation"), ("3.0.0", "failed its gates")],
)
def test_promote_refuses_failed_or_unrun_gates_without_force(reg, keys, fake_run, tmp_path, version, message):
    if version == "3.0.0":
        run = tmp_path / "run"
        shutil.copytree(fake_run, run)
        (run / "evaluation.json").write_text(json.dumps({"passed": False}))
        from fedready.registry import package_run

        art, _ = package_run(run, key=keys["operator"][0], version="3.0.0", out=tmp_path / "art")
        reg.publish(art, public_key=keys["operator"][1])
    with pytest.raises(ConfigError, match=message):
        reg.promote(version, channel="stable", approver="alice")
    with pytest.raises(ConfigError, match="--force needs --reason"):
        reg.promote(version, channel="stable", approver="alice", force=True)
    assert reg.channel("stable") is None
    doc = reg.promote(version, channel="stable", approver="alice", force=True, reason="hotfix, gates rerun later")
    assert doc.forced and doc.reason == "hotfix, gates rerun later"
    last = _audit(reg)[-1]
    assert last["event"] == "promote" and last["forced"] and last["reason"] == "hotfix, gates rerun later"


def test_promotion_records_approver_review_date_and_audit(reg):
    with pytest.raises(ConfigError, match="approver"):
        reg.promote("2.0.0", channel="stable", approver=" ")
    with pytest.raises(ConfigError, match="unknown channel 'beta'"):
        reg.promote("2.0.0", channel="beta", approver="alice")
    doc = reg.promote("2.0.0", channel="canary", approver="bob", rollout_percent=20,
                      review_by=dt.date.today() + dt.timedelta(days=30))  # fmt: skip
    assert (doc.approver, doc.rollout_percent, doc.forced, doc.gates) == ("bob", 20.0, False, "passed")
    served = json.loads((reg.targets_dir / "channels/canary.json").read_text())
    assert served["version"] == "2.0.0" and set(served["files"]) >= {"model.onnx", "model.sig"}
    events = [e["event"] for e in _audit(reg)]
    assert events == ["registry-init", "publish", "publish", "promote"]
    assert verify_chain(reg.path / "audit.jsonl") == (True, None)


def test_status_flags_models_past_review(reg):
    reg.promote("2.0.0", channel="stable", approver="alice", review_by=dt.date.today() + dt.timedelta(days=1))
    status = reg.status()
    assert status["channels"]["stable"]["past_review"] is False and status["channels"]["canary"] is None
    assert reg.channel("stable").past_review(dt.date.today() + dt.timedelta(days=2))
    assert status["versions"] == ["1.0.0", "2.0.0"]
    assert not any(m["expired"] for m in status["metadata"].values())


def test_rollback_points_channel_at_previous_version(reg):
    with pytest.raises(ConfigError, match="no earlier version"):
        reg.rollback(channel="stable", approver="alice")
    reg.promote("1.0.0", channel="stable", approver="alice", force=True, reason="baseline")
    reg.promote("2.0.0", channel="stable", approver="alice")
    before = Metadata.from_file(str(reg.metadata_dir / "targets.json")).signed.version
    doc = reg.rollback(channel="stable", approver="carol", reason="complaints")
    assert doc.version == "1.0.0" and doc.previous == ()
    # a rollback is a new, higher metadata version: devices accept it (it is not a replay)
    assert Metadata.from_file(str(reg.metadata_dir / "targets.json")).signed.version == before + 1
    assert _audit(reg)[-1]["event"] == "rollback"


def test_rotate_key_signs_new_root_with_old_and_new_keys(reg):
    old = Metadata.from_file(str(reg.metadata_dir / "root.json"))
    reg.rotate_key("root")
    new = Metadata.from_file(str(reg.metadata_dir / "2.root.json"))
    old.signed.verify_delegate("root", new.signed_bytes, new.signatures)  # old root accepts the new one
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    reg.rotate_key("timestamp")
    root3 = Metadata.from_file(str(reg.metadata_dir / "root.json"))
    ts = Metadata.from_file(str(reg.metadata_dir / "timestamp.json"))
    root3.signed.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    assert root3.signed.version == 3


def test_canary_cohort_respects_percentage_over_many_devices():
    ids = [f"device-{i:04d}" for i in range(1000)]
    for pct in (5, 20, 50):
        share = sum(in_canary(d, pct) for d in ids) / len(ids) * 100
        assert pct - 5 <= share <= pct + 5, (pct, share)
    assert all(in_canary(d, 100) for d in ids) and not any(in_canary(d, 0) for d in ids)
    # stable: the same device is in or out every time, and cohorts nest as the rollout grows
    assert all(in_canary(d, 50) for d in ids if in_canary(d, 20))
