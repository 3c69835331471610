"""Options that let one machine simulate thousands of clients, with unchanged defaults."""

import pytest

from fedready.config import make_config
from fedready.errors import ConfigError
from fedready.federation import client_shard, partition_sizes
from fedready.server.queries import query_nodes
from fedready.simulations.engine import check_config


def test_ten_thousand_clients_need_min_client_rows():
    with pytest.raises(ConfigError, match="min-client-rows"):
        check_config(make_config(num_clients=10_000, partitioner="iid"))
    cfg = make_config(num_clients=10_000, partitioner="iid", min_client_rows=1, fraction_train=0.01)
    check_config(cfg)
    sizes = partition_sizes(cfg)
    assert len(sizes) == 10_000 and min(sizes) >= 2
    assert len(client_shard(cfg, 9_999).y_train) == sizes[-1]


def test_default_min_client_rows_keeps_the_partition():
    assert make_config().min_client_rows == 20
    assert partition_sizes(make_config()) == partition_sizes(make_config(min_client_rows=20))


def test_federated_evaluation_asks_everyone_by_default_and_a_seeded_sample_otherwise():
    nodes = list(range(1000, 1100))
    assert query_nodes(nodes, 1.0, seed=0) == nodes
    picked = query_nodes(nodes, 0.05, seed=0)
    assert len(picked) == 5 == len(set(picked)) and set(picked) <= set(nodes) and picked == sorted(picked)
    assert picked == query_nodes(nodes, 0.05, seed=0)
    assert query_nodes(nodes, 0.001, seed=0) != [] and make_config().fraction_evaluate == 1.0
