"""Why 4: anyone who can POST to one canary device fed its monitor, and its alerts alone rolled the canary back."""

from __future__ import annotations

import json
import urllib.request

import numpy as np

from fedready.datasets.adult import load_adult
from fedready.registry import EdgeAgent, EdgeServer, ServeConfig, monitor


def _shifted_rows(n: int) -> list[dict[str, str]]:
    t = load_adult("test").take(np.arange(n))
    rows = [dict(zip(t.columns, vals, strict=True)) for vals in zip(*t.columns.values(), strict=True)]
    return [{**r, "age": f"{float(r['age']) + 30:g}"} for r in rows]


def _poison(agent: EdgeAgent, requests: int = 6, rows: int = 500) -> None:
    """The attacker's POSTs: batches of age-shifted rows to the device's `edge serve`."""
    server = EdgeServer(agent.home, ServeConfig(port=0))
    server.start()
    try:
        for _ in range(requests):
            body = json.dumps(_shifted_rows(rows)).encode()
            json_type = {"Content-Type": "application/json"}
            req = urllib.request.Request(f"{server.url}/predict", data=body, headers=json_type)
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200
    finally:
        server.stop()


def test_one_poisoned_canary_device_cannot_roll_the_canary_back(fleet, keys, tmp_path):
    reg, server, _ = fleet
    reg.promote("1.0.0", channel="canary", approver="ops", force=True, reason="baseline")
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=50)
    devices = []
    for i in range(3):
        agent = EdgeAgent(tmp_path / f"canary-{i}")
        agent.update(repo=server.url, channel="canary", device_id=f"canary-{i}", root=reg.metadata_dir / "1.root.json",
                     public_key=keys["operator"][1])  # fmt: skip
        reg.enrol(**agent.enrolment(), approver="ops")  # its alerts count only when signed by its enrolled key
        devices.append(agent)
    alerts = tmp_path / "alerts.jsonl"
    _poison(devices[0])
    for _ in range(5):  # cron runs the monitor again and again on the poisoned window
        monitor(devices[0].home, window=3000, alerts=alerts)
    lines = [json.loads(x) for x in alerts.read_text().splitlines()]
    assert len(lines) >= 5 and {a["device_id"] for a in lines} == {"canary-0"}
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert (decision["rolled_back"], decision["devices"], decision["needed"]) == (False, 1, 3)
    assert decision["breaches"] == len(lines) and reg.channel("canary").version == "2.0.0"

    # three devices seeing the same shift is a real signal: it rolls back (each device counts once)
    for agent in devices[1:]:
        _poison(agent, requests=1)
        monitor(agent.home, window=500, alerts=alerts)
    # with a fleet of 100 devices the 50% cohort holds 50: 10% of it (5 devices) is the bar, not 3
    held = reg.auto_rollback(channel="canary", alerts=alerts, fleet_size=100)
    assert (held["rolled_back"], held["devices"], held["needed"]) == (False, 3, 5)
    decision = reg.auto_rollback(channel="canary", alerts=alerts)
    assert (decision["rolled_back"], decision["devices"], decision["replaced"]) == (True, 3, "2.0.0")
    assert reg.channel("canary").version == "1.0.0"
    audit = [json.loads(x) for x in (reg.path / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["event"] == "auto-rollback" and audit[-1]["device_ids"] == ["canary-0", "canary-1", "canary-2"]
