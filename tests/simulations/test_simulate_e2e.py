"""End-to-end runs of ``fedready simulate`` through Flower's simulation engine (Ray).

Small federations (4 clients, a few rounds) keep these to seconds each; the
accuracy target of the default configuration is checked by ``make demo`` and
recorded in the README, not here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedready.privacy.ledger import Ledger, recompute

pytestmark = pytest.mark.slow

SMALL = ["--clients", "4", "--partitioner", "iid", "--local-steps", "2", "--batch-size", "256", "--lr", "1.0"]


def _env(tmp: str) -> dict[str, str]:
    # A private temp dir per run so a killed run's Ray processes can be found and stopped.
    return {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}


def _fedready(*args: str, tmp: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedready.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp))  # fmt: skip


def _stop_ray(tmp: str) -> None:
    subprocess.run(["pkill", "-9", "-f", tmp], check=False)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def ray_tmp():
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    yield tmp
    _stop_ray(tmp)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 4-round private run."""
    out = tmp_path_factory.mktemp("runs")
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    try:
        proc = _fedready("simulate", *SMALL, "--rounds", "4", "--out", str(out), "--name", "ref", "--json",
                         "--wire-log", str(out / "wire.jsonl"), tmp=tmp)  # fmt: skip
    finally:
        _stop_ray(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out / "ref"


def test_json_summary_and_run_folder(reference_run):
    summary, run = reference_run
    assert set(summary) >= {"accuracy", "epsilon", "delta", "rounds", "clients", "run_dir"}
    assert summary["rounds"] == 4 and summary["clients"] == 4 and summary["delta"] == 1e-5
    assert 0.7 < summary["accuracy"] <= 1.0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2, 3, 4]
    assert all(len(x["trained"]) == 4 for x in lines)
    assert (run / "model.npz").exists() and (run / "checkpoint.json").exists()
    # a simulation says so (fedready audit-privacy re-runs only those; a ServerApp of `flwr run` records "ServerApp")
    assert json.loads((run / "config.json").read_text())["launched_by"] == "fedready simulate"


def test_ledger_composes_over_rounds_and_is_reproducible(reference_run):
    summary, run = reference_run
    ledger = Ledger.load(run / "ledger.json")
    assert ledger.epsilon_after_round(1) < ledger.epsilon_after_round(4)
    assert summary["epsilon"] == pytest.approx(ledger.epsilon)
    # the budget is met at the end of the planned training and never exceeded: every release composed
    assert all(0.97 < eps <= 1.0 for eps in ledger.client_epsilon().values())
    for client, series in recompute(ledger).items():
        recorded = [e.epsilon for e in ledger.entries if e.client == client]
        assert [eps for _, eps in series] == pytest.approx(recorded, rel=0.01)
    assert {e.round for e in ledger.entries} == {1, 2, 3, 4, 5}  # round 5: the post-training query
    levels = [e.level for e in ledger.entries]
    # each client: its noisy row count once, 4 training rounds, and the one post-training query
    assert (levels.count("count"), levels.count("sample"), levels.count("query")) == (4, 16, 4)
    assert summary["epsilon_parts"]["sample"] < summary["epsilon"] <= 1.0
    assert summary["private"] is True and summary["caveats"] == []


