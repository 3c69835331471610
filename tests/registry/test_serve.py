"""``edge serve``: micro-batching, the uncertainty band and review queue, hot swap after an update."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from fedready.errors import ConfigError
from fedready.registry import EdgeAgent, ServeConfig
from tests.registry.test_edge_attacks import ROW


def _post(url, payload):
    req = urllib.request.Request(f"{url}/predict", data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def device(tmp_path, artifact_v2, keys):
    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact_v2, public_key=keys["operator"][1])
    return agent


def _rows(n):
    return [{**ROW, "age": str(20 + i % 50), "hours-per-week": str(10 + i % 60)} for i in range(n)]


def test_concurrent_requests_are_batched_and_answered_like_direct_predictions(device, serve):
    server = serve(max_batch=16, max_wait_ms=50)
    rows = _rows(48)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda r: _post(server.url, r), rows))
    direct = device.predictor().predict(rows)
    assert [a[0] for a in answers] == [200] * 48
    assert [a[1]["probability"] for a in answers] == [d["probability"] for d in direct]
    assert max(server.batch_sizes) > 1 and max(server.batch_sizes) <= 16
    assert sum(k * v for k, v in server.batch_sizes.items()) == 48


def test_batch_size_one_never_batches(serve):
    server = serve(max_batch=1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: _post(server.url, r), _rows(16)))
    assert set(server.batch_sizes) == {1}


def test_uncertain_rows_are_deferred_to_the_review_queue(device, serve, tmp_path):
    rows = _rows(20)
    proba = sorted(r["probability"] for r in device.predictor().predict(rows))
    low, high = proba[5], proba[14]  # the middle half is "uncertain"
    queue = tmp_path / "review.jsonl"
    server = serve(defer_low=low, defer_high=high, review_queue=queue)
    status, body = _post(server.url, rows)
    assert status == 200
    deferred = [r for r in body["results"] if r["decision"] == "deferred"]
    assert len(deferred) == 10 and all(low <= r["probability"] <= high for r in deferred)
    decided = [r for r in body["results"] if r["decision"] != "deferred"]
    assert all(r["decision"] == r["label"] for r in decided)
    queued = [json.loads(line) for line in queue.read_text().splitlines()]
    assert len(queued) == 10 and all(q["row"] in rows and q["version"] == "2.0.0" for q in queued)


def test_malformed_row_fails_alone(serve):
    server = serve(max_batch=8, max_wait_ms=100)
    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(lambda r: _post(server.url, r), [{**ROW, "age": "abc"}, ROW])
    assert bad[0] == 422 and "age" in bad[1]["error"]
    assert good[0] == 200


def test_update_is_picked_up_without_restart(device, serve, artifact):
    server = serve()
    assert _post(server.url, ROW)[1]["version"] == "2.0.0"
    device.install(artifact)
    assert _post(server.url, ROW)[1]["version"] == "1.0.0"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch": 0}, "max-batch"),
        ({"max_wait_ms": -1}, "max-wait-ms"),
        ({"defer_low": 0.4}, "defer-low"),
        ({"defer_low": 0.6, "defer_high": 0.4}, "defer-low"),
        ({"port": 70000}, "port"),
    ],  # fmt: skip
)
def test_invalid_serve_options_are_refused(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ServeConfig(**kwargs)
