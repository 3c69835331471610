"""Monitoring on the device and in the registry: /metrics, shadow before promotion, canary auto-rollback.

Uses the shared registry fixtures (``artifact`` and ``artifact_v2`` ship a reference profile of
Adult's training split, see :mod:`fedready.registry._demo`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import BREACH_EXIT, app
from fedready.datasets.adult import load_adult
from fedready.errors import ConfigError
from fedready.monitoring import SUMMARIES_FILE
from fedready.registry import EdgeAgent, EdgeServer, ServeConfig, shadow_compare
from tests.registry.test_edge_e2e import BLOCKED, BLOCKER


def _rows(n: int, *, age_shift: float = 0.0) -> list[dict[str, str]]:
    t = load_adult("test").take(np.arange(n))
    rows = [dict(zip(t.columns, vals, strict=True)) for vals in zip(*t.columns.values(), strict=True)]
    if age_shift:
        for r in rows:
            r["age"] = f"{float(r['age']) + age_shift:g}"
    return rows


def _write_csv(path, rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _cli(*args, code: int = 0) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, (args, res.output)
    return res.stdout


def test_metrics_expose_prediction_count_latency_and_drift(tmp_path, artifact, keys):
    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact, public_key=keys["operator"][1])
    server = EdgeServer(agent.home, ServeConfig(port=0, max_batch=64, monitor_window=500))
    server.start()
    try:
        rows = _rows(600, age_shift=10)
        for i in range(0, 600, 100):
            req = urllib.request.Request(f"{server.url}/predict", data=json.dumps(rows[i : i + 100]).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
    finally:
        server.stop()
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    assert metrics['fedready_predictions_total{version="1.0.0"}'] == 600
    assert metrics["fedready_prediction_latency_seconds_count"] == sum(server.batch_sizes.values())
    assert 'fedready_prediction_latency_seconds_bucket{le="0.01"}' in metrics
    assert metrics['fedready_drift_psi{feature="age"}'] > 0.2  # the shifted ages show
    assert metrics['fedready_drift_psi{feature="sex"}'] < 0.1
    assert 'fedready_drift_distance{feature="__score__"}' in metrics
    assert 500 <= metrics["fedready_window_rows"] <= 600
    # summaries are kept, raw inputs are not (no --record-inputs)
    lines = (agent.home / "monitoring" / SUMMARIES_FILE).read_text().splitlines()
    assert sum(json.loads(x)["rows"] for x in lines) == 600
    assert not (agent.home / "monitoring" / "inputs.jsonl").exists()
    assert "Private" not in "".join(lines)


def test_shadow_report_gates_promotion(fleet, artifact, artifact_v2, tmp_path):
    reg, _, _ = fleet
    rows = _rows(400)
    report = shadow_compare(artifact, artifact_v2, rows)
    assert (report["active_version"], report["candidate_version"], report["rows"]) == ("1.0.0", "2.0.0", 400)
    assert 0 <= report["agreement"] <= 1 and set(report["groups"]) == {"sex", "race"}
    assert sum(g["rows"] for g in report["groups"]["sex"].values()) == 400
    assert report["min_group_agreement"] <= report["agreement"] or len(report["groups"]["sex"]) == 1
    assert report["score_delta"]["max_abs"] >= report["score_delta"]["mean_abs"] > 0  # other weights
    path = tmp_path / "shadow.json"
    path.write_text(json.dumps(report))
    too_high = min(1.0, report["agreement"] + 0.01)
    with pytest.raises(ConfigError, match="below the required"):
        reg.promote("2.0.0", channel="canary", approver="alice", min_agreement=too_high, shadow_report=report)
    with pytest.raises(ConfigError, match="not 1.0.0"):
        reg.promote("1.0.0", channel="canary", approver="alice", min_agreement=0.0, shadow_report=report, force=True,
                    reason="baseline")  # fmt: skip
    out = _cli("registry", "promote", reg.path, "2.0.0", "--channel", "canary", "--approver", "alice",
               "--min-agreement", report["agreement"] - 0.01, "--shadow-report", path)  # fmt: skip
    assert out == ""
    promoted = [json.loads(x) for x in (reg.path / "audit.jsonl").read_text().splitlines()][-1]
    assert promoted["shadow"]["agreement"] == report["agreement"]


@pytest.mark.slow
def test_canary_breach_rolls_back_through_registry_and_edge_agent(fleet, keys, tmp_path):
    reg, server, _ = fleet
    reg.promote("1.0.0", channel="canary", approver="alice", force=True, reason="baseline without evaluation")
    reg.promote("2.0.0", channel="canary", approver="alice")
    canary = EdgeAgent(tmp_path / "canary-device")
    update = dict(repo=server.url, channel="canary", device_id="canary-0", root=reg.metadata_dir / "1.root.json",
                  public_key=keys["operator"][1])  # fmt: skip
    assert canary.update(**update).version == "2.0.0"
    enrolment = json.loads(_cli("edge", "enrol", "--home", canary.home))
    _cli("registry", "enrol", reg.path, "--device-id", enrolment["device_id"], "--public-key",
         enrolment["public_key"], "--approver", "alice")  # fmt: skip
    drifted = tmp_path / "drifted.csv"
    _write_csv(drifted, _rows(1000, age_shift=10))
    _cli("edge", "predict", "--home", canary.home, drifted)
    # monitor runs on the lean edge install (no training stack), as on a real device
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=BLOCKED))
    mon = subprocess.run([sys.executable, "-m", "fedready.cli", "monitor", "--home", str(canary.home), "--window",
                          "1000", "--json"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(blocker)})  # fmt: skip
    assert mon.returncode == BREACH_EXIT, mon.stderr
    alerts = canary.home / "monitoring" / "alerts.jsonl"
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert {(a["channel"], a["version"], a["feature"]) for a in lines} >= {("canary", "2.0.0", "age")}

    # an unrelated channel's alerts do not touch it; then the canary's breach rolls it back
    assert (
        json.loads(_cli("registry", "auto-rollback", reg.path, "--channel", "stable", "--alerts", alerts))[
            "rolled_back"
        ]
        is False
    )
    decision = json.loads(_cli("registry", "auto-rollback", reg.path, "--channel", "canary", "--alerts", alerts,
                               "--min-devices", 1))  # one canary device in this test; the default is 3  # fmt: skip
    assert (decision["rolled_back"], decision["replaced"], decision["version"]) == (True, "2.0.0", "1.0.0")
    assert reg.channel("canary").version == "1.0.0" and reg.channel("stable").version == "1.0.0"
    audit = [json.loads(x) for x in (reg.path / "audit.jsonl").read_text().splitlines()]
    assert [a["event"] for a in audit][-2:] == ["rollback", "auto-rollback"]
    assert audit[-1]["breaches"] == decision["breaches"] and "feature-drift:age" in audit[-1]["kinds"]
    # the same alerts again: nothing to do (they name the version already rolled back)
    assert (
        json.loads(
            _cli("registry", "auto-rollback", reg.path, "--channel", "canary", "--alerts", alerts, "--min-devices", 1)
        )["rolled_back"]
        is False
    )
    res = canary.update(**update)
    assert (res.changed, res.version, res.previous) == (True, "1.0.0", "2.0.0")
    # an unshifted window on the restored model raises nothing
    clean = tmp_path / "clean.csv"
    _write_csv(clean, _rows(1000))
    _cli("edge", "predict", "--home", canary.home, clean)
    assert json.loads(_cli("monitor", "--home", canary.home, "--json"))["breaches"] == []


def test_monitor_cli_errors(tmp_path, artifact, keys):
    home = tmp_path / "device"
    _cli("monitor", "--home", home, code=2)  # no model yet
    EdgeAgent(home).install(artifact, public_key=keys["operator"][1])
    res = CliRunner().invoke(app, ["monitor", "--home", str(home)])
    assert res.exit_code == 2 and "nothing recorded" in res.output
    data = tmp_path / "aged.csv"
    _write_csv(data, _rows(300, age_shift=10))
    _cli("edge", "predict", "--home", home, data, "--record-inputs")
    assert len((home / "monitoring" / "inputs.jsonl").read_text().splitlines()) == 300
    policy = tmp_path / "policy.toml"
    policy.write_text("[monitoring]\npsi_alert = 50\ndistance_alert = 1\n")  # nothing breaches these
    _cli("monitor", "--home", home, "--gate", policy)
    policy.write_text("[monitoring]\nmin_rows = 1000\n")
    _cli("monitor", "--home", home, "--gate", policy)  # too few rows to alert
    _cli("monitor", "--home", home, "--window", 300, code=BREACH_EXIT)


@pytest.mark.slow
def test_a_real_simulation_writes_a_noisy_accounted_profile_that_detects_both_shifts(sim_run):
    from fedready.datasets.adult import adult_schema
    from fedready.monitoring import compare, count_rows
    from fedready.privacy.ledger import Ledger

    profile = json.loads((sim_run / "reference_profile.json").read_text())
    assert profile["noise"]["mechanism"] == "gaussian" and profile["clients"] == 4  # DP run: noisy by default
    # each client noised its own counts and charged them to its budget: one query release per client, the
    # last one composed into that client's epsilon (at most the run's budget)
    led = Ledger.load(sim_run / "ledger.json")
    queries = [e for e in led.entries if e.level == "query"]
    assert sorted(e.client for e in queries) == ["0", "1", "2", "3"]
    assert all(e.noise_multiplier == profile["noise"]["noise_multiplier"] and 0.9 < e.epsilon <= 1.0 for e in queries)
    assert profile["noise"]["client_std"] > 0 and led.epsilon_parts()["query"] > 0
    schema = adult_schema()
    test = load_adult("test")
    n = len(test)
    rng = np.random.default_rng(0)
    sex = test.columns["sex"]
    female, male = np.flatnonzero(sex == "Female"), np.flatnonzero(sex == "Male")
    windows = {
        "clean": test.columns,
        "aged": {**test.columns, "age": np.array([f"{float(a) + 10:g}" for a in test.columns["age"]])},
        "female": test.take(np.concatenate([rng.choice(female, int(0.7 * n)), rng.choice(male, n - int(0.7 * n))])
                            ).columns,
    }  # fmt: skip
    scores = np.full(n, 0.2)
    reports = {k: compare(profile, count_rows(schema, cols, scores=scores, predictions=np.zeros(n, int)))
               for k, cols in windows.items()}  # fmt: skip
    # the clean window raises no drift alert at the default limits (PSI 0.2): the reference's noise moves a
    # clean feature's PSI by a few hundredths (measured up to 0.13 on one draw), far from a real shift
    assert not [b for b in reports["clean"]["breaches"] if b["kind"] == "feature-drift"]
    assert max(f["psi"] for f in reports["clean"]["features"].values()) < 0.2
    assert reports["aged"]["features"]["age"]["psi"] > 0.2 and reports["female"]["features"]["sex"]["psi"] > 0.2
    # each shift is decided, not merely undecided: its interval over the reference's noise clears the limit
    assert {("age", "aged"), ("sex", "female")} <= {(b["feature"], k) for k in ("aged", "female")
                                                   for b in reports[k]["breaches"] if b["metric"] == "psi"}
