"""SecAgg+ end to end: the server-side code only ever holds the aggregate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from fedready.client.state import read_kept_reply
from fedready.modelio import arrays_digest, load_npz

pytestmark = pytest.mark.slow

ARGS = ["--clients", "4", "--rounds", "4", "--partitioner", "iid", "--local-steps", "2"]


def _run(tmp_path, name, *extra):
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
    try:
        proc = subprocess.run([sys.executable, "-m", "fedready.cli", "simulate", *ARGS, *extra, "--out",
                               str(tmp_path), "--name", name, "--json"], capture_output=True, text=True,
                              timeout=900, env=env)  # fmt: skip
    finally:
        subprocess.run(["pkill", "-9", "-f", tmp], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), tmp_path / name


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory):
    """One DP + SecAgg+ run, read by the tests that need it."""
    return _run(tmp_path_factory.mktemp("sa"), "sa", "--secagg")


def test_server_never_holds_an_individual_update(secagg_run):
    summary, run = secagg_run
    assert summary["secagg"] and summary["rounds_completed"] == 4
    audit = [json.loads(x) for x in (run / "audit.jsonl").read_text().splitlines()]
    handed = [a for a in audit if a["event"] == "secagg-aggregate"]
    assert len(handed) == 4
    # each round the server-side strategy received one vector for all four clients: the aggregate
    assert all(len(a["clients"]) == 4 and len(a["received"]) == 1 for a in handed)
    # ... and it is none of the clients' own plaintext updates (each client keeps its last one locally,
    # beside the server's run folder, never inside it)
    assert not any(p.name in ("state.npz", "last_update.npz") for p in run.rglob("*"))
    local = run.with_name(run.name + ".clients")
    kept = {c: read_kept_reply(local / c) for c in "0123"}
    updates = {c: kept[c][0] for c in "0123"}
    metrics = {c: kept[c][1] for c in "0123"}
    assert handed[-1]["received"][0] not in {arrays_digest(u) for u in updates.values()}
    # the aggregate is the example-weighted mean of the masked updates, up to quantisation
    weights = np.array([metrics[c]["num-examples"] for c in "0123"], dtype=np.float64)
    model = load_npz((run / "model.npz").read_bytes())
    for name, value in model.items():
        mean = sum(w * updates[c][name] for w, c in zip(weights, "0123", strict=True)) / weights.sum()
        np.testing.assert_allclose(value, mean, atol=1e-3)
    ledger = json.loads((run / "ledger.json").read_text())
    assert {e["round"] for e in ledger["entries"] if e["level"] != "query"} == {1, 2, 3, 4}
    assert ledger["epsilon"] <= 1.0


def test_secagg_query_sum_carries_the_distributed_noise_once(secagg_run):
    summary, run = secagg_run
    fed = json.loads((run / "federated_eval.json").read_text())
    secure = fed["secure_sum"]
    # 4 clients asked, t = 3: each added a 1/3 share, the sum of 4 carries 4/3 of one client's whole variance
    assert secure["clients"] == secure["shares"] == 4 and secure["threshold"] == 3 and not secure["refused"]
    assert secure["share_std"] == pytest.approx(fed["noise_std"] / 3**0.5) and secure["tau"] == 0.0
    assert fed["sum_noise_std"] == pytest.approx((4 / 3) ** 0.5 * fed["noise_std"])  # not sqrt(4) x it
    # the intervals of the summed fairness use that std; the per-client accuracy counts keep their local noise
    fairness = [e for k, e in fed["estimates"].items() if k.startswith("federated.fairness.")]
    assert fairness and all(e["noise_std"] == pytest.approx(fed["sum_noise_std"]) for e in fairness)
    assert len(fed["per_client_counts"]) == 4 and fed["accuracy_noise_std"] > 0
    assert all(float(v) == round(float(v)) for t in fed["counts"].values() for row in t for v in row)  # integers
    # the ledger charges each client's answer as what it was: the planned multiplier, noted as a share
    ledger = json.loads((run / "ledger.json").read_text())
    query = [e for e in ledger["entries"] if e["level"] == "query"]
    assert sorted(e["client"] for e in query) == ["0", "1", "2", "3"] and {e["round"] for e in query} == {5}
    assert all(e["noise_multiplier"] == pytest.approx(12.0) and "1/3 share" in e["note"] for e in query)
    assert 0 < summary["epsilon"] <= 1.0 and ledger["epsilon"] == pytest.approx(summary["epsilon"])
    profile = json.loads((run / "reference_profile.json").read_text())
    assert profile["noise"]["mechanism"] == "discrete-gaussian"
    assert profile["noise"]["scale"] == pytest.approx(fed["sum_noise_std"])


def test_secagg_costs_no_accuracy(secagg_run, tmp_path):
    with_sa, _ = secagg_run
    without, _ = _run(tmp_path, "without")
    assert abs(with_sa["accuracy"] - without["accuracy"]) <= 0.01
    # the same training spend, and the same charge for the post-training query (through SecAgg+ with
    # distributed noise, or in the clear with local noise): its share of the budget was reserved in both
    assert with_sa["epsilon_parts"]["sample"] == pytest.approx(without["epsilon_parts"]["sample"])
    assert with_sa["epsilon_parts"]["query"] == pytest.approx(without["epsilon_parts"]["query"])
    assert with_sa["epsilon"] <= 1.0 and without["epsilon"] <= 1.0


def test_secagg_with_client_side_clipping_dp(tmp_path):
    from tests.wire_table import sent_keys, unlisted

    summary, run = _run(tmp_path, "sadp", "--secagg", "--client-dp", "client-fixed", "--client-noise-multiplier",
                        "0.5", "--client-clip", "2.0", "--client-delta", "1e-3", "--wire-log",
                        str(tmp_path / "wire.jsonl"))  # fmt: skip
    # what a SecAgg+ client sends: protocol messages and its (noisy, charged) metrics, all listed in the README
    assert "secaggplus_configs.masked_params" in sent_keys(tmp_path / "wire.jsonl")
    assert not unlisted(tmp_path / "wire.jsonl")
    assert summary["client_epsilon"] > 0 and summary["rounds_completed"] == 4
    entries = [e for e in json.loads((run / "ledger.json").read_text())["entries"] if e["level"] == "client"]
    assert [e["round"] for e in entries] == [1, 2, 3, 4]


def test_secagg_client_level_budget_is_enforced(tmp_path):
    summary, run = _run(tmp_path, "sabud", "--secagg", "--client-dp", "client-fixed", "--client-epsilon", "3",
                        "--budget-rounds", "2", "--client-delta", "1e-3")  # fmt: skip
    assert summary["rounds_completed"] == 2 and "client-level budget" in summary["stopped"]
    assert summary["client_epsilon"] <= 3.0
