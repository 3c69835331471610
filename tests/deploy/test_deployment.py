"""End to end on 127.0.0.1: a SuperLink with TLS and node authentication, three SuperNodes with CSV shards.

One federation is started for the whole module (it takes most of a minute); the tests read
what it left behind: the server's run folder, each client's ledger and audit log.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready import constants as K
from fedready.cli import app
from fedready.datasets.adult import load_adult
from fedready.deploy.certs import generate_certificates
from fedready.deploy.launch import flower_env, flwr_connection, superlink_command, supernode_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "fedready" / "datasets" / "adult" / "schema.toml").read_text(encoding="utf-8")
CONTRACT = """
[contract]
min_rows = 500
max_missing_rate = 0.02
missing_rate = { workclass = 0.1, occupation = 0.1, native-country = 0.1 }
min_positive_rate = 0.05
max_positive_rate = 0.6
"""
ROWS = 1500
LIMITED_EPSILON = 0.75  # the coordinator asks 1.0 over 3 rounds: round 1 spends ~0.65, round 2 would reach ~0.84


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_csv(path: Path, rows: np.ndarray, *, blank_age: float = 0.0) -> None:
    table = load_adult("train")
    names = list(table.columns)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for k, i in enumerate(rows):
            row = [str(table.columns[n][i]) for n in names]
            if k < blank_age * len(rows):
                row[names.index("age")] = ""
            w.writerow(row)


def _descendants(pids: set[int]) -> set[int]:
    """Every live process whose ancestry includes one of ``pids`` (Flower spawns detached helpers)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), set(pids)
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found |= kids
        frontier = kids
    return found


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop what this module started: each process, then any helper it spawned (by pid)."""
    tree = _descendants({p.pid for p in procs})
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    base = tmp_path_factory.mktemp("fed")
    home = base / "flwr-home"
    certs = generate_certificates(base / "certs", hosts=["127.0.0.1", "localhost"], nodes=4)
    schema = base / "schema.toml"
    schema.write_text(SCHEMA + CONTRACT, encoding="utf-8")
    rows = np.random.default_rng(0).permutation(32561)
    orgs = []
    for i in range(3):
        org = base / f"org-{i + 1}"
        org.mkdir()
        _write_csv(org / "local.csv", rows[i * ROWS : (i + 1) * ROWS], blank_age=0.3 if i == 2 else 0.0)
        eps = LIMITED_EPSILON if i == 1 else 5.0
        (org / "limits.toml").write_text(f"max_epsilon = {eps}\nmax_delta = 1e-5\n", encoding="utf-8")
        orgs.append(org)
    env = {**flower_env(), "FLWR_HOME": str(home)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    flwr_connection(home, name="fedready", address=address, root_cert=certs.ca_cert)
    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = base / f"{name}.log"
        p = subprocess.Popen(cmd, env=env, cwd=base, stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start("superlink", superlink_command(certs=base / "certs", database=base / "state.db", host="127.0.0.1",
                                             port=port))  # fmt: skip
        flwr = str(Path(env["PATH"].split(os.pathsep)[0]) / "flwr")
        for _ in range(60):  # registering a node needs the SuperLink up
            reg = subprocess.run([flwr, "supernode", "register", str(certs.node_keys[0][1]), "fedready"], env=env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            if "registered" in reg.stdout:
                break
            time.sleep(1)
        assert "registered" in reg.stdout, reg.stdout + reg.stderr
        for _priv, pub in certs.node_keys[1:3]:
            reg = subprocess.run([flwr, "supernode", "register", str(pub), "fedready"], env=env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert "registered" in reg.stdout, reg.stdout + reg.stderr
        for i, org in enumerate(orgs):
            start(f"org-{i + 1}", supernode_command(
                superlink=address, root_cert=certs.ca_cert, key=certs.node_keys[i][0], data=org / "local.csv",
                schema=schema, limits=org / "limits.toml", client_id=i, port=_free_port()))  # fmt: skip
        intruder = start("intruder", supernode_command(
            superlink=address, root_cert=certs.ca_cert, key=certs.node_keys[3][0], data=orgs[0] / "local.csv",
            schema=schema, limits=orgs[0] / "limits.toml", client_id=9, port=_free_port(), max_wait=10))  # fmt: skip
        run_dir = base / "run"
        run = subprocess.run(
            [flwr, "run", ".", "fedready", "--stream", "--run-config",
             f"num-clients=3 rounds=3 epsilon=1.0 delta=1e-5 run-dir='{run_dir}'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        intruder_rc = intruder.wait(timeout=60)
    finally:
        _stop(procs)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"run_dir": run_dir, "orgs": orgs, "intruder_rc": intruder_rc, "logs": logs, "schema": schema}


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_private_training_over_tls_leaves_model_ledger_and_audit_logs_on_all_sides(federation):
    run_dir = federation["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["accuracy"] > 0.7
    assert (run_dir / "model.npz").exists()
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert 0 < ledger["epsilon"] <= 1.0
    events = _audit(run_dir / "audit.jsonl")
    fingerprints = [e for e in events if e["event"] == "client-data"]
    assert {e["client"] for e in fingerprints} == {"0", "1", "2"}
    assert all(e["rows"] == ROWS and e["data_sha256"].startswith("sha256:") for e in fingerprints)
    for org in federation["orgs"]:
        assert (org / "audit.jsonl").exists() and (org / "ledger.json").exists() or org.name == "org-3"
        assert CliRunner().invoke(app, ["audit", "verify", str(org / "audit.jsonl")]).exit_code == 0
    assert CliRunner().invoke(app, ["audit", "verify", str(run_dir / "audit.jsonl")]).exit_code == 0


def test_unregistered_node_key_is_refused(federation):
    assert federation["intruder_rc"] != 0
    assert "Failed to activate SuperNode" in federation["logs"]["intruder"].read_text()


def test_contract_violating_client_declines_with_a_readable_reason_while_others_train(federation):
    run_dir = federation["run_dir"]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert {"client": "2", "reason": K.CONTRACT_VIOLATION} in m["declined"]
        assert "0" in m["trained"]
    server_side = [e for e in _audit(run_dir / "audit.jsonl") if e["event"] == "client-declined" and e["client"] == "2"]
    assert server_side and server_side[0]["detail"] == "age:missing-rate"  # the check's name, no counts, no rows
    client_side = [e for e in _audit(federation["orgs"][2] / "audit.jsonl") if e["event"] == "round-declined"]
    assert "column 'age': 450 of 1500 rows (30.0%) missing, limit 2.0%" in client_side[0]["report"]
    out = CliRunner().invoke(app, ["contract", "check", "--data", str(federation["orgs"][2] / "local.csv"),
                                   "--schema", str(federation["schema"])])  # fmt: skip
    assert out.exit_code == 1 and "column 'age': 450 of 1500 rows" in out.output


def test_client_with_a_lower_local_limit_trains_only_up_to_it(federation):
    org = federation["orgs"][1]
    releases = json.loads((org / "ledger.json").read_text())["releases"]
    assert [r["round"] for r in releases] == [1]
    assert releases[-1]["epsilon"] <= LIMITED_EPSILON
    declined = [e for e in _audit(org / "audit.jsonl") if e["event"] == "round-declined"]
    assert [e["round"] for e in declined] == [2, 3] and all(e["reason"] == K.BUDGET_EXHAUSTED for e in declined)
    # the unconstrained client trained in every round
    assert [r["round"] for r in json.loads((federation["orgs"][0] / "ledger.json").read_text())["releases"]] == [
        1,
        2,
        3,
    ]


def test_editing_one_audit_line_makes_verify_fail(federation, tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = (federation["run_dir"] / "audit.jsonl").read_text().splitlines()
    entry = json.loads(lines[2])
    entry["round"] = 99
    lines[2] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(app, ["audit", "verify", str(log)])
    assert out.exit_code == 1 and "line 4" in out.output
