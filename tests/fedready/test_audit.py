"""The audit log: hash chain, a signed head on every line, anchors (fedready.audit)."""

import json

import pytest

from fedready.audit import GENESIS, Anchor, AuditLog, log_head, verify_chain, verify_log


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _kinds(report):
    return {f.kind for f in report.findings}


def test_chain_verifies_and_detects_an_edited_line(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for r in range(1, 4):
        log.append("round-finished", round=r, accuracy=0.8)
    assert verify_chain(p) == (True, None)
    AuditLog(p).append("run-finished")  # reopening continues the chain with the same key
    assert verify_chain(p) == (True, None)
    assert oct((tmp_path / "audit.key").stat().st_mode & 0o777) == "0o600"
    lines = p.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["accuracy"] = 0.99
    lines[1] = json.dumps(entry, sort_keys=True)
    _write(p, lines)
    assert verify_chain(p) == (False, 2)  # its signature fails (and the next line no longer points at it)
    assert {"bad-signature", "chain-broken"} <= _kinds(verify_log(p))


def test_writers_sharing_one_log_keep_one_chain(tmp_path):
    """A deployed client's bundle guard and its ClientApp (and concurrent tasks) write the same log."""
    from concurrent.futures import ThreadPoolExecutor

    p = tmp_path / "audit.jsonl"
    site = AuditLog(p)  # opened first, as a long-lived writer
    site.append("round-declined", round=1)
    AuditLog(p).append("bundle-accepted", fab_sha256="0" * 64)  # another writer appends meanwhile
    site.append("update-released", round=2)  # continues after the other writer's line, not its own last one

    def burst(n):
        log = AuditLog(p)
        for i in range(20):
            log.append("x", writer=n, i=i)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(burst, range(4)))
    report = verify_log(p)
    assert report.ok, report.findings
    entries = [json.loads(line) for line in p.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, 84))
    assert [e for e in entries if "key" in e] == entries[:1]  # one key, declared once


def test_removed_line_in_the_middle_is_detected(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for r in range(3):
        log.append("x", n=r)
    lines = p.read_text().splitlines()
    _write(p, [lines[0], lines[2]])
    assert verify_chain(p) == (False, 2)
    assert {"sequence", "chain-broken"} <= _kinds(verify_log(p))


def test_anchor_fixes_the_prefix_and_the_key(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for r in range(4):
        head = log.append("x", n=r)
    assert head == log_head(p) and head.lines == 4 and head.key == log.public_key
    assert Anchor.from_dict(head.to_dict()) == Anchor(4, head.head, head.key)
    assert verify_log(p, anchors=[head]).ok
    lines = p.read_text().splitlines()
    _write(p, lines[:3])  # a valid shorter log: only the anchor shows it
    assert verify_log(p).ok
    assert _kinds(verify_log(p, anchors=[head])) == {"truncated"}
    # a stranger re-creates the whole log with a key of their own: pinned key and anchor both catch it
    p.unlink()
    (tmp_path / "audit.key").unlink()
    forged = AuditLog(p)
    for r in range(4):
        forged.append("x", n=r)
    assert verify_log(p).ok  # self-consistent
    assert _kinds(verify_log(p, anchors=[head])) >= {"wrong-key", "rewritten"}
    assert head.head != GENESIS


def test_strict_tail_refuses_lines_after_the_newest_anchor(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    head = log.append("promote", version="1")
    log.append("promote", version="2")  # signed with the right key, but after the anchor
    assert verify_log(p, anchors=[head]).ok and verify_log(p, anchors=[head]).notes
    assert _kinds(verify_log(p, anchors=[head], strict_tail=True)) == {"unanchored"}


def test_empty_or_garbage_log_is_a_finding(tmp_path):
    p = tmp_path / "audit.jsonl"
    p.write_text("")
    assert _kinds(verify_log(p)) == {"empty"}
    p.write_text("not json\n")
    assert "not-json" in _kinds(verify_log(p))


@pytest.mark.parametrize("value", [{"lines": -1, "head": "0" * 64}, {"lines": 1}, "x"])
def test_malformed_anchor_is_refused(value):
    from fedready.errors import IntegrityError

    with pytest.raises(IntegrityError, match="malformed"):
        Anchor.from_dict(value)
