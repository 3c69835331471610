"""Issue 23, Why 3: a canary rollback brought back a version that stable rolled back.

``rollback()`` gave the canary a new serial and ``paused: False``, and ``auto-rollback`` acted on a
canary behind stable, which no device runs. The red team's sequence: canary 1.1.0 -> stable 1.1.0 ->
canary 1.2.0 -> ``registry rollback --channel stable`` -> three alerts for 1.2.0 -> ``auto-rollback
--channel canary``: the canary was live again on 1.1.0 and a cohort device updated to it. Alerts dated
ahead of time (``"time": 1e11``) rolled a release back the moment it was promoted.
"""

from __future__ import annotations

import json
import time

import pytest

from fedready.audit import sign_record
from fedready.errors import ConfigError
from fedready.monitoring import ALERT_CONTEXT
from fedready.registry import EdgeAgent, in_canary, package_run
from tests.security.conftest import write_fake_run

DEVICES = ("shop-1", "shop-2", "shop-3")


def _publish(reg, keys, tmp_path, version: str, seed: int) -> None:
    run = write_fake_run(tmp_path / f"run-{version}", seed=seed)
    (run / "evaluation.json").write_text(json.dumps({"passed": True}))
    art, _ = package_run(run, key=keys["operator"][0], version=version, out=tmp_path / "artifacts")
    reg.publish(art, public_key=keys["operator"][1])


def signed_alerts(tmp_path, reg, *, version: str, channel: str = "canary", when: float | None = None,
                  devices=DEVICES) -> list[dict]:  # fmt: skip
    """Breach alerts as `fedready monitor` writes them, each signed by an enrolled device's own key."""
    out = []
    for d in devices:
        agent = EdgeAgent(tmp_path / "homes" / d)
        if d not in reg.devices():
            reg.enrol(**agent.enrolment(d), approver="ops")
        alert = {"time": time.time() if when is None else when, "device_id": d, "channel": channel,
                 "version": version, "window_rows": 1000, "kind": "feature-drift", "feature": "age", "metric": "psi",
                 "value": 1.4, "threshold": 0.2}  # fmt: skip
        out.append({**alert, "sig": sign_record(agent.device_key(), alert, context=ALERT_CONTEXT)})
    return out


def _write(path, alerts) -> object:
    path.write_text("".join(json.dumps(a) + "\n" for a in alerts))
    return path


@pytest.fixture
def released(fleet, keys, tmp_path):
    """The red team's sequence up to the stable rollback: stable back on 1.0.0, canary on 1.2.0."""
    reg, server, _ = fleet  # stable 1.0.0
    _publish(reg, keys, tmp_path, "1.1.0", seed=5)
    _publish(reg, keys, tmp_path, "1.2.0", seed=6)
    reg.promote("1.0.0", channel="canary", approver="ops", force=True, reason="baseline")
    reg.promote("1.1.0", channel="canary", approver="ops", rollout_percent=50)
    reg.promote("1.1.0", channel="stable", approver="ops")
    reg.promote("1.2.0", channel="canary", approver="ops", rollout_percent=50)
    reg.rollback(channel="stable", approver="ops", reason="1.1.0 misbehaves in the field")
    assert reg.channel("stable").version == "1.0.0" and reg.channel("stable").withdrawn == ("1.1.0",)
    return reg, server


def test_why23_03_canary_auto_rollback_after_a_stable_rollback_does_not_revive_the_withdrawn_version(
    released, keys, tmp_path
):
    reg, server = released
    cohort_id = next(f"cohort-{i}" for i in range(100) if in_canary(f"cohort-{i}", 50))
    device = EdgeAgent(tmp_path / "cohort-device")
    update = dict(repo=server.url, channel="stable", device_id=cohort_id, root=reg.metadata_dir / "1.root.json",
                  public_key=keys["operator"][1])  # fmt: skip
    assert device.update(**update).version == "1.0.0"  # the stable rollback reached the cohort
    alerts = _write(tmp_path / "alerts.jsonl", signed_alerts(tmp_path, reg, version="1.2.0"))
    # the attack: three enrolled devices' alerts for 1.2.0, which no device runs since the stable rollback
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert decision["rolled_back"] is False and decision["served"] is False, decision
    assert "behind stable" in decision["why"]
    assert reg.channel("canary").version == "1.2.0" and reg.status()["canary_state"] == "behind-stable"
    assert device.update(**update).version == "1.0.0"  # the cohort device stays on stable's version
    # a manual canary rollback is refused for the same reason, with one line
    with pytest.raises(ConfigError, match="runs on no device"):
        reg.rollback(channel="canary", approver="ops")


