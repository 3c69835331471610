"""The edge agent against a real HTTP server on 127.0.0.1: updates, canaries, and one test per attack.

Every attack must be refused with a message naming it, and the device must keep serving the
model it had (``fleet`` leaves each device on 1.0.0).
"""

from __future__ import annotations

import json
import shutil

import pytest

from fedready.errors import IntegrityError, TransportError
from fedready.registry import EdgeAgent, in_canary
from fedready.registry._registry import artifact_target, channel_target

ROW = {"age": "39", "workclass": "State-gov", "fnlwgt": "77516", "education": "Bachelors", "education-num": "13",
       "marital-status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family",
       "race": "White", "sex": "Male", "capital-gain": "2174", "capital-loss": "0", "hours-per-week": "40",
       "native-country": "United-States"}  # fmt: skip


def _still_serves(device: EdgeAgent, version: str) -> None:
    assert device.state()["active"] == version
    (result,) = device.predictor().predict([ROW])
    assert result["version"] == version and 0.0 <= result["probability"] <= 1.0


def _update(device, server):
    return device.update(repo=server.url, channel="stable", device_id="device-0")


def test_update_swaps_and_keeps_previous_for_rollback(fleet):
    reg, server, device = fleet
    reg.promote("2.0.0", channel="stable", approver="alice")
    res = _update(device, server)
    assert (res.version, res.previous, res.changed) == ("2.0.0", "1.0.0", True)
    _still_serves(device, "2.0.0")
    assert not _update(device, server).changed
    assert device.rollback() == "1.0.0"
    _still_serves(device, "1.0.0")


def test_stored_thresholds_are_applied(fleet):
    reg, server, device = fleet
    reg.promote("2.0.0", channel="stable", approver="alice")
    _update(device, server)
    women, men = device.predictor().predict([{**ROW, "sex": "Female"}, ROW])
    assert (women["threshold"], men["threshold"]) == (0.3, 0.6)
    assert women["prediction"] == int(women["probability"] >= 0.3)


def test_canary_devices_take_canary_others_stay_on_stable(fleet, keys):
    reg, server, device = fleet
    reg.promote("2.0.0", channel="canary", approver="bob", rollout_percent=20)
    root, home = reg.metadata_dir / "1.root.json", device.home.parent
    ids = [f"fleet-{i}" for i in range(30)]
    got = {}
    for d in ids:
        agent = EdgeAgent(home / d)
        res = agent.update(repo=server.url, channel="stable", device_id=d, root=root, public_key=keys["operator"][1])
        got[d] = (res.version, res.channel)
    assert got == {d: ("2.0.0", "canary") if in_canary(d, 20) else ("1.0.0", "stable") for d in ids}
    assert 0 < sum(v == "2.0.0" for v, _ in got.values()) < len(ids)


def test_flipped_byte_in_served_model_is_refused(fleet):
    reg, server, device = fleet
    reg.promote("2.0.0", channel="stable", approver="alice")
    served = reg.targets_dir / artifact_target("2.0.0", "model.onnx")
    data = bytearray(served.read_bytes())
    data[100] ^= 0x01
    served.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its signed hash"):
        _update(device, server)
    _still_serves(device, "1.0.0")
    assert not [p for p in device.models.iterdir() if p.name.startswith(".staging")]


def test_model_signed_by_another_key_is_refused(fleet, artifact_evil):
    reg, server, device = fleet
    # an insider (or a stolen targets key) puts a foreign-signed model on the channel: TUF accepts it,
    # the operator's model signature does not
    files = {f"artifacts/2.0.0/{p.name}": p.read_bytes() for p in artifact_evil.iterdir()}
    reg._commit(files)
    doc = {
        **reg.channel("stable").to_dict(),
        "version": "2.0.0",
        "files": {p.name: __import__("hashlib").sha256(p.read_bytes()).hexdigest() for p in artifact_evil.iterdir()},
    }
    reg._commit({channel_target("stable"): json.dumps(doc).encode()})
    with pytest.raises(IntegrityError, match="key mismatch"):
        _update(device, server)
    _still_serves(device, "1.0.0")


def test_rollback_attack_replaying_older_metadata_is_refused(fleet, tmp_path):
    reg, server, device = fleet
    old = tmp_path / "old-metadata"
    shutil.copytree(reg.metadata_dir, old)
    reg.promote("2.0.0", channel="stable", approver="alice")
    _update(device, server)
    # the attacker (or a stale mirror) serves the metadata from before the promotion
    for name in ("timestamp.json", "snapshot.json", "targets.json"):
        shutil.copyfile(old / name, reg.metadata_dir / name)
    with pytest.raises(IntegrityError, match="rollback attack"):
        _update(device, server)
    _still_serves(device, "2.0.0")


def test_expired_timestamp_metadata_is_refused(fleet):
    import datetime as dt

    reg, server, device = fleet
    reg.promote("2.0.0", channel="stable", approver="alice")
    reg.refresh(timestamp_expiry=dt.timedelta(seconds=-1))
    with pytest.raises(IntegrityError, match="expired"):
        _update(device, server)
    _still_serves(device, "1.0.0")


@pytest.mark.parametrize(
    ("files", "version"),
    [
        ({"../../../escape.onnx": "0" * 64}, "2.0.0"),
        ({"/etc/escape": "0" * 64}, "2.0.0"),
        ({"model.onnx": "0" * 64}, "../../escape"),
    ],  # fmt: skip
)
def test_target_path_escaping_device_folder_is_refused(fleet, files, version):
    reg, server, device = fleet
    doc = {**reg.channel("stable").to_dict(), "version": version, "files": files}
    reg._commit({channel_target("stable"): json.dumps(doc).encode()})  # signed by the registry's own keys
    with pytest.raises(IntegrityError, match="escapes the device folder|unsafe version"):
        _update(device, server)
    _still_serves(device, "1.0.0")
    assert not list(device.home.parent.rglob("escape*"))


def test_unreachable_registry_keeps_model(fleet):
    reg, server, device = fleet
    server.stop()
    with pytest.raises(TransportError, match="cannot fetch"):
        _update(device, server)
    _still_serves(device, "1.0.0")


def test_device_follows_key_rotation(fleet):
    reg, server, device = fleet
    for role in ("root", "targets", "snapshot", "timestamp"):
        reg.rotate_key(role)
    reg.promote("2.0.0", channel="stable", approver="alice")
    assert _update(device, server).version == "2.0.0"  # walked root 2..5, trusts the new keys
    assert json.loads((device.home / "tuf" / "root.json").read_text())["signed"]["version"] == 5
