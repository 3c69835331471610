"""End to end on 127.0.0.1: a SuperLink with TLS and node authentication, SuperNodes with CSV shards.

The data set is a synthetic table (tests/conftest.py), not the embedded one: the server reads its schema
and its public holdout from the run config. One federation is started for the whole module (a few
minutes); the tests read what it left behind: the server's run folder, each client's ledger and audit log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedready import constants as K
from fedready.cli import app
from fedready.deploy.certs import generate_certificates
from fedready.deploy.launch import client_environment, flower_env, flwr_connection, superlink_command, supernode_command
from tests.conftest import synthetic_rows, write_task

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = """
[contract]
min_rows = 300
max_missing_rate = 0.02
missing_rate = { score = 0.1 }
min_positive_rate = 0.05
max_positive_rate = 0.95
"""
ROWS = 640  # 576 training rows: the noisy count stays within one batch size of 128 (5 batches)
LIMITED_EPSILON = 0.75  # asked 1.0 over 3 rounds: count + round 1 ~0.61, round 2 would reach ~0.80, the query ~0.68


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_csv(path: Path, seed: int, *, blank_age: float = 0.0) -> None:
    lines = synthetic_rows(ROWS, seed)
    if blank_age:
        head, rows = lines[0], lines[1:]
        cut = int(blank_age * len(rows))
        rows = [",".join(["", *r.split(",")[1:]]) if i < cut else r for i, r in enumerate(rows)]
        lines = [head, *rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
    certs = generate_certificates(base / "certs", hosts=["127.0.0.1", "localhost"], nodes=5)
    task = write_task(base / "task", rows=600, test_rows=800, seed=100)  # the server's holdout is task["test"]
    schema = base / "schema.toml"
    schema.write_text(task["schema"].read_text(encoding="utf-8") + CONTRACT, encoding="utf-8")
    # an organisation that prepared its data with another schema (one more colour): refused before round 1
    foreign_schema = base / "foreign.toml"
    foreign_schema.write_text(schema.read_text(encoding="utf-8").replace('"blue"]', '"blue", "black"]'),
                              encoding="utf-8")  # fmt: skip
    assert foreign_schema.read_text() != schema.read_text()
    orgs = []
    for i in range(4):
        org = base / f"org-{i + 1}"
        org.mkdir()
        _write_csv(org / "local.csv", seed=i, blank_age=0.3 if i == 2 else 0.0)
        eps = LIMITED_EPSILON if i == 1 else 5.0
        allow = "allow_release_train_loss = true\n" if i == 0 else ""  # org-1 accepts that one loosening
        (org / "limits.toml").write_text(f"max_epsilon = {eps}\nmax_delta = 1e-5\n{allow}", encoding="utf-8")
        orgs.append(org)
    env = {**flower_env(), "FLWR_HOME": str(home)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    flwr_connection(home, name="fedready", address=address, root_cert=certs.ca_cert)
    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        logs[name] = base / f"{name}.log"
        p = subprocess.Popen(cmd, env={**env, **(extra_env or {})}, cwd=base, stdout=logs[name].open("w"),
                             stderr=subprocess.STDOUT)  # fmt: skip
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
        for _priv, pub in certs.node_keys[1:4]:
            reg = subprocess.run([flwr, "supernode", "register", str(pub), "fedready"], env=env,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert "registered" in reg.stdout, reg.stdout + reg.stderr
        for i, org in enumerate(orgs):  # as `fedready client` starts them: behind the bundle guard, with a wire log
            start(f"org-{i + 1}", supernode_command(
                superlink=address, root_cert=certs.ca_cert, key=certs.node_keys[i][0], data=org / "local.csv",
                schema=foreign_schema if i == 3 else schema, limits=org / "limits.toml", client_id=i,
                port=_free_port(), wire_log=org / "wire.jsonl"), client_environment(org / "limits.toml"))  # fmt: skip
        intruder = start("intruder", supernode_command(
            superlink=address, root_cert=certs.ca_cert, key=certs.node_keys[4][0], data=orgs[0] / "local.csv",
            schema=schema, limits=orgs[0] / "limits.toml", client_id=9, port=_free_port(), max_wait=10))  # fmt: skip
        run_dir = base / "run"
        task_config = f"schema='{schema}' test='{task['test']}' batch-size=128 model='logreg' round-timeout=120.0"
        run = subprocess.run(
            [flwr, "run", ".", "fedready", "--stream", "--run-config",
             f"num-clients=4 rounds=3 epsilon=1.0 delta=1e-5 run-dir='{run_dir}' {task_config}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        intruder_rc = intruder.wait(timeout=60)
        # A coordinator that edits fedready/__init__.py in its bundle: every SuperNode must refuse it
        # before any of its code runs (the edit writes a marker from any guarded client process).
        evil = _tampered_project(base / "evil-app", base / "pwned")
        tampered = subprocess.run(
            [flwr, "run", str(evil), "fedready", "--stream", "--run-config",
             f"num-clients=4 rounds=1 epsilon=1.0 delta=1e-5 run-dir='{base / 'evil-run'}' {task_config}"],
            cwd=base, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        # A coordinator that loosens the organisations' privacy in its run config (issue 21): each key in turn.
        # What each organisation sent during that run is the part of its wire log the run appended.
        loosened = {}
        for key in LOOSENING:
            marks = {org.name: _lines(org / "wire.jsonl") for org in orgs}
            proc = subprocess.run(
                [flwr, "run", ".", "fedready", "--stream", "--run-config",
                 f"num-clients=4 rounds=1 epsilon=1.0 delta=1e-5 run-dir='{base / key}' {key}=true {task_config}"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            sent = {org.name: _lines(org / "wire.jsonl")[len(marks[org.name]):] for org in orgs}
            loosened[key] = {"proc": proc, "run_dir": base / key, "sent": sent}
    finally:
        _stop(procs)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"run_dir": run_dir, "orgs": orgs, "intruder_rc": intruder_rc, "logs": logs, "schema": schema.resolve(),
            "tampered": tampered, "marker": base / "pwned", "evil_run": base / "evil-run",
            "loosened": loosened}  # fmt: skip


LOOSENING = ("insecure-seeded-noise", "exact-evaluation", "release-train-loss")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _tampered_project(folder: Path, marker: Path) -> Path:
    """This project's pyproject and README, plus a bundled fedready/__init__.py with one line added."""
    folder.mkdir()
    (folder / "README.md").write_text("tampered\n", encoding="utf-8")
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = project.replace('fab-include = ["/README.md"]', 'fab-include = ["/README.md", "fedready/__init__.py"]')
    assert "fedready/__init__.py" in project
    (folder / "pyproject.toml").write_text(project, encoding="utf-8")
    (folder / "fedready").mkdir()
    original = (ROOT / "fedready" / "__init__.py").read_text(encoding="utf-8")
    payload = (f"\nimport os as _os\nif _os.environ.get('FEDREADY_GUARD_AUDIT'):\n"
               f"    open({str(marker)!r} + str(_os.getpid()), 'w').write('coordinator code ran here')\n")  # fmt: skip
    (folder / "fedready" / "__init__.py").write_text(original + payload, encoding="utf-8")
    return folder


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_private_training_over_tls_leaves_model_ledger_and_audit_logs_on_all_sides(federation):
    run_dir = federation["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3 and summary["accuracy"] > 0.6
    # flwr run wrote the run's records, so every other command works on a deployed run
    assert json.loads((run_dir / "config.json").read_text())["config"]["schema"] == str(federation["schema"])
    assert json.loads((run_dir / "schema.json").read_text())["name"] == "synthetic-2"
    assert (run_dir / "model.npz").exists()
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert 0 < ledger["epsilon"] <= 1.0
    events = _audit(run_dir / "audit.jsonl")
    fingerprints = [e for e in events if e["event"] == "client-data"]
    assert {e["client"] for e in fingerprints} == {"0", "1", "2"}  # org-4 was refused before round 1
    # the server learns a salted commitment, never the data's digest or its row count
    assert all(set(e) >= {"schema_digest", "data_commitment"} and "rows" not in e and "data_sha256" not in e
               for e in fingerprints)  # fmt: skip
    shas = {f"sha256:{__import__('hashlib').sha256((org / 'local.csv').read_bytes()).hexdigest()}"
            for org in federation["orgs"]}  # fmt: skip
    assert not shas & {e["data_commitment"] for e in fingerprints}
    for org in federation["orgs"][:3]:
        assert (org / "audit.jsonl").exists() and (org / "ledger.json").exists() or org.name == "org-3"
        assert CliRunner().invoke(app, ["audit", "verify", str(org / "audit.jsonl")]).exit_code == 0
    assert CliRunner().invoke(app, ["audit", "verify", str(run_dir / "audit.jsonl")]).exit_code == 0


def test_the_privacy_audit_refuses_the_deployed_run(federation):
    # canaries never go near real clients: the run folder says a ServerApp started it, and the audit refuses it
    from fedready.errors import ConfigError
    from fedready.simulations.audit import check_simulated_run

    run_dir = federation["run_dir"]
    assert json.loads((run_dir / "config.json").read_text())["launched_by"] == "ServerApp"
    with pytest.raises(ConfigError, match="never sends canaries to real clients"):
        check_simulated_run(run_dir)


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
    # by default not even the failed check's name leaves (share_contract_report = true in limits.toml sends it)
    assert server_side and "details stay on the client" in server_side[0]["detail"]
    client_side = [e for e in _audit(federation["orgs"][2] / "audit.jsonl") if e["event"] == "round-declined"]
    assert "column 'age': 192 of 640 rows (30.0%) missing, limit 2.0%" in client_side[0]["report"]
    out = CliRunner().invoke(app, ["contract", "check", "--data", str(federation["orgs"][2] / "local.csv"),
                                   "--schema", str(federation["schema"])])  # fmt: skip
    assert out.exit_code == 1 and "column 'age': 192 of 640 rows" in out.output


def test_client_with_a_lower_local_limit_trains_only_up_to_it(federation):
    org = federation["orgs"][1]
    releases = json.loads((org / "ledger.json").read_text())["releases"]
    assert [r["round"] for r in releases if r["level"] == "sample"] == [1]
    assert [r["level"] for r in releases].count("count") == 1  # its noisy row count, once
    assert max(r["epsilon"] for r in releases) <= LIMITED_EPSILON
    declined = [e for e in _audit(org / "audit.jsonl") if e["event"] == "round-declined"
                and e["run"] == federation["run_dir"].name]  # fmt: skip
    assert [e["round"] for e in declined] == [2, 3] and all(e["reason"] == K.BUDGET_EXHAUSTED for e in declined)
    # the unconstrained client trained in every round
    first = json.loads((federation["orgs"][0] / "ledger.json").read_text())["releases"]
    assert [r["round"] for r in first if r["level"] == "sample" and r["run"] == federation["run_dir"].name] == [1, 2, 3]


def test_editing_one_audit_line_makes_verify_fail(federation, tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = (federation["run_dir"] / "audit.jsonl").read_text().splitlines()
    entry = json.loads(lines[2])
    entry["round"] = 99
    lines[2] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(app, ["audit", "verify", str(log)])
    assert out.exit_code == 1 and "line 4" in out.output


def test_a_client_with_another_schema_is_refused_before_round_1(federation):
    run_dir = federation["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    (refused,) = summary["refused_clients"]
    assert refused["client"] == "3" and refused["reason"].startswith(K.SCHEMA_MISMATCH)
    assert refused["client_schema_digest"] != refused["server_schema_digest"]
    assert refused["client_schema_digest"] in refused["reason"] and refused["server_schema_digest"] in refused["reason"]
    events = _audit(run_dir / "audit.jsonl")
    first_round = min(i for i, e in enumerate(events) if e["event"] == "round-finished")
    refusals = [i for i, e in enumerate(events) if e["event"] == "client-refused"]
    assert refusals and max(refusals) < first_round  # before round 1
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("3" not in r["trained"] and not any(d["client"] == "3" for d in r["declined"]) for r in metrics)
    assert not (federation["orgs"][3] / "ledger.json").exists()  # it never released anything


def test_a_run_where_every_client_fails_is_reported_failed(federation):
    tampered = federation["tampered"]  # every SuperNode refused the bundle: no round aggregated
    # `flwr run --stream` exits 0 whatever the ServerApp did; the ServerApp's error is in the stream,
    assert "no round aggregated any update" in tampered.stdout + tampered.stderr
    summary = json.loads((federation["evil_run"] / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["accuracy"] is None
    # and `fedready status` gives scripts the exit code
    out = CliRunner().invoke(app, ["status", str(federation["evil_run"])])
    assert out.exit_code == 1 and "bundle refused" in out.output
    assert CliRunner().invoke(app, ["status", str(federation["run_dir"])]).exit_code == 0


def test_deployed_clients_answer_the_post_training_queries_noised_and_charged(federation):
    run_dir = federation["run_dir"]
    evaluation = json.loads((run_dir / "federated_eval.json").read_text())
    assert evaluation["clients_answered"] == 2 and evaluation["clients_declined"] == 1  # org-3: contract
    assert evaluation["noise_std"] > 0 and not evaluation["exact"]
    assert json.loads((run_dir / "reference_profile.json").read_text())["clients"] == 2
    for org in federation["orgs"][:2]:  # each answer is in the organisation's own lifetime ledger and audit log
        releases = json.loads((org / "ledger.json").read_text())["releases"]  # lifetime: this run's, then others'
        assert [r["level"] for r in releases if r["run"] == run_dir.name].count("query") == 1
        assert [e for e in _audit(org / "audit.jsonl") if e["event"] == "query-answered"]
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert {e["client"] for e in ledger["entries"] if e["level"] == "query"} == {"0", "1"}
    assert 0 < ledger["epsilon"] <= 1.0


def test_a_bundle_with_edited_code_is_refused_by_every_supernode_before_it_runs(federation):
    assert not list(federation["marker"].parent.glob(federation["marker"].name + "*"))  # no client ran it
    for org in federation["orgs"]:
        refused = [e for e in _audit(org / "audit.jsonl") if e["event"] == "bundle-refused"]
        assert refused, f"{org.name} has no bundle-refused entry"
        assert refused[0]["path"] == "fedready/__init__.py"
        assert refused[0]["bundle_digest"] != refused[0]["installed_digest"]
        accepted = [e for e in _audit(org / "audit.jsonl") if e["event"] == "bundle-accepted"]
        assert accepted  # the honest bundle (no code at all) was accepted
    metrics = [json.loads(x) for x in (federation["evil_run"] / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(r["trained"] == [] and len(r["failed"]) == 4 for r in metrics)


def test_every_key_a_deployed_client_sends_is_in_the_readme_table(federation):
    from tests.wire_table import sent_keys, unlisted

    for org in federation["orgs"]:
        assert sent_keys(org / "wire.jsonl")  # the log recorded what left
        unknown = unlisted(org / "wire.jsonl")
        assert not unknown, f"{org.name} sent keys the README does not list: {sorted(unknown)}"


@pytest.mark.parametrize("key", LOOSENING)
def test_a_run_config_that_loosens_privacy_is_refused_by_every_organisation_that_does_not_allow_it(federation, key):
    from tests.wire_table import unlisted

    run = federation["loosened"][key]
    summary = json.loads((run["run_dir"] / "summary.json").read_text())
    allowed = {"org-1"} if key == "release-train-loss" else set()  # org-1's limits.toml allows that one
    refused = {r["client"]: r["reason"] for r in summary["refused_clients"]}
    for i, org in enumerate(federation["orgs"]):
        sent = [json.loads(line) for line in run["sent"][org.name]]
        keys = {f"{name}.{k}" for m in sent for name, rec in m["records"].items() for k in rec["keys"]}
        entries = [e for e in _audit(org / "audit.jsonl") if e.get("run") == run["run_dir"].name]
        if org.name in allowed:
            assert str(i) not in refused and any(e["event"] == "update-released" for e in entries)
            assert "metrics.train-loss" in keys  # what it agreed to send
            continue
        # refused before anything was released: its own audit log says so (at the handshake, or at round 1 if its
        # handshake reply came after the coordinator's timeout), the coordinator's summary too
        refusals = [e for e in entries if e["event"] in ("run-refused", "round-declined", "query-declined")]
        assert refusals and all(e["reason"] == K.LOCAL_LIMIT and f"{key}=true" in e["detail"] for e in refusals)
        assert not [e for e in entries if e["event"].endswith("-released")]
        declined = summary["problems"]["reasons"].get(f"declined: {K.LOCAL_LIMIT}", 0)
        assert refused.get(str(i), "").startswith(f"{K.LOCAL_LIMIT}: the run asks for {key}=true") or declined
        # ... and the wire shows it: no model update, no count of any kind
        assert sent and not {k for k in keys if k.startswith(("arrays.", "fitres."))}
        assert not {k for k in keys if k in ("metrics.num-examples", "metrics.val-rows", "metrics.val-correct")
                    or k.startswith(("metrics.counts/", "metrics.profile/"))}  # fmt: skip
        tmp = run["run_dir"] / f"wire-{org.name}.jsonl"
        tmp.write_text("\n".join(run["sent"][org.name]) + "\n", encoding="utf-8")
        assert not unlisted(tmp)
    if not allowed:  # nobody trained: a failed run, and the reason says why
        assert summary["status"] == "failed" and K.LOCAL_LIMIT in summary["first_client_error"]
    else:
        assert summary["status"] == "completed"
