"""The federated reference profile: clients' counts summed by the server, noise charged to the ledger.

An in-memory grid hands each query to the real client handler (``handle_query``), so the whole
server and client path runs without Ray.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedready import constants as K
from fedready.client.queries import local_profile_counts
from fedready.config import make_config
from fedready.datasets.adult import load_adult
from fedready.errors import IntegrityError
from fedready.modelio import save_npz
from fedready.monitoring import PROFILE_FILE, Counts, compare, count_rows
from fedready.monitoring.federated import sum_profiles
from fedready.privacy.ledger import Ledger, recompute
from fedready.server.app import run_profile_query


class InMemoryGrid:
    """The part of Flower's ``Grid`` the queries use, answering with the real client handler.

    Each node keeps one Flower ``Context`` (its privacy state persists between queries), and its
    state folder sits beside the run folder, as in a simulation.
    """

    def __init__(self, cfg, run_dir) -> None:
        from flwr.app import Context, RecordDict

        self.cfg = cfg
        self.run_dir = run_dir
        self.sent: list[str] = []
        self.replies: list = []
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": n - 1}, state=RecordDict(),
                                    run_config={}) for n in self.get_node_ids()}  # fmt: skip

    def get_node_ids(self):
        return list(range(1, self.cfg.num_clients + 1))

    def send_and_receive(self, messages, timeout=None):
        from fedready.client.app import handle_query

        overrides = {**self.cfg.to_run_config(), K.RUN_DIR: str(self.run_dir)}
        replies = []
        for m in messages:
            self.sent.append(str(m.content[K.CONFIG][K.QUERY]))
            replies.append(handle_query(m, self.contexts[m.metadata.dst_node_id], overrides))
        self.replies += replies
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
    led.charge(round=1, client="0", level="sample", noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=cfg.delta)
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
    bad[K.PROFILE_PREFIX + "scores"] = [-5] * 10  # negative, and claimed exact (no noise std)
    with pytest.raises(IntegrityError, match="malformed profile counts"):
        sum_profiles([bad])


def _age_sex_schema():
    from fedready.datasets.adult import adult_schema

    s = adult_schema()
    return s.model_copy(update={"ignore": [c.name for c in s.columns if c.name not in ("age", "sex")]})


def test_each_client_noises_its_profile_and_is_charged_and_it_still_detects_a_shift(cfg, run_dir):
    grid = InMemoryGrid(cfg, run_dir)
    doc = run_profile_query(grid, cfg, run_dir)
    assert grid.sent == [K.QUERY_PROFILE] * 3 and doc["clients"] == 3
    assert json.loads((run_dir / PROFILE_FILE).read_text()) == doc
    arrays = _arrays(run_dir)
    for reply in grid.replies:  # the server never saw an exact count: every histogram left the client noised
        sent = dict(reply.content[K.METRICS])
        exact = local_profile_counts(cfg, int(sent[K.PARTITION_ID]), arrays)
        std = sent[K.QUERY_NOISE_STD]
        assert std == pytest.approx(cfg.query_noise * np.sqrt(len([k for k in exact if k.startswith("profile/")])))
        for key in (k for k in exact if k.startswith(K.PROFILE_PREFIX)):
            diff = np.asarray(sent[key]) - np.asarray(exact[key])
            assert np.all(diff != 0) and np.abs(diff).max() < 6 * std
    assert doc["noise"]["client_std"] == pytest.approx(grid.replies[0].content[K.METRICS][K.QUERY_NOISE_STD])
    led = Ledger.load(run_dir / "ledger.json")
    queries = [e for e in led.entries if e.level == "query"]
    assert sorted(e.client for e in queries) == ["0", "1", "2"]  # charged to each client, not to the server
    assert all((e.noise_multiplier, e.sample_rate, e.steps) == (cfg.query_noise, 1.0, 1) for e in queries)
    # client 0 also trained: its headline epsilon composes both releases (RDP), more than either alone
    assert led.client_epsilon()["0"] > max(led.client_epsilon(("sample",))["0"], led.client_epsilon(("query",))["0"])
    assert led.epsilon == led.client_epsilon()["0"]
    assert recompute(led)["0"][-1][1] == pytest.approx(led.client_epsilon()["0"], rel=1e-9)
    from fedready.cli import check_ledger

    assert check_ledger(run_dir)["ok"]  # `fedready ledger` recomputes the query releases too
    # the same model is not profiled (and charged) twice
    assert run_profile_query(grid, cfg, run_dir) is None
    assert len(Ledger.load(run_dir / "ledger.json").entries) == len(led.entries)

    test = load_adult("test")
    aged = {**test.columns, "age": np.array([f"{float(a) + 10:g}" for a in test.columns["age"]])}
    from fedready.datasets.adult import adult_schema

    s = np.full(len(test), 0.3)
    window = count_rows(adult_schema(), aged, scores=s, predictions=np.zeros(len(test), int))
    assert any(b["feature"] == "age" for b in compare(doc, window)["breaches"])


def test_a_query_past_the_budget_is_declined_by_the_client(cfg, run_dir):
    tight = cfg.model_copy(update={"epsilon": 0.05})  # a query at multiplier 12 alone spends more than this
    grid = InMemoryGrid(tight, run_dir)
    assert run_profile_query(grid, tight, run_dir) is None  # nobody answered: no profile, nothing charged
    assert all(int(r.content[K.METRICS][K.DECLINED]) == 1 for r in grid.replies)
    assert not [e for e in Ledger.load(run_dir / "ledger.json").entries if e.level == "query"]


def test_profile_asks_the_same_seeded_share_as_the_group_count_evaluation(cfg, run_dir):
    # with thousands of simulated clients, asking every one would cost more than the training itself
    sampled = cfg.model_copy(update={"fraction_evaluate": 0.5, "dp": False})
    grid = InMemoryGrid(sampled, run_dir)
    doc = run_profile_query(grid, sampled, run_dir)
    assert grid.sent == [K.QUERY_PROFILE] * 2 and doc["clients"] == 2  # ceil(0.5 * 3)
    assert Counts.from_dict(doc["counts"]).rows < sum_profiles(
        [local_profile_counts(cfg, p, _arrays(run_dir)) for p in range(3)]).rows  # fmt: skip


def _arrays(run_dir):
    from fedready.modelio import load_npz

    return load_npz((run_dir / "model.npz").read_bytes())


def test_group_counts_and_profile_travel_in_one_message_per_client(cfg, run_dir):
    from fedready.server.app import final_queries
    from fedready.server.queries import FEDERATED_FILE

    grid = InMemoryGrid(cfg, run_dir)
    summary = final_queries(grid, cfg, run_dir, {})
    assert grid.sent == [f"{K.QUERY_GROUP_COUNTS},{K.QUERY_PROFILE}"] * 3  # one round trip, not two
    assert summary["clients_answered"] == 3 and (run_dir / FEDERATED_FILE).exists()
    assert json.loads((run_dir / PROFILE_FILE).read_text())["clients"] == 3
    # one release per client for both answers together
    assert len([e for e in Ledger.load(run_dir / "ledger.json").entries if e.level == "query"]) == 3
    # asked again for the same model (fedready evaluate): the profile is not asked for again, and the new
    # group counts are a second release, charged under a round of their own
    grid.sent.clear()
    final_queries(grid, cfg, run_dir, {})
    assert grid.sent == [K.QUERY_GROUP_COUNTS] * 3
    queries = [e for e in Ledger.load(run_dir / "ledger.json").entries if e.level == "query"]
    assert len(queries) == 6 and len({e.round for e in queries}) == 2


def test_schema_handshake_answers_the_digest_only_and_refuses_a_mismatch(cfg, run_dir):
    from flwr.app import ConfigRecord

    from fedready.federation import task_of
    from fedready.server.app import schema_handshake

    class OneForeignClient(InMemoryGrid):
        def send_and_receive(self, messages, timeout=None):
            replies = super().send_and_receive(messages, timeout)
            replies[-1].content[K.CONFIG] = ConfigRecord({K.SCHEMA_DIGEST: "sha256:" + "0" * 64})
            return replies

    grid = InMemoryGrid(cfg, run_dir)
    assert schema_handshake(grid, cfg, run_dir) == []
    assert grid.sent == [K.QUERY_SCHEMA] * 3
    digest = task_of(cfg).schema.digest()
    for reply in grid.replies:  # the public digest and the client's number, nothing about its rows
        assert dict(reply.content[K.CONFIG]) == {K.SCHEMA_DIGEST: digest}
        assert dict(reply.content[K.METRICS]).keys() == {K.PARTITION_ID}
    assert not list(run_dir.glob("*.clients/*/*"))  # nothing charged, no state written
    (refused,) = schema_handshake(OneForeignClient(cfg, run_dir), cfg, run_dir)
    assert refused["client"] == "2" and refused["reason"].startswith(K.SCHEMA_MISMATCH)


def test_final_queries_do_not_wait_for_a_refused_client(cfg, run_dir, monkeypatch):
    import fedready.server.queries as federated
    from fedready.server.app import _FilteredGrid, final_queries

    def no_waiting(_seconds):
        raise AssertionError("the query waited for a node that was refused before round 1")

    monkeypatch.setattr(federated.time, "sleep", no_waiting)
    grid = InMemoryGrid(cfg, run_dir)
    final_queries(_FilteredGrid(grid, {3}), cfg, run_dir, {}, refused=1)  # node 3 refused: two of three are asked
    assert len(grid.sent) == 2
    with pytest.raises(AssertionError, match="waited"):  # without the refused count it would wait for a third
        final_queries(_FilteredGrid(grid, {3}), cfg, run_dir, {})
