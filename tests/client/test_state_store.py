"""The client's record and its last reply: one file, written whole once per round, on the disk first."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedready.client.state import STATE_FILE, ClientPrivacyState, Release, Store, read_kept_reply, read_state
from fedready.modelio import save_npz


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _state(last_round: int) -> ClientPrivacyState:
    samples = [Release("sample", r, 1.1, 0.25, 3) for r in range(1, last_round + 1)]
    releases = [Release("count", 1, 4.0, 1.0, 1), *samples]
    return ClientPrivacyState(releases=releases, noisy_rows=321, last_round=last_round, last_input_digest="abc")


def _reply(value: float) -> tuple[dict[str, np.ndarray], dict]:
    return {"fc.weight": np.full((3, 2), value, dtype=np.float32), "fc.bias": np.arange(3, dtype=np.float32)}, {
        "num-examples": 321, "steps": 3}  # fmt: skip


def test_a_round_is_one_file_written_once_with_one_fsync(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    store = Store(_context(), tmp_path)
    store.save(_state(2), _reply(0.5))
    assert len(synced) == 1  # the record reaches the disk before the reply leaves, and nothing else is synced
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [STATE_FILE]


def test_record_and_reply_round_trip_and_a_save_without_reply_keeps_the_reply(tmp_path):
    store = Store(_context(), tmp_path)
    store.save(_state(2), _reply(0.5))
    assert store.load().to_dict() == _state(2).to_dict()
    arrays, metrics = store.cached_reply()
    assert metrics == {"num-examples": 321, "steps": 3}
    np.testing.assert_array_equal(arrays["fc.weight"], np.full((3, 2), 0.5, dtype=np.float32))
    later = _state(2)
    later.releases.append(Release("query", 3, 5.0, 1.0, 1))  # a query: a new release, no new update
    store.save(later)
    assert read_state(tmp_path).to_dict() == later.to_dict()
    arrays2, metrics2 = read_kept_reply(tmp_path)
    assert metrics2 == metrics and all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    store.save(_state(3), _reply(0.25))  # the next round replaces record and reply together
    assert read_kept_reply(tmp_path)[0]["fc.weight"][0, 0] == pytest.approx(0.25)


def test_a_client_folder_of_the_earlier_three_file_layout_is_read(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps(_state(4).to_dict()))
    arrays, metrics = _reply(0.75)
    (tmp_path / "last_update.npz").write_bytes(save_npz(arrays))
    (tmp_path / "last_metrics.json").write_text(json.dumps(metrics))
    store = Store(_context(), tmp_path)
    assert store.load().last_round == 4 and len(store.load().releases) == 5
    assert store.cached_reply()[1] == metrics
    store.save(_state(5), _reply(0.1))  # and written back in the one-file layout
    assert read_state(tmp_path).last_round == 5


def test_a_crash_mid_write_leaves_the_previous_round_whole(tmp_path, monkeypatch):
    store = Store(_context(), tmp_path)
    store.save(_state(2), _reply(0.5))

    def killed(*_a, **_k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save(_state(3), _reply(0.25))
    monkeypatch.undo()
    assert read_state(tmp_path).last_round == 2  # the record of round 2, with round 2's reply
    assert read_kept_reply(tmp_path)[0]["fc.weight"][0, 0] == pytest.approx(0.5)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_client_without_a_folder_keeps_its_record_in_flowers_context():
    ctx = _context()
    Store(ctx, None).save(_state(2), _reply(0.5))
    assert Store(ctx, None).load().to_dict() == _state(2).to_dict()
    assert Store(ctx, None).cached_reply() is None
