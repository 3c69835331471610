"""Why 2: the audit logs were plain hash chains; every one of these edits passed `audit verify`."""

from __future__ import annotations

import json

import pytest

from fedready.audit import AuditLog
from fedready.registry import Registry, package_run
from tests.security.conftest import cli, write_fake_run


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _edit_last(log, reg):
    lines = _lines(log)
    entry = json.loads(lines[-1])
    entry["approver"] = "mallory"
    _write(log, [*lines[:-1], json.dumps(entry, sort_keys=True)])


def _rewrite_with_the_registry_key(log, reg):
    """An insider with keys/audit.key rewrites history: edits line 3, re-chains and re-signs everything."""
    entries = [json.loads(line) for line in _lines(log)]
    entries[2]["actor"] = "nobody"
    log.unlink()
    forged = AuditLog(log, key=reg.keys_dir / "audit.key")
    for e in entries:
        fields = {k: v for k, v in e.items() if k not in ("event", "time", "prev", "seq", "sig", "key")}
        forged.append(e["event"], **fields)


def _forge_promote_without_key(log, reg):
    import hashlib

    prev = hashlib.sha256(_lines(log)[-1].encode()).hexdigest()
    line = json.dumps({"event": "promote", "channel": "stable", "version": "9.9.9", "approver": "mallory",
                       "prev": prev, "seq": len(_lines(log)) + 1, "time": 0}, sort_keys=True)  # fmt: skip
    _write(log, [*_lines(log), line])


def _forge_promote_with_key(log, reg):
    AuditLog(log, key=reg.keys_dir / "audit.key").append("promote", channel="stable", version="9.9.9",
                                                           approver="mallory")  # fmt: skip


CASES = {
    "edit-last-line": (_edit_last, "bad-signature"),
    "delete-last-line": (lambda log, reg: _write(log, _lines(log)[:-1]), "truncated"),
    "cut-to-one-line": (lambda log, reg: _write(log, _lines(log)[:1]), "truncated"),
    "empty-the-file": (lambda log, reg: log.write_text(""), "empty"),
    "rewrite-the-chain-after-an-edit": (_rewrite_with_the_registry_key, "rewritten"),
    "append-a-forged-promote": (_forge_promote_without_key, "unsigned"),
    "append-a-forged-promote-signed-with-the-stolen-log-key": (_forge_promote_with_key, "unanchored"),
}


@pytest.mark.parametrize("attack", list(CASES))
def test_audit_log_tampering_is_detected_and_named(tmp_path, artifact, artifact_v2, keys, attack):
    reg = Registry.init(tmp_path / "registry", actor="alice")
    for art in (artifact, artifact_v2):
        reg.publish(art, public_key=keys["operator"][1], actor="alice")
    reg.promote("2.0.0", channel="stable", approver="alice")
    log = reg.path / "audit.jsonl"
    code, out = cli("audit", "verify", log)
    assert code == 0 and "4 entries, chain and signatures intact (key pinned)" in out, out
    tamper, finding = CASES[attack]
    tamper(log, reg)
    code, out = cli("audit", "verify", log)
    assert code == 1 and f"FOUND {finding}" in out, out
    assert "the log was changed after it was written" in out and "Traceback" not in out


def test_run_log_cut_short_after_packaging_is_detected_through_the_artifact(tmp_path, keys):
    run = write_fake_run(tmp_path / "run")
    log = AuditLog(run / "audit.jsonl")
    for r in range(1, 4):
        log.append("round-finished", round=r, epsilon=0.1 * r)
    log.append("run-finished", epsilon=0.3)
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "artifacts")
    anchor = json.loads((art / "provenance.json").read_text())["audit"]
    assert anchor["lines"] == 4 and anchor["key"] == log.public_key
    verify = ("audit", "verify", run / "audit.jsonl", "--artifact", art, "--public-key", keys["operator"][1])
    assert cli(*verify)[0] == 0
    # hide the last round: the shorter log is self-consistent, so only the signed anchor shows it
    _write(run / "audit.jsonl", _lines(run / "audit.jsonl")[:3])
    assert cli("audit", "verify", run / "audit.jsonl")[0] == 0
    code, out = cli(*verify)
    assert code == 1 and "FOUND truncated" in out and "provenance of artifact 1.0.0" in out, out


def test_a_broken_run_log_is_not_packaged(tmp_path, keys):
    run = write_fake_run(tmp_path / "run")
    log = AuditLog(run / "audit.jsonl")
    log.append("run-started")
    log.append("run-finished")
    _write(run / "audit.jsonl", _lines(run / "audit.jsonl")[1:])
    code, out = cli("package", run, "--key", keys["operator"][0], "--version", "1.0.0", "--out", tmp_path / "a")
    assert code == 1 and "fails verification" in out and not (tmp_path / "a" / "1.0.0").exists(), out
