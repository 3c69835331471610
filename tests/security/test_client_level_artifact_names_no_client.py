"""Issue 21: under client-level DP the shipped artifact showed who took part.

``ledger_summary.json`` copied every client's epsilon, ``training_summary.json`` named the first failing
client (and the refused ones), and ``evaluation.json`` repeated the per-client epsilons. Each piece is
staged here in a run folder with two clients' releases and a refused organisation, packaged, and read.
"""

from __future__ import annotations

import json

from fedready.privacy.ledger import Ledger
from fedready.registry import package_run
from fedready.registry._demo import write_demo_run
from fedready.server.app import run_status

HISTORY = [
    {"round": 1, "trained": ["0"], "declined": [{"client": "7", "reason": "budget-exhausted"}], "failed": [],
     "rejected": [], "aggregated": 1},
    {"round": 2, "trained": ["0"], "declined": [], "failed": [{"client": "7", "reason": "fedready:client-error"}],
     "rejected": [], "aggregated": 1},
]  # fmt: skip


def test_the_run_status_names_no_client_but_keeps_every_reason():
    status = run_status(HISTORY, "")
    assert status["first_client_error"] == "round 1: declined: budget-exhausted"
    assert status["problems"]["reasons"] == {"declined: budget-exhausted": 1, "failed: fedready:client-error": 1}
    assert "7" not in json.dumps(status)


def test_client_level_artifact_carries_no_per_client_epsilon_or_client_name(tmp_path, keys):
    run = write_demo_run(tmp_path / "run")
    ledger = Ledger(run_id=run.name, delta=1e-5, target_epsilon=1.0, accountant="rdp", dp=True)
    for client, rounds in (("4", (1, 2)), ("7", (1,))):  # who trained when: exactly what must not ship
        for r in rounds:
            ledger.charge(round=r, client=client, level="sample", noise_multiplier=5.0, sample_rate=0.5, steps=3,
                          delta=1e-5)  # fmt: skip
    ledger.charge(round=1, client="*", level="client", noise_multiplier=1.0, sample_rate=0.5, steps=1, delta=1e-5)
    ledger.save(run / "ledger.json")
    summary = json.loads((run / "summary.json").read_text())
    refused = [{"client": "9", "node_id": 1234, "reason": "local-privacy-limit: ..."}]
    summary.update(client_dp="server-fixed", **run_status(HISTORY, ""), refused_clients=refused)
    (run / "summary.json").write_text(json.dumps(summary))
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "art")
    shipped = json.loads((art / "ledger_summary.json").read_text())
    assert "clients" not in shipped and shipped["clients_charged"] == 2 and shipped["epsilon"] > 0
    training = (art / "training_summary.json").read_text()
    assert json.loads(training)["refused_clients"] == [{"reason": "local-privacy-limit: ..."}]
    for name in ('"4"', '"7"', '"9"', "client 7", "1234"):
        assert name not in training and name not in json.dumps(shipped)


def test_the_evaluation_report_lists_no_per_client_epsilon_under_client_level_dp(tmp_path):
    from fedready.evaluation.suite import privacy_report

    run = write_demo_run(tmp_path / "run")
    ledger = Ledger(run_id=run.name, delta=1e-5, target_epsilon=1.0, accountant="rdp", dp=True)
    ledger.charge(round=1, client="4", level="sample", noise_multiplier=5.0, sample_rate=0.5, steps=3, delta=1e-5)
    ledger.save(run / "ledger.json")
    assert privacy_report(run, {"dp": True, "client_dp": "off"})["per_client_epsilon"] == {"4": ledger.epsilon}
    assert privacy_report(run, {"dp": True, "client_dp": "server-fixed"})["per_client_epsilon"] == {}


def test_client_level_artifact_ships_no_per_client_evaluation_and_a_public_profile(tmp_path, keys):
    """Issue 20/21: the clients' own numbers and their summed histograms are not client-level private."""
    from fedready.client.queries import local_group_counts
    from fedready.evaluation.suite import evaluate_run
    from fedready.modelio import arrays_digest
    from fedready.server.queries import federated_report, final_model
    from fedready.simulations.engine import load_run_config

    run = write_demo_run(tmp_path / "run")
    cfg = load_run_config(run)
    arrays, _ = final_model(run)
    fed = federated_report([local_group_counts(cfg, p, arrays) for p in range(cfg.num_clients)], cfg)
    fed.update(model_digest=arrays_digest(arrays), clients_failed=[], clients_declined=0)
    (run / "federated_eval.json").write_text(json.dumps(fed))
    report = evaluate_run(run)  # reads the clients' counts above
    assert report["federated"]["client_accuracy"]["clients"]  # the coordinator has them
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "client_dp": "server-fixed"}))
    art, _ = package_run(run, key=keys["operator"][0], version="1.0.0", out=tmp_path / "art")
    shipped = json.loads((art / "evaluation.json").read_text())
    assert shipped["federated"] is None and "client-level" in shipped["federated_withheld"]
    assert not [k for k in shipped["estimates"] if k.startswith("federated.")]
    clients = [g for g in shipped["gates"] if g["source"] == "clients"]
    assert clients and all(g["measured"] is None and g["lo"] is None for g in clients)
    card = (art / "model_card.md").read_text()
    assert "validation accuracy [95% interval]" not in card and "Not computed" in card
    profile = json.loads((art / "reference_profile.json").read_text())
    assert profile["clients"] == 0 and "public benchmark" in profile["noise"]["source"]
