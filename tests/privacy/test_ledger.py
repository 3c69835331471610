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


def test_every_release_about_a_clients_rows_composes_into_the_headline():
    led = Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp")
    led.charge(round=1, client="0", level="count", noise_multiplier=20.0, sample_rate=1.0, steps=1, delta=1e-5)
    for r in (1, 2, 3):
        led.charge(round=r, client="0", level="sample", noise_multiplier=5.0, sample_rate=0.3, steps=3, delta=1e-5)
    led.charge(round=4, client="0", level="query", noise_multiplier=12.0, sample_rate=1.0, steps=1, delta=1e-5)
    history = [(20.0, 1.0, 1), (5.0, 0.3, 9), (12.0, 1.0, 1)]
    assert led.epsilon == pytest.approx(compose_epsilon(history, delta=1e-5))  # RDP over all three kinds
    parts = led.epsilon_parts()
    assert parts["sample"] == pytest.approx(compose_epsilon([(5.0, 0.3, 9)], delta=1e-5))
    assert led.epsilon > max(parts.values())  # composing costs more than any part alone
    assert led.entries[-1].epsilon == pytest.approx(led.epsilon)  # each entry: composed up to itself
    assert recompute(led)["0"][-1][1] == pytest.approx(led.epsilon, rel=1e-12)
    # the federation-level mechanism (client "*") never mixes into a client's record-level epsilon
    led.charge(round=1, client="*", level="client", noise_multiplier=1.0, sample_rate=0.1, steps=1, delta=1e-5)
    assert led.epsilon == pytest.approx(compose_epsilon(history, delta=1e-5))
    assert led.client_level_epsilon == pytest.approx(compose_epsilon([(1.0, 0.1, 1)], delta=1e-5))


def test_an_unknown_level_is_refused():
    led = Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp")
    with pytest.raises(ValueError, match="unknown ledger level 'profile'"):
        led.charge(round=1, client="0", level="profile", noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1e-5)


def test_insecure_noise_and_uncharged_releases_are_stamped(tmp_path):
    led = Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp", insecure_seeded_noise=True,
                 outside_guarantee=["per-round training loss (--release-train-loss)"])  # fmt: skip
    assert not led.private
    assert led.caveats()[0].startswith("NOT PRIVATE") and "training loss" in led.caveats()[1]
    led.save(tmp_path / "l.json")
    back = Ledger.load(tmp_path / "l.json")
    assert back.insecure_seeded_noise and not back.private and back.to_dict()["caveats"] == led.caveats()
    assert Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp").private


def test_per_client_epsilon_read_between_charges_equals_a_fresh_composition():
    """The headline epsilon is read several times a round; each read composes only the clients charged since."""
    import random

    from fedready.config import make_config
    from fedready.privacy.ledger import RECORD_LEVELS, Ledger
    from fedready.server.app import new_ledger

    rng = random.Random(3)
    ledger = new_ledger(make_config(), "r")
    for r in range(1, 9):
        for c in rng.sample(range(30), 6):
            level = rng.choice(["count", "sample", "sample", "query"])
            ledger.charge(round=r, client=str(c), level=level, noise_multiplier=rng.uniform(1, 8),
                          sample_rate=rng.choice([0.1, 0.5, 1.0]), steps=rng.randint(1, 5), delta=1e-5)  # fmt: skip
        if r == 5:
            ledger.truncate(3)  # a resume: the list is replaced, nothing stale survives
        fresh = Ledger.from_dict(ledger.to_dict())  # no cache: composed from scratch
        for levels in (RECORD_LEVELS, ("sample",), ("count",), ("query",)):
            assert ledger.client_epsilon(levels) == fresh.client_epsilon(levels)
        assert ledger.epsilon == fresh.epsilon and ledger.epsilon_parts() == fresh.epsilon_parts()
