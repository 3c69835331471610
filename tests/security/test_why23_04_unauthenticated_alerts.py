"""Issue 23, Why 4: alerts were not authenticated; one file naming three device ids rolled the canary back.

Alerts now count only when signed by the key the operator enrolled for their ``device_id`` (``fedready
edge enrol`` on the device, ``fedready registry enrol`` by the operator).
"""

from __future__ import annotations

import json
import time

import pytest

from fedready.audit import sign_record
from fedready.monitoring import ALERT_CONTEXT
from fedready.registry import EdgeAgent
from tests.security.conftest import cli
from tests.security.test_why23_03_withdrawn_release_returns import DEVICES, _write, signed_alerts


@pytest.fixture
def canary(fleet):
    reg, _, _ = fleet
    reg.promote("1.0.0", channel="canary", approver="ops", force=True, reason="baseline")
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=20)
    return reg


def _alert(device_id: str) -> dict:
    return {"time": time.time(), "device_id": device_id, "channel": "canary", "version": "2.0.0", "window_rows": 500,
            "kind": "feature-drift", "feature": "age", "metric": "psi", "value": 2.0, "threshold": 0.2}  # fmt: skip


def test_why23_04_one_file_naming_three_device_ids_does_not_roll_the_canary_back(canary, tmp_path):
    reg = canary
    signed_alerts(tmp_path, reg, version="0.0.0")  # the three devices are enrolled (their keys are in the registry)
    one = EdgeAgent(tmp_path / "homes" / DEVICES[0])
    forged = [_alert(d) for d in DEVICES]  # the red team's file: plain lines, three ids
    by_one = [{**a, "sig": sign_record(one.device_key(), a, context=ALERT_CONTEXT)} for a in forged]  # one key
    stranger = EdgeAgent(tmp_path / "stranger")
    strangers = [{**_alert(f"ghost-{i}"), "device_id": f"ghost-{i}"} for i in range(3)]
    unenrolled = [{**a, "sig": sign_record(stranger.device_key(), a, context=ALERT_CONTEXT)} for a in strangers]
    edited = signed_alerts(tmp_path, reg, version="2.0.0")
    edited = [{**a, "value": 9.9} for a in edited]  # genuine lines, changed after signing
    alerts = _write(tmp_path / "alerts.jsonl", forged + by_one + unenrolled + edited)
    code, out = cli("registry", "auto-rollback", reg.path, "--channel", "canary", "--alerts", alerts)
    assert code == 0, out
    decision = json.loads(out.splitlines()[0])
    assert (decision["rolled_back"], decision["devices"]) == (False, 1), decision  # DEVICES[0] signed its own line
    assert decision["refused"] == {"bad-signature": 5, "not-enrolled": 3, "unsigned": 3}
    assert "alerts not counted" in out and reg.channel("canary").version == "2.0.0"


def test_why23_04_three_enrolled_devices_signing_their_own_alerts_still_roll_back(canary, tmp_path):
    reg = canary
    alerts = _write(tmp_path / "alerts.jsonl", signed_alerts(tmp_path, reg, version="2.0.0"))
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert (decision["rolled_back"], decision["devices"], decision["replaced"]) == (True, 3, "2.0.0"), decision
    # a revoked device's alerts stop counting
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=20)
    reg.revoke(device_id=DEVICES[0], approver="ops")
    again = _write(tmp_path / "again.jsonl", signed_alerts(tmp_path, reg, version="2.0.0", devices=DEVICES[1:]) +
                   [{**_alert(DEVICES[0]), "sig": "AAAA"}])  # fmt: skip
    decision = reg.auto_rollback(channel="canary", alerts=again)
    assert (decision["rolled_back"], decision["devices"], decision["refused"]) == (False, 2, {"not-enrolled": 1})


def test_why23_04_enrolment_goes_through_the_cli_and_the_audit_log(fleet, tmp_path):
    reg, _, device = fleet
    code, out = cli("edge", "enrol", "--home", device.home)
    enrolment = json.loads(out)
    assert code == 0 and enrolment["device_id"] == "device-0"
    assert (device.home / "device.key").stat().st_mode & 0o777 == 0o600
    code, out = cli("registry", "enrol", reg.path, "--device-id", "device-0", "--public-key", "bm90IGEga2V5",
                    "--approver", "ops")  # fmt: skip
    assert code == 2 and "is not an Ed25519 public key" in out
    code, _ = cli("registry", "enrol", reg.path, "--device-id", "device-0", "--public-key", enrolment["public_key"],
                  "--approver", "ops")  # fmt: skip
    assert code == 0 and reg.devices()["device-0"]["public_key"] == enrolment["public_key"]
    entry = json.loads((reg.path / "audit.jsonl").read_text().splitlines()[-1])
    assert (entry["event"], entry["device_id"], entry["approver"]) == ("enrol-device", "device-0", "ops")
    assert cli("audit", "verify", reg.path / "audit.jsonl")[0] == 0
