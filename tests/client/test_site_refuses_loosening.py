"""A site refuses a run config that loosens its privacy unless its own limits.toml allows it (no federation)."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedready import constants as K
from fedready.client.app import Decline, handle_query, local_update
from fedready.config import make_config
from fedready.federation import task_of
from tests.conftest import synthetic_rows, write_task


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):  # what a Flower process has set
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


@pytest.fixture
def site_files(tmp_path):
    return write_site_files(tmp_path)


def write_site_files(tmp_path):
    """A site's CSV and schema (with its contract) under ``tmp_path``: ``(tmp_path, data, schema)``."""
    task = write_task(tmp_path / "task", rows=400, test_rows=50, seed=3)
    data = tmp_path / "local.csv"
    data.write_text("\n".join(synthetic_rows(400, 3)) + "\n", encoding="utf-8")
    schema = task["schema"]  # the data holds up to 5% missing scores: its contract says so
    schema.write_text(schema.read_text() + "\n[contract]\nmissing_rate = { score = 0.1 }\n", encoding="utf-8")
    return tmp_path, data, schema


def _context(tmp_path, data, schema, allow: str = "") -> Context:
    limits = tmp_path / "limits.toml"
    limits.write_text(f"max_epsilon = 5.0\nmax_delta = 1e-5\n{allow}", encoding="utf-8")
    node = {"partition-id": 0, K.NODE_DATA: str(data), K.NODE_SCHEMA: str(schema), K.NODE_LIMITS: str(limits)}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


@pytest.mark.parametrize("key", ["insecure_seeded_noise", "exact_evaluation", "release_train_loss"])
def test_a_coordinator_cannot_switch_off_an_organisations_privacy(site_files, key):
    tmp_path, data, schema = site_files
    cfg = make_config(data=str(data), schema=str(schema), **{key: True})
    ctx = _context(tmp_path, data, schema)
    model = {k: v.detach().numpy() for k, v in task_of(cfg).model(seed=0).state_dict().items()}
    out = local_update(cfg, ctx, "/tmp/run-x", 1, model)
    assert isinstance(out, Decline) and out.reason == K.LOCAL_LIMIT
    assert f"{key.replace('_', '-')}=true" in out.detail and f"allow_{key}" in out.detail
    assert not (tmp_path / "ledger.json").exists()  # nothing released, not even the noisy count
    # the handshake is refused too, with the schema digest (public) and nothing else
    msg = Message(RecordDict({K.CONFIG: ConfigRecord({K.QUERY: K.QUERY_SCHEMA})}), dst_node_id=1,
                  message_type=MessageType.EVALUATE)  # fmt: skip
    reply = handle_query(msg, ctx, {k.replace("_", "-"): v for k, v in cfg.to_run_config().items()})
    assert int(reply.content[K.METRICS][K.DECLINED]) == 1 and reply.content[K.CONFIG][K.REASON] == K.LOCAL_LIMIT
    assert K.NUM_EXAMPLES not in reply.content[K.METRICS]
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (refused,) = [e for e in events if e["event"] == "run-refused"]  # the organisation's own record
    assert refused["reason"] == K.LOCAL_LIMIT and refused["stage"] == "handshake"


def test_an_organisation_that_allows_a_loosening_trains_with_it(site_files):
    tmp_path, data, schema = site_files
    cfg = make_config(data=str(data), schema=str(schema), release_train_loss=True, batch_size=128)
    ctx = _context(tmp_path, data, schema, allow="allow_release_train_loss = true\n")
    model = {k: v.detach().numpy() for k, v in task_of(cfg).model(seed=0).state_dict().items()}
    out = local_update(cfg, ctx, "/tmp/run-y", 1, model)
    assert not isinstance(out, Decline), out
    assert K.TRAIN_LOSS in out[1]
