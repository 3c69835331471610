import json

from fedready.server.audit import AuditLog, verify_chain


def test_chain_verifies_and_detects_an_edited_line(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for r in range(1, 4):
        log.append("round-finished", round=r, accuracy=0.8)
    assert verify_chain(p) == (True, None)
    AuditLog(p).append("run-finished")  # reopening continues the chain
    assert verify_chain(p) == (True, None)
    lines = p.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["accuracy"] = 0.99
    lines[1] = json.dumps(entry, sort_keys=True)
    p.write_text("\n".join(lines) + "\n")
    assert verify_chain(p) == (False, 3)  # the line after the edit no longer points at it


def test_removed_line_is_detected(tmp_path):
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for r in range(3):
        log.append("x", n=r)
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0], lines[2]]) + "\n")
    assert verify_chain(p) == (False, 2)
