"""The federated reference profile: clients' counts summed by the server, noise charged to the ledger.

An in-memory grid hands each query to the real client handler (``handle_query``), so the whole
server and client path runs without Ray.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedready import constants as K
from fedready.config import make_config
from fedready.datasets.adult import load_adult
from fedready.errors import IntegrityError
from fedready.evaluation.federated import handle_query
from fedready.modelio import save_npz
from fedready.monitoring import PROFILE_FILE, Counts, compare, count_rows
from fedready.monitoring.federated import local_profile_counts, resolve_noise, run_profile_query, sum_profiles
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.ledger import Ledger, LedgerEntry, recompute


class InMemoryGrid:
    """The part of Flower's ``Grid`` the queries use, answering with the real client handler."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.sent: list[str] = []

    def get_node_ids(self):
        return list(range(1, self.cfg.num_clients + 1))

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            self.sent.append(str(m.content[K.CONFIG][K.QUERY]))
            replies.append(handle_query(m, self.cfg, m.metadata.dst_node_id - 1))
        return replies


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    # Flower stamps every Message with the running task's identity; fake one for the in-memory grid.
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


@pytest.fixture(scope="module")
def cfg():
    return make_config(num_clients=3, partitioner="iid", rounds=1, seed=0)


@pytest.fixture
def run_dir(tmp_path, cfg):
    from fedready.federation import task_of

    model = task_of(cfg).model(seed=0)
    (tmp_path / "model.npz").write_bytes(save_npz({k: v.numpy() for k, v in model.state_dict().items()}))
    led = Ledger(run_id="r", delta=cfg.delta, target_epsilon=1.0, accountant="rdp")
    eps = compose_epsilon([(1.0, 0.1, 3)], delta=cfg.delta)
    led.record(LedgerEntry(round=1, client="0", noise_multiplier=1.0, sample_rate=0.1, steps=3, accountant="rdp",
                           delta=cfg.delta, epsilon=eps))  # fmt: skip
    led.save(tmp_path / "ledger.json")
    return tmp_path


def test_clients_counts_sum_to_the_pooled_histograms(cfg, run_dir):
    from fedready.federation import client_train_columns
    from fedready.modelio import load_npz

    arrays = load_npz((run_dir / "model.npz").read_bytes())
    replies = [local_profile_counts(cfg, pid, arrays) for pid in range(cfg.num_clients)]
    total = sum_profiles(replies)
    pooled = {k: np.concatenate([client_train_columns(cfg, p)[k] for p in range(3)]) for k in ("age", "sex")}
    rows = sum(len(client_train_columns(cfg, p)["age"]) for p in range(3))
    assert total.rows == rows == total.labels.sum()
    direct = count_rows(_age_sex_schema(), pooled, scores=np.zeros(rows), predictions=np.zeros(rows, int))
    assert np.array_equal(total.features["age"], direct.features["age"])
    assert np.array_equal(total.features["sex"], direct.features["sex"])
    bad = dict(replies[0])
    bad[K.PROFILE_PREFIX + "scores"] = [-5] * 10
    with pytest.raises(IntegrityError, match="malformed profile counts"):
        sum_profiles([bad])


def _age_sex_schema():
    from fedready.datasets.adult import adult_schema

    s = adult_schema()
    return s.model_copy(update={"ignore": [c.name for c in s.columns if c.name not in ("age", "sex")]})