def test_why23_03_a_live_canary_rolled_back_skips_the_version_stable_withdrew(released, keys, tmp_path):
    reg, server = released
    reg.promote("1.2.0", channel="canary", approver="ops", rollout_percent=50)  # a new, live rollout of 1.2.0
    assert reg.status()["canary_state"] == "live"
    alerts = _write(tmp_path / "alerts.jsonl", signed_alerts(tmp_path, reg, version="1.2.0"))
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    # the canary's history is 1.0.0, 1.1.0, 1.2.0: the rollback skips the withdrawn 1.1.0
    assert (decision["rolled_back"], decision["version"]) == (True, "1.0.0"), decision
    audit = [json.loads(x) for x in (reg.path / "audit.jsonl").read_text().splitlines()]
    assert [e for e in audit if e["event"] == "rollback"][-1]["skipped_withdrawn"] == ["1.1.0"]
    # only an explicit promotion brings 1.1.0 back, and the audit log records it as reinstated
    reg.promote("1.1.0", channel="canary", approver="ops", rollout_percent=50)
    assert reg.channel("stable").withdrawn == () and reg.status()["canary_state"] == "live"
    assert json.loads((reg.path / "audit.jsonl").read_text().splitlines()[-1])["reinstated"] is True


def test_why23_03_a_canary_with_nothing_earlier_to_serve_is_paused_not_revived(fleet, keys, tmp_path):
    reg, server, _ = fleet  # stable 1.0.0
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=100)
    alerts = _write(tmp_path / "alerts.jsonl", signed_alerts(tmp_path, reg, version="2.0.0"))
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert (decision["rolled_back"], decision["version"], decision["paused"]) == (True, None, True), decision
    assert reg.status()["canary_state"] == "paused"
    device = EdgeAgent(tmp_path / "follower")
    res = device.update(repo=server.url, channel="canary", device_id="follower", root=reg.metadata_dir / "1.root.json",
                        public_key=keys["operator"][1])  # fmt: skip
    assert (res.version, res.channel) == ("1.0.0", "stable")


def test_why23_03_a_withdrawn_version_on_the_canary_reaches_no_device(released, keys, tmp_path):
    reg, server = released
    # even a canary document that still names the withdrawn version (forged ordering, an old registry) is not live
    from fedready.registry._channels import canary_state, resolve

    stable = reg.channel("stable").to_dict()
    canary = {**reg.channel("canary").to_dict(), "version": "1.1.0", "serial": stable["serial"] + 5}
    assert canary_state(stable, canary) == "withdrawn"
    doc, taken = resolve("canary", device_id="any", docs={"stable": stable, "canary": canary})
    assert (doc["version"], taken) == ("1.0.0", "stable")


def test_why23_03_alerts_dated_ahead_of_time_do_not_roll_back_the_next_release(released, keys, tmp_path):
    reg, server = released
    _publish(reg, keys, tmp_path, "1.3.0", seed=7)
    early = signed_alerts(tmp_path, reg, version="1.3.0", when=1e11)  # written before 1.3.0 exists
    stale = signed_alerts(tmp_path, reg, version="1.3.0", when=time.time() - 5)  # before its promotion
    alerts = _write(tmp_path / "alerts.jsonl", early + stale)
    time.sleep(1.1)  # promoted_at has one-second resolution
    reg.promote("1.3.0", channel="canary", approver="ops", rollout_percent=50)
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert decision["rolled_back"] is False and decision["devices"] == 0, decision
    assert decision["refused"] == {"before-promotion": 3, "dated-in-the-future": 3}
    assert reg.channel("canary").version == "1.3.0"
