"""A fleet of 200 devices converges on the version the channel rules predict, after every operation.

The rules (README, "Which version a device runs"; :mod:`fedready.registry._channels`): a device
following ``stable`` takes the canary's version only while the canary is live (changed after
stable, not paused) and the device's id hashes into the rollout share; a device following
``canary`` takes the canary's version while it is live, else stable's.
"""

from __future__ import annotations

import json

import pytest

from fedready.errors import ConfigError
from fedready.registry import EdgeAgent, Registry, in_canary, package_run
from tests.registry.conftest import StaticServer, write_fake_run

pytestmark = pytest.mark.slow

IDS = [f"fleet-{i:03d}" for i in range(200)]
CANARY_FOLLOWERS = set(IDS[:20])  # opted in to the canary channel; the other 180 follow stable


@pytest.fixture(scope="module")
def artifact_v3(keys, tmp_path_factory):
    run = write_fake_run(tmp_path_factory.mktemp("runs-v3") / "fake3", seed=3)
    (run / "evaluation.json").write_text(json.dumps({"passed": True}))
    path, _ = package_run(run, key=keys["operator"][0], version="3.0.0", out=tmp_path_factory.mktemp("art-v3"))
    return path


def _expect(*, outside: str, inside: str, canary: str, percent: float) -> dict[str, str]:
    """What the documentation predicts for each device id."""
    out = {}
    for d in IDS:
        if d in CANARY_FOLLOWERS:
            out[d] = canary
        else:
            out[d] = inside if in_canary(d, percent) else outside
    return out


def test_every_device_converges_after_each_channel_operation(tmp_path, artifact, artifact_v2, artifact_v3, keys):
    reg = Registry.init(tmp_path / "registry")
    for art in (artifact, artifact_v2, artifact_v3):
        reg.publish(art, public_key=keys["operator"][1])
    # the state `fedready pipeline` leaves: canary and stable on 1.0.0, canary at 100%
    for channel in ("canary", "stable"):
        reg.promote("1.0.0", channel=channel, approver="ops", force=True, reason="baseline")
    server = StaticServer(reg.repo)
    agents = {d: EdgeAgent(tmp_path / "devices" / d) for d in IDS}

    def converge() -> dict[str, str]:
        got = {}
        for d, agent in agents.items():
            channel = "canary" if d in CANARY_FOLLOWERS else "stable"
            got[d] = agent.update(repo=server.url, channel=channel, device_id=d, root=reg.metadata_dir / "1.root.json",
                                  public_key=keys["operator"][1]).version  # fmt: skip
            assert agent.state()["active"] == got[d]
        return got

    def check(step: str, *, outside: str, inside: str, canary: str, percent: float) -> None:
        expected = _expect(outside=outside, inside=inside, canary=canary, percent=percent)
        got = converge()
        wrong = {d: (got[d], expected[d]) for d in IDS if got[d] != expected[d]}
        assert not wrong, (step, dict(list(wrong.items())[:5]), f"{len(wrong)} device(s) off")
        devices = reg.status()["devices"]  # what `registry status` says each group runs
        groups = (devices["stable_outside_cohort"], devices["stable_inside_cohort"], devices["canary_devices"])
        live = devices["cohort_percent"]
        assert groups == (outside if live < 100 else None, inside if live > 0 else None, canary), step

    try:
        check("baseline", outside="1.0.0", inside="1.0.0", canary="1.0.0", percent=100)
        assert 20 < sum(in_canary(d, 20) for d in IDS if d not in CANARY_FOLLOWERS) < 60  # a real cohort

        reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=20)
        check("promote canary 20%", outside="1.0.0", inside="2.0.0", canary="2.0.0", percent=20)

        reg.rollback(channel="canary", approver="ops", reason="canary alerts")
        check("rollback canary", outside="1.0.0", inside="1.0.0", canary="1.0.0", percent=20)

        reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=20)
        reg.set_rollout(channel="canary", rollout_percent=100, approver="ops")
        check("rollout 100%", outside="2.0.0", inside="2.0.0", canary="2.0.0", percent=100)

        # a stable promotion is newer than the canary: it reaches the cohort too (Why 1 of issue 16)
        reg.promote("3.0.0", channel="stable", approver="ops")
        assert reg.status()["canary_state"] == "behind-stable"
        check("promote stable", outside="3.0.0", inside="3.0.0", canary="3.0.0", percent=100)

        # rolling stable back from 3.0.0 reaches every device; a canary on 3.0.0 is paused with it
        reg.promote("3.0.0", channel="canary", approver="ops", rollout_percent=20)
        reg.rollback(channel="stable", approver="ops", reason="field reports")
        assert reg.channel("canary").paused and reg.status()["canary_state"] == "paused"
        check("rollback stable", outside="1.0.0", inside="1.0.0", canary="1.0.0", percent=20)
        with pytest.raises(ConfigError, match="paused"):
            reg.set_rollout(channel="canary", rollout_percent=50, approver="ops")
    finally:
        server.stop()
