"""What reaches the disk when: each file fsynced as often as its durability needs, and no more."""

from __future__ import annotations

import json
import os

import pytest

from fedready.audit import AuditLog, verify_log
from fedready.files import append_line, atomic_write_text


@pytest.fixture
def fsyncs(monkeypatch):
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    return calls


def test_a_round_of_audit_events_reaches_the_disk_with_one_fsync_and_verifies(tmp_path, fsyncs):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("run-started", run="r")
    assert len(fsyncs) == 1  # outside a round every event is durable on its own
    log.defer_sync()
    for i in range(12):
        log.append("update-accepted", round=1, client=str(i), norm=0.5)
    assert len(fsyncs) == 1  # written (readers see them) but not yet synced
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 13
    log.sync()
    assert len(fsyncs) == 2
    log.append("round-finished", round=1)
    assert len(fsyncs) == 3
    assert verify_log(tmp_path / "audit.jsonl").ok  # the chain and signatures are those of event-by-event appends


def test_a_sync_with_nothing_deferred_costs_nothing(tmp_path, fsyncs):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.defer_sync()
    log.sync()
    assert fsyncs == []


def test_appended_lines_are_synced_and_readers_skip_a_torn_last_line(tmp_path, fsyncs):
    from fedready.server.app import read_metrics

    append_line(tmp_path / "m.jsonl", '{"round": 1}')
    append_line(tmp_path / "m.jsonl", '{"round": 2}\n')
    assert (tmp_path / "m.jsonl").read_text() == '{"round": 1}\n{"round": 2}\n'
    assert len(fsyncs) == 2
    with (tmp_path / "m.jsonl").open("a") as f:
        f.write('{"round": 3, "acc')  # killed mid-append
    assert [m["round"] for m in read_metrics(tmp_path / "m.jsonl")] == [1, 2]
    assert read_metrics(tmp_path / "missing.jsonl") == []
    atomic_write_text(tmp_path / "record.json", "{}")
    assert len(fsyncs) == 3


def test_a_resumed_run_drops_lines_past_its_checkpoint_and_a_torn_line(tmp_path):
    from fedready.server.app import RoundReport, _append_metrics

    path = tmp_path / "metrics.jsonl"
    for r in (1, 2, 3):
        _append_metrics(path, RoundReport(round=r, accuracy=0.8, loss=0.4, epsilon=0.1 * r))
    with path.open("a") as f:
        f.write('{"round": 4, "accur')  # killed mid-append
    _append_metrics(path, RoundReport(round=3, accuracy=0.81, loss=0.4, epsilon=0.3), keep_through=2)
    rounds = [json.loads(x)["round"] for x in path.read_text().splitlines()]
    assert rounds == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[-1])["accuracy"] == pytest.approx(0.81)


def test_the_checkpoint_syncs_model_ledger_and_pointer_once_each(tmp_path, fsyncs):
    import numpy as np

    from fedready.config import make_config
    from fedready.constants import LEDGER_FILE
    from fedready.privacy.ledger import Ledger
    from fedready.server.app import _Checkpointer, new_ledger

    ledger = new_ledger(make_config(), "r")
    ledger.charge(round=1, client="0", level="sample", noise_multiplier=1.1, sample_rate=0.25, steps=3, delta=1e-5)
    ckpt = _Checkpointer(tmp_path)
    ckpt.save(1, {"w": np.ones(3, dtype=np.float32)}, ledger)
    assert len(fsyncs) == 3  # the model, ledger.json (every later step reads it) and the pointer
    assert Ledger.load(tmp_path / LEDGER_FILE).to_dict() == ledger.to_dict()
    last, arrays, restored = ckpt.load()
    assert last == 1 and restored.to_dict() == ledger.to_dict()


def test_the_ledgers_charged_index_follows_charges_truncation_and_reload(tmp_path):
    from fedready.config import make_config
    from fedready.privacy.ledger import Ledger
    from fedready.server.app import new_ledger

    ledger = new_ledger(make_config(), "r")
    for r in (1, 2, 3):
        assert not ledger.charged("0", "sample", r)
        ledger.charge(round=r, client="0", level="sample", noise_multiplier=5.0, sample_rate=0.1, steps=3, delta=1e-5)
        assert ledger.charged("0", "sample", r) and not ledger.charged("1", "sample", r)
    ledger.truncate(1)  # a resume drops what came after the checkpoint: those rounds are no longer charged
    assert ledger.charged("0", "sample", 1) and not ledger.charged("0", "sample", 2)
    ledger.save(tmp_path / "l.json")
    again = Ledger.load(tmp_path / "l.json")
    assert again.charged("0", "sample", 1) and not again.charged("0", "sample", 3)
    assert again.to_dict() == ledger.to_dict()


def test_the_cross_check_updates_the_runs_summary_and_keeps_everything_else(tmp_path):
    """Also in evaluate mode, whose ServerApp returns the federated counts, not the summary."""
    from fedready.config import make_config
    from fedready.server.app import cross_check_privacy, new_ledger

    cfg = make_config()
    assert cross_check_privacy(tmp_path, cfg) is None  # nothing to check yet
    ledger = new_ledger(cfg, "r")
    for r in (1, 2):
        ledger.charge(round=r, client="0", level="sample", noise_multiplier=5.0, sample_rate=0.1, steps=3, delta=1e-5)
    ledger.save(tmp_path / "ledger.json")
    summary = {"status": "completed", "accuracy": 0.84, "model_digest": "abc", "epsilon": ledger.epsilon,
               "client_noise_multiplier": None, "epsilon_dp_accounting": None}  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    checked = cross_check_privacy(tmp_path, cfg)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert checked == on_disk
    assert {k: on_disk[k] for k in ("status", "accuracy", "model_digest")} == {"status": "completed", "accuracy": 0.84,
                                                                             "model_digest": "abc"}  # fmt: skip
    assert on_disk["epsilon_dp_accounting"]["rdp"] == pytest.approx(ledger.epsilon, rel=0.02)
    assert on_disk["client_epsilon_dp_accounting"] is None
