"""Issue 23, Why 1: the registry's audit log could be shortened or replaced without any key.

Both attacks need only write access to the registry folder. *Truncation*: save the served metadata
(any mirror or HTTP cache holds it), later cut the log back to the line count it had then and copy the
saved files back; on the pipeline's registry this erased a stable rollback and an auto-rollback. *Whole
rewrite*: ``registry init fake`` and copy its metadata and log over the real ones. Both passed
``audit verify``. Checkpoints kept outside the folder (the operator's, and every device's ``HOME/tuf``)
now show both; the root chain, expiry and version checks run on every verification.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest

from fedready.registry import EdgeAgent, Registry
from tests.security.conftest import cli


def _lines(path):
    return path.read_text().splitlines()


@pytest.fixture
def history(fleet, keys, tmp_path):
    """A registry whose log records a stable rollback after the metadata a mirror saved; a checkpoint of it."""
    reg, server, device = fleet  # stable 1.0.0, device-0 runs it
    saved = tmp_path / "mirror-cache"
    shutil.copytree(reg.metadata_dir, saved)  # what any mirror or HTTP cache holds
    saved_lines = len(_lines(reg.path / "audit.jsonl"))
    reg.promote("2.0.0", channel="stable", approver="ops")
    reg.rollback(channel="stable", approver="ops", reason="field reports")  # the entries the attacker wants gone
    device.update(repo=server.url, channel="stable", device_id="device-0")  # the device sees the newest head
    operator = tmp_path / "offsite" / "checkpoint.json"
    code, out = cli("audit", "checkpoint", reg.path, "--out", operator)
    assert code == 0 and json.loads(out.splitlines()[0])["lines"] == len(_lines(reg.path / "audit.jsonl")), out
    return reg, device, saved, saved_lines, operator


def test_why23_01_audit_log_truncated_with_saved_metadata_is_detected(history, tmp_path):
    reg, device, saved, saved_lines, operator = history
    log = reg.path / "audit.jsonl"
    assert cli("audit", "verify", log, "--anchor", operator)[0] == 0  # untouched: everything verifies
    # the attack: cut the log back to what the saved metadata anchors, and put that metadata back
    log.write_text("".join(line + "\n" for line in _lines(log)[:saved_lines]))
    for f in saved.iterdir():
        shutil.copy(f, reg.metadata_dir / f.name)
    code, out = cli("audit", "verify", log)
    assert code == 0 and "no checkpoint kept outside the registry" in out, out  # alone, the folder is consistent
    code, out = cli("audit", "verify", log, "--anchor", operator)
    assert code == 1 and "FOUND rolled-back" in out and "FOUND truncated" in out, out
    assert "Traceback" not in out
    # every device is a witness too: its last verified head, as a checkpoint or as its HOME/tuf
    device_cp = tmp_path / "device-checkpoint.json"
    assert cli("audit", "checkpoint", device.home, "--out", device_cp)[0] == 0
    code, out = cli("audit", "verify", log, "--anchor", device_cp)
    assert code == 1 and "FOUND truncated" in out, out
    code, out = cli("audit", "verify", log, "--metadata", device.home / "tuf")
    assert code == 1 and "FOUND truncated" in out, out
    assert EdgeAgent(device.home).status()["registry_audit_head"]["lines"] > saved_lines


def test_why23_01_registry_rewritten_from_registry_init_fake_is_detected(history, tmp_path):
    reg, device, _, _, operator = history
    fake = Registry.init(tmp_path / "fake", actor="mallory")
    for f in fake.metadata_dir.iterdir():  # the red team's copy: every metadata file and the log
        shutil.copy(f, reg.metadata_dir / f.name)
    shutil.copy(fake.path / "audit.jsonl", reg.path / "audit.jsonl")
    code, out = cli("audit", "verify", reg.path / "audit.jsonl")
    assert code == 0, out  # the copy is consistent under its own keys
    code, out = cli("audit", "verify", reg.path / "audit.jsonl", "--anchor", operator)
    assert code == 1 and "FOUND foreign-root" in out and "FOUND truncated" in out, out
    assert "FOUND wrong-key" in out  # the log is signed by a key the trusted root never pinned
    device_cp = tmp_path / "device-checkpoint.json"
    assert cli("audit", "checkpoint", device.home, "--out", device_cp)[0] == 0
    code, out = cli("audit", "verify", reg.path / "audit.jsonl", "--anchor", device_cp)
    assert code == 1 and "FOUND foreign-root" in out, out


def test_why23_01_root_chain_expiry_and_versions_are_checked_without_a_checkpoint(fleet, tmp_path):
    reg, _, _ = fleet
    log = reg.path / "audit.jsonl"
    cp = tmp_path / "before-rotation.json"
    assert cli("audit", "checkpoint", reg.path, "--out", cp)[0] == 0
    reg.rotate_key("root")  # a legitimate chain: 1.root.json -> 2.root.json -> 3.root.json
    reg.rotate_key("timestamp")
    code, out = cli("audit", "verify", log, "--anchor", cp)
    assert code == 0, out
    # expired metadata: a device refuses it, so does audit verify (stale folder, or old metadata put back)
    reg.refresh(timestamp_expiry=dt.timedelta(seconds=1))
    time.sleep(1.5)
    code, out = cli("audit", "verify", log)
    assert code == 1 and "FOUND expired" in out and "timestamp.json" in out, out
    reg.refresh()
    assert cli("audit", "verify", log)[0] == 0
    # a root version that the previous root did not sign breaks the chain
    fake = Registry.init(tmp_path / "fake")
    shutil.copy(fake.metadata_dir / "root.json", reg.metadata_dir / "4.root.json")
    code, out = cli("audit", "verify", log)
    assert code == 1 and "FOUND root-chain" in out, out
    (reg.metadata_dir / "4.root.json").unlink()
    # a snapshot put back from another time than the timestamp that names it
    snapshot = json.loads((reg.metadata_dir / "snapshot.json").read_text())
    reg.refresh()
    reg.promote("2.0.0", channel="stable", approver="ops")
    (reg.metadata_dir / "snapshot.json").write_text(json.dumps(snapshot))
    code, out = cli("audit", "verify", log)
    assert code == 1 and "FOUND inconsistent" in out, out


def test_why23_01_a_forged_checkpoint_is_refused(history, tmp_path):
    reg, _, _, _, operator = history
    doc = json.loads(operator.read_text())
    doc["timestamp"]["signed"]["x-fedready-audit"]["lines"] = 1  # edit the head it vouches for
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc))
    code, out = cli("audit", "verify", reg.path / "audit.jsonl", "--anchor", forged)
    assert code == 1 and "not signed by the timestamp key" in out and "Traceback" not in out, out
