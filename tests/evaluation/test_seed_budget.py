"""``fedready evaluate --seeds k`` is a release like any other: refused past the budget unless raised explicitly.

Each retrained seed is another private run on the same clients' rows (issue 21): the run's composed
epsilon with the retrains must fit the run's budget, or a larger one given with ``--seeds-epsilon``.
The run folder is the registry suite's demo run (no Ray) with a ledger charged like a 3-round DP run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.privacy.accounting import calibrate_with_releases
from fedready.privacy.ledger import Ledger
from fedready.registry._demo import write_demo_run


def _spent_run(folder: Path, *, client_dp: bool = False) -> Path:
    """A run folder whose two clients each spent the whole budget (1.0): a count, 3 DP-SGD rounds, a query."""
    run = write_demo_run(folder)
    if client_dp:
        doc = json.loads((run / "config.json").read_text())
        doc["config"].update(client_dp="server-fixed", client_noise_multiplier=1.0)
        (run / "config.json").write_text(json.dumps(doc, sort_keys=True))
    z = calibrate_with_releases(target_epsilon=1.0, target_delta=1e-5, sample_rate=0.5, steps=9,
                                releases=[(20.0, 1.0, 1), (12.0, 1.0, 1)])  # fmt: skip
    ledger = Ledger(run_id=run.name, delta=1e-5, target_epsilon=1.0, accountant="rdp", dp=True)
    for client in ("0", "1"):
        ledger.charge(round=1, client=client, level="count", noise_multiplier=20.0, sample_rate=1.0, steps=1,
                      delta=1e-5)  # fmt: skip
        for r in (1, 2, 3):
            ledger.charge(round=r, client=client, level="sample", noise_multiplier=z, sample_rate=0.5, steps=3,
                          delta=1e-5)  # fmt: skip
        ledger.charge(round=4, client=client, level="query", noise_multiplier=12.0, sample_rate=1.0, steps=1,
                      delta=1e-5)  # fmt: skip
    ledger.save(run / "ledger.json")
    assert ledger.epsilon == pytest.approx(1.0, abs=0.01)
    return run


def _evaluate(run: Path, *extra: str):
    return CliRunner().invoke(app, ["evaluate", str(run), "--no-federated", "--seeds", "3", *extra])


def test_seed_retrains_past_the_budget_are_refused_before_any_retrain(tmp_path):
    run = _spent_run(tmp_path / "run")
    before = (run / "ledger.json").read_text()
    out = _evaluate(run)
    assert out.exit_code == 2 and "Traceback" not in out.output
    (line,) = [x for x in out.output.splitlines() if x.startswith("error:")]
    assert "seeds" in line and "--seeds-epsilon" in line and "budget 1" in line
    assert not (run / "seeds").exists() and not (run / "evaluation.json").exists()  # nothing retrained, nothing written
    assert (run / "ledger.json").read_text() == before  # nothing charged


def test_a_seeds_epsilon_below_the_projection_is_refused_too(tmp_path):
    run = _spent_run(tmp_path / "run")
    out = _evaluate(run, "--seeds-epsilon", "1.2")
    assert out.exit_code == 2 and "--seeds-epsilon 1.2" in out.output and not (run / "seeds").exists()


def test_the_projection_composes_the_retrains_and_an_explicit_budget_accepts_it(tmp_path):
    from fedready.evaluation.suite import check_seed_budget
    from fedready.simulations.engine import load_run_config

    run = _spent_run(tmp_path / "run")

    class _Run:  # what check_seed_budget reads of a loaded run
        cfg, run_dir = load_run_config(run), run

    one = check_seed_budget(_Run(), 2, 100.0)
    two = check_seed_budget(_Run(), 3, 100.0)
    assert 1.0 < one < two < 3.0  # RDP composition of one, then two more copies of the run's plan
    assert check_seed_budget(_Run(), 3, two * 1.001) == two


def test_seeds_are_refused_under_client_level_dp(tmp_path):
    run = _spent_run(tmp_path / "run", client_dp=True)
    out = _evaluate(run, "--seeds-epsilon", "100")
    assert out.exit_code == 2 and "client-level budget" in out.output