def test_noisy_profile_is_charged_to_the_ledger_and_still_detects_a_shift(cfg, run_dir):
    mech, eps = resolve_noise({}, cfg)
    assert (mech, eps) == ("gaussian", 1.0)  # on by default when DP is on
    grid = InMemoryGrid(cfg)
    doc = run_profile_query(grid, cfg, run_dir, mechanism=mech, epsilon=eps)
    assert grid.sent == [K.QUERY_PROFILE] * 3 and doc["clients"] == 3
    assert json.loads((run_dir / PROFILE_FILE).read_text()) == doc
    noisy = Counts.from_dict(doc["counts"])
    assert not all(float(v).is_integer() for v in noisy.features["age"])  # noise was added
    led = Ledger.load(run_dir / "ledger.json")
    (entry,) = [e for e in led.entries if e.level == "profile"]
    assert entry.client == "profile" and entry.epsilon == pytest.approx(doc["noise"]["epsilon"]) and entry.epsilon <= 1
    model_eps = compose_epsilon([(1.0, 0.1, 3)], delta=cfg.delta)
    assert led.profile_epsilon == entry.epsilon and led.epsilon == model_eps  # the model's epsilon is unchanged
    assert recompute(led)["profile"][-1][1] == pytest.approx(entry.epsilon, rel=0.01)
    from fedready.cli import check_ledger

    assert check_ledger(run_dir)["ok"]  # `fedready ledger` recomputes the profile's epsilon too
    # the same model is not profiled (and charged) twice
    assert run_profile_query(grid, cfg, run_dir, mechanism=mech, epsilon=eps) is None
    assert len(Ledger.load(run_dir / "ledger.json").entries) == 2

    test = load_adult("test")
    aged = {**test.columns, "age": np.array([f"{float(a) + 10:g}" for a in test.columns["age"]])}
    from fedready.datasets.adult import adult_schema

    s = np.full(len(test), 0.3)
    window = count_rows(adult_schema(), aged, scores=s, predictions=np.zeros(len(test), int))
    assert any(b["feature"] == "age" for b in compare(doc, window)["breaches"])


def test_laplace_profile_is_recomputed_as_pure_dp(cfg, run_dir):
    doc = run_profile_query(InMemoryGrid(cfg), cfg, run_dir, mechanism="laplace", epsilon=0.5)
    assert doc["noise"]["mechanism"] == "laplace" and doc["noise"]["delta"] == 0.0
    led = Ledger.load(run_dir / "ledger.json")
    assert led.profile_epsilon == pytest.approx(0.5)
    assert recompute(led)["profile"] == [(1, pytest.approx(0.5))]


def test_profile_asks_the_same_seeded_share_as_the_group_count_evaluation(cfg, run_dir):
    # with thousands of simulated clients, asking every one would cost more than the training itself
    sampled = cfg.model_copy(update={"fraction_evaluate": 0.5})
    grid = InMemoryGrid(sampled)
    doc = run_profile_query(grid, sampled, run_dir, mechanism="none", epsilon=1.0)
    assert grid.sent == [K.QUERY_PROFILE] * 2 and doc["clients"] == 2  # ceil(0.5 * 3)
    assert Counts.from_dict(doc["counts"]).rows < sum_profiles(
        [local_profile_counts(cfg, p, _arrays(run_dir)) for p in range(3)]).rows  # fmt: skip


def _arrays(run_dir):
    from fedready.modelio import load_npz

    return load_npz((run_dir / "model.npz").read_bytes())


def test_group_counts_and_profile_travel_in_one_message_per_client(cfg, run_dir):
    from fedready.evaluation.federated import FEDERATED_FILE
    from fedready.server.app import final_queries

    grid = InMemoryGrid(cfg)
    summary = final_queries(grid, cfg, run_dir, {})
    assert grid.sent == [f"{K.QUERY_GROUP_COUNTS},{K.QUERY_PROFILE}"] * 3  # one round trip, not two
    assert summary["clients_answered"] == 3 and (run_dir / FEDERATED_FILE).exists()
    assert json.loads((run_dir / PROFILE_FILE).read_text())["clients"] == 3
    # asked again for the same model (fedready evaluate): the profile is not asked for, nor charged, twice
    grid.sent.clear()
    final_queries(grid, cfg, run_dir, {})
    assert grid.sent == [K.QUERY_GROUP_COUNTS] * 3
    assert len([e for e in Ledger.load(run_dir / "ledger.json").entries if e.level == "profile"]) == 1