def test_budget_refusal_is_a_normal_event(tmp_path, ray_tmp):
    # Budget planned over 2 rounds, 3 asked for: every client declines round 3.
    proc = _fedready("simulate", *SMALL, "--rounds", "3", "--budget-rounds", "2", "--out", str(tmp_path),
                     "--name", "b", "--json", tmp=ray_tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = Ledger.load(tmp_path / "b" / "ledger.json")
    assert {d["round"] for d in ledger.declines} == {3}
    assert {d["reason"] for d in ledger.declines} == {"budget-exhausted"}
    assert len(ledger.declines) == 4
    assert ledger.epsilon <= 1.0
    last = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 3 and last["trained"] == [] and len(last["declined"]) == 4


def test_killed_run_resumes_to_the_same_ledger_and_an_equally_good_model(reference_run, tmp_path, ray_tmp):
    ref_summary, ref = reference_run
    run = tmp_path / "k"
    cmd = [sys.executable, "-m", "fedready.cli", "simulate", *SMALL, "--rounds", "4", "--out", str(tmp_path),
           "--name", "k", "--json"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(ray_tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            ck = run / "checkpoint.json"
            if ck.exists() and json.loads(ck.read_text())["round"] >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no round-2 checkpoint within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
        proc.wait()
        _stop_ray(ray_tmp)
    killed_at = json.loads((run / "checkpoint.json").read_text())["round"]
    assert killed_at < 4, "the run finished before the kill; nothing was resumed"
    assert not (run / "summary.json").exists()

    tmp2 = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    try:
        res = _fedready("simulate", "--resume", str(run), "--json", tmp=tmp2)
    finally:
        _stop_ray(tmp2)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    resumed, reference = Ledger.load(run / "ledger.json"), Ledger.load(ref / "ledger.json")

    def key(e):
        return (e.round, e.client, e.level, e.steps, e.accountant)

    # nothing charged twice, nothing missing: the same releases as an uninterrupted run
    assert sorted(map(key, resumed.entries)) == sorted(map(key, reference.entries))
    assert len(set(map(key, resumed.entries))) == len(resumed.entries)
    assert summary["epsilon"] == pytest.approx(ref_summary["epsilon"], rel=0.01) and summary["epsilon"] <= 1.0
    # DP noise is secret, so the model differs from the reference run, but not in quality
    assert abs(summary["accuracy"] - ref_summary["accuracy"]) < 0.03
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_no_dp_run_reports_no_epsilon(tmp_path, ray_tmp):
    proc = _fedready("simulate", *SMALL, "--rounds", "2", "--no-dp", "--out", str(tmp_path), "--name", "n",
                     "--json", tmp=ray_tmp)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["dp"] is False and summary["epsilon"] is None
    assert Ledger.load(Path(summary["run_dir"]) / "ledger.json").entries == []


def test_ledger_command_verifies_and_catches_tampering(reference_run, tmp_path):
    _, run = reference_run
    ok = subprocess.run([sys.executable, "-m", "fedready.cli", "ledger", str(run), "--json"], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and sorted(c["client"] for c in report["clients"]) == ["0", "1", "2", "3"]
    assert all(c["other_releases"] == {"count": 1, "query": 1} for c in report["clients"])
    # the independent cross-check, on demand: the same one the run computed once, at its end
    cross = report["dp_accounting"]
    summary = json.loads((run / "summary.json").read_text())
    assert cross["rdp"] == pytest.approx(summary["epsilon_dp_accounting"]["rdp"], rel=1e-9)
    assert cross["pld"] <= cross["rdp"] and cross["rdp"] == pytest.approx(report["epsilon"], rel=0.02)
    data = json.loads((run / "ledger.json").read_text())
    data["entries"][0]["epsilon"] *= 0.5  # under-report one client's first round
    bad = tmp_path / "ledger.json"
    bad.write_text(json.dumps(data))
    res = subprocess.run([sys.executable, "-m", "fedready.cli", "ledger", str(bad)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 1 and "DIFFERS" in res.stderr


def test_every_key_a_simulated_client_sends_is_in_the_readme_table(reference_run):
    from tests.wire_table import sent_keys, unlisted

    _, run = reference_run
    wire = run.parent / "wire.jsonl"
    sent = sent_keys(wire)
    assert {"arrays.*", "metrics.num-examples", "metrics.counts/sex", "metrics.profile/scores"} <= sent
    assert "metrics.train-loss" not in sent  # under DP the loss stays on the client unless released on purpose
    assert not unlisted(wire), f"keys the README does not list: {sorted(unlisted(wire))}"
