"""SecAgg+ end to end: the server-side code only ever holds the aggregate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

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


def test_server_never_holds_an_individual_update(tmp_path):
    summary, run = _run(tmp_path, "sa", "--secagg")
    assert summary["secagg"] and summary["rounds_completed"] == 4
    audit = [json.loads(x) for x in (run / "audit.jsonl").read_text().splitlines()]
    handed = [a for a in audit if a["event"] == "secagg-aggregate"]
    assert len(handed) == 4
    # each round the server-side strategy received one vector for all four clients: the aggregate
    assert all(len(a["clients"]) == 4 and len(a["received"]) == 1 for a in handed)
    # ... and it is none of the clients' own plaintext updates (each client keeps its last one locally,
    # beside the server's run folder, never inside it)
    assert not any("last_update" in p.name for p in run.rglob("*"))
    local = run.with_name(run.name + ".clients")
    updates = {c: load_npz((local / c / "last_update.npz").read_bytes()) for c in "0123"}
    metrics = {c: json.loads((local / c / "last_metrics.json").read_text()) for c in "0123"}
    assert handed[-1]["received"][0] not in {arrays_digest(u) for u in updates.values()}
    # the aggregate is the example-weighted mean of the masked updates, up to quantisation
    weights = np.array([metrics[c]["num-examples"] for c in "0123"], dtype=np.float64)
    model = load_npz((run / "model.npz").read_bytes())
    for name, value in model.items():
        mean = sum(w * updates[c][name] for w, c in zip(weights, "0123", strict=True)) / weights.sum()
        np.testing.assert_allclose(value, mean, atol=1e-3)
    ledger = json.loads((run / "ledger.json").read_text())
    assert {e["round"] for e in ledger["entries"]} == {1, 2, 3, 4} and ledger["epsilon"] <= 1.0


def test_secagg_costs_no_accuracy(tmp_path):
    with_sa, _ = _run(tmp_path, "with", "--secagg")
    without, _ = _run(tmp_path, "without")
    assert abs(with_sa["accuracy"] - without["accuracy"]) <= 0.01
    # the same training spend; the plain run also answered the post-training query (SecAgg+ runs answer it
    # when `fedready evaluate` asks), whose share of the budget was reserved in both
    assert with_sa["epsilon_parts"]["sample"] == pytest.approx(without["epsilon_parts"]["sample"])
    assert with_sa["epsilon"] <= without["epsilon"] <= 1.0


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
