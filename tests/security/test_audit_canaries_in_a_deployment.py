"""The canary-injection attack: use the privacy audit to put canaries into real organisations' training.

The audit's canaries reach a run only through Python hooks a local simulation passes (the server's
``strategy_hook``, the clients' ``optimizer_hooks``). A coordinator cannot send them: the apps that
``flwr run`` and SuperNodes load are built without hooks, a deployed client (a site with its own
CSV) never calls one even if it were given one, and ``fedready audit-privacy`` refuses a run folder a
deployment wrote (``launched_by`` in its config.json, deployed clients in its audit log). Each refusal
is checked against a positive control that shows the path is live.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from fedready import constants as K
from fedready.cli import app
from fedready.client.app import local_update
from fedready.config import make_config
from fedready.federation import task_of


class _Spy:
    """An optimiser hook that records that it was reached (the attack's probe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, partition_id: int, server_round: int) -> None:
        self.calls.append((partition_id, server_round))
        return None


def _context(node_config: dict, run_dir) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={K.RUN_DIR: run_dir})


def test_canary_injection_into_a_deployed_client_is_refused(binary_task, tmp_path):
    cfg = make_config(data=str(binary_task["data"]), schema=str(binary_task["schema"]), test=str(binary_task["test"]),
                      num_clients=2, rounds=1, local_steps=1, batch_size=64)  # fmt: skip
    arrays = {k: v.detach().numpy() for k, v in task_of(cfg).model().state_dict().items()}
    simulated = _Spy()
    out = local_update(cfg, _context({"partition-id": 0}, str(tmp_path / "sim")), str(tmp_path / "sim"), 1, arrays,
                       optimizer_hooks=simulated)  # fmt: skip
    assert simulated.calls == [(0, 1)] and not hasattr(out, "reason")  # positive control: a simulated client
    (tmp_path / "limits.toml").write_text(f"max_epsilon = 5.0\nmax_delta = 1e-5\nstate_dir = '{tmp_path / 'st'}'\n")
    own = tmp_path / "own.csv"  # the organisation's own rows (complete: they pass the schema's contract)
    own.write_text("\n".join(ln for ln in binary_task["data"].read_text().splitlines()[:400] if "?" not in ln) + "\n")
    site = {"partition-id": 0, K.NODE_DATA: str(own), K.NODE_SCHEMA: str(binary_task["schema"]),
            K.NODE_LIMITS: str(tmp_path / "limits.toml")}  # fmt: skip
    deployed = _Spy()
    out = local_update(cfg, _context(site, str(tmp_path / "dep")), str(tmp_path / "dep"), 1, arrays,
                       optimizer_hooks=deployed)  # fmt: skip
    assert deployed.calls == [] and not hasattr(out, "reason")  # it trained on its own rows, untouched
    updated, _ = out
    assert any(not np.array_equal(updated[k], arrays[k]) for k in arrays)


def test_an_audit_of_a_deployment_run_folder_is_refused(tmp_path):
    flwr_run = tmp_path / "flwr-123"  # what a run launched with `flwr run` against a SuperLink leaves
    flwr_run.mkdir()
    (flwr_run / "summary.json").write_text("{}")
    result = CliRunner().invoke(app, ["audit-privacy", "--run", str(flwr_run)])
    assert result.exit_code == 2 and "never sends canaries to real clients" in result.output
    # a ServerApp started by `flwr run` records the run's config.json too, marked as such
    (flwr_run / "config.json").write_text(
        json.dumps({"config": make_config().model_dump(), "launched_by": "ServerApp"})
    )
    result = CliRunner().invoke(app, ["audit-privacy", "--run", str(flwr_run)])
    assert result.exit_code == 2 and "flwr run" in result.output and "never sends canaries" in result.output
    deployed = tmp_path / "deployed"  # a run folder whose audit log holds deployed clients' data fingerprints
    deployed.mkdir()
    (deployed / "config.json").write_text(json.dumps({"config": make_config().model_dump()}))
    (deployed / "audit.jsonl").write_text(json.dumps({"event": "client-data", "round": 1, "client": "3"}) + "\n")
    result = CliRunner().invoke(app, ["audit-privacy", "--run", str(deployed)])
    assert result.exit_code == 2 and "deployed clients" in result.output
    assert not list(tmp_path.glob("audit-*"))


@pytest.mark.parametrize("level", ["client", "sample"])
def test_simulated_run_folders_are_accepted(level, tmp_path):
    # positive control of the refusal above: a simulation's folder passes the check (the run itself is not started)
    from fedready.simulations.audit import check_auditable, check_simulated_run

    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "config.json").write_text(
        json.dumps({"config": make_config().model_dump(), "launched_by": "fedready simulate"})
    )
    (sim / "audit.jsonl").write_text(json.dumps({"event": "round-finished", "round": 1}) + "\n")
    check_simulated_run(sim)
    check_auditable(make_config(), level)
