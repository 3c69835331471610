import pytest

from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.ledger import Ledger, LedgerEntry, recompute


def _ledger(rounds=3):
    led = Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp")
    for client, (sigma, q, steps) in {"0": (3.0, 0.2, 5), "1": (2.5, 0.1, 10)}.items():
        hist = []
        for r in range(1, rounds + 1):
            hist.append((sigma, q, steps))
            led.record(LedgerEntry(r, client, sigma, q, steps, "rdp", 1e-5, compose_epsilon(hist, delta=1e-5)))
    return led


def test_epsilon_grows_round_by_round_and_run_reports_the_max():
    led = _ledger()
    assert led.epsilon_after_round(1) < led.epsilon_after_round(2) < led.epsilon_after_round(3)
    assert led.epsilon == max(led.client_epsilon().values())
    assert led.epsilon == led.epsilon_after_round(3)


def test_recompute_reproduces_every_entry():
    led = _ledger()
    again = recompute(led)
    for e in led.entries:
        got = dict(again[e.client])[e.round]
        assert got == pytest.approx(e.epsilon, rel=1e-9)


def test_round_trip_and_truncate(tmp_path):
    led = _ledger()
    led.record_decline(round=3, client="2", reason="budget-exhausted", detail="x")
    led.save(tmp_path / "ledger.json")
    back = Ledger.load(tmp_path / "ledger.json")
    assert back.to_dict() == led.to_dict()
    back.truncate(1)
    assert {e.round for e in back.entries} == {1} and back.declines == []


def test_foreign_file_is_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a fedready ledger"):
        Ledger.load(p)
