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


def test_appended_lines_are_synced_and_a_copy_is_not(tmp_path, fsyncs):
    append_line(tmp_path / "m.jsonl", '{"round": 1}')
    append_line(tmp_path / "m.jsonl", '{"round": 2}\n')
    assert (tmp_path / "m.jsonl").read_text() == '{"round": 1}\n{"round": 2}\n'
    assert len(fsyncs) == 2
    atomic_write_text(tmp_path / "copy.json", "{}", durable=False)
    assert len(fsyncs) == 2 and (tmp_path / "copy.json").read_text() == "{}"
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


def test_the_checkpoint_syncs_model_and_pointer_and_writes_the_ledger_copy_unsynced(tmp_path, fsyncs):
    import numpy as np

    from fedready.config import make_config
    from fedready.constants import LEDGER_FILE
    from fedready.privacy.ledger import Ledger
    from fedready.server.app import _Checkpointer, new_ledger

    ledger = new_ledger(make_config(), "r")
    ledger.charge(round=1, client="0", level="sample", noise_multiplier=1.1, sample_rate=0.25, steps=3, delta=1e-5)
    ckpt = _Checkpointer(tmp_path)
    ckpt.save(1, {"w": np.ones(3, dtype=np.float32)}, ledger)
    assert len(fsyncs) == 2  # the model and the pointer (which holds the durable ledger)
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
