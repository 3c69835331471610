"""Why 1: an emergency rollback (or promotion) of stable silently skipped the canary cohort."""

from __future__ import annotations

from fedready.registry import EdgeAgent, in_canary

IDS = [f"shop-{i:02d}" for i in range(30)]


def test_stable_rollback_that_skips_the_canary_cohort_now_reaches_every_device(fleet, keys, tmp_path):
    reg, server, _ = fleet  # stable 1.0.0, 2.0.0 published
    # the pipeline's state: canary at 100%, then stable 2.0.0 is promoted and found to be bad
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=100)
    reg.promote("2.0.0", channel="stable", approver="ops")
    agents = {d: EdgeAgent(tmp_path / d) for d in IDS}

    def fleet_versions() -> dict[str, str]:
        return {d: a.update(repo=server.url, channel="stable", device_id=d, root=reg.metadata_dir / "1.root.json",
                            public_key=keys["operator"][1]).version for d, a in agents.items()}  # fmt: skip

    assert set(fleet_versions().values()) == {"2.0.0"}
    doc = reg.rollback(channel="stable", approver="ops", reason="bad release")
    # before: every device sat in the 100% cohort and kept taking canary's 2.0.0; now the rollback wins
    assert doc.version == "1.0.0" and set(fleet_versions().values()) == {"1.0.0"}
    canary = reg.channel("canary")
    assert canary.paused and canary.paused_reason == "stable rolled back from 2.0.0"
    status = reg.status()
    assert status["canary_state"] == "paused" and status["devices"]["stable_inside_cohort"] is None
    assert status["devices"]["canary_devices"] == "1.0.0"


def test_stable_promotion_reaches_cohort_devices_while_a_canary_runs(fleet, keys, tmp_path):
    reg, server, _ = fleet
    reg.promote("2.0.0", channel="canary", approver="ops", rollout_percent=50)
    cohort = [d for d in IDS if in_canary(d, 50)]
    agent = EdgeAgent(tmp_path / cohort[0])
    update = dict(repo=server.url, channel="stable", device_id=cohort[0], root=reg.metadata_dir / "1.root.json",
                  public_key=keys["operator"][1])  # fmt: skip
    assert agent.update(**update).version == "2.0.0"
    reg.promote("1.0.0", channel="stable", approver="ops", force=True, reason="hotfix build")
    res = agent.update(**update)
    assert (res.version, res.channel) == ("1.0.0", "stable")  # the newer decision (stable's) wins
    assert reg.status()["canary_state"] == "behind-stable"
