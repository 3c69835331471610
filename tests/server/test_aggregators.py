"""Each robust aggregator on a toy case whose answer is known."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedready import constants as K
from fedready.config import make_config
from fedready.errors import ConfigError
from fedready.server.strategies import AGGREGATORS, build_strategy


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # Flower stamps every Message with the running task's identity; fake one for the toy messages.
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _reply(value: float, n: int = 10) -> Message:
    content = RecordDict({
        K.ARRAYS: ArrayRecord({"w": Array(np.full(4, value, np.float32))}),
        K.METRICS: MetricRecord({K.NUM_EXAMPLES: n, K.UNIFORM_WEIGHT: 1}),
    })  # fmt: skip
    return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)


def _aggregate(name: str, values: list[float], **cfg) -> float:
    strategy = build_strategy(make_config(num_clients=len(values), aggregator=name, **cfg), None)
    arrays, _ = strategy.aggregate_train(1, [_reply(v) for v in values])
    out = arrays.to_numpy_ndarrays()[0]
    assert np.allclose(out, out[0])
    return float(out[0])


HONEST = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        ("fedavg", {}, (sum(HONEST) + 1000.0) / 7),  # one outlier drags the mean
        ("median", {}, 4.0),
        ("trimmed-mean", {"trim_beta": 0.2}, 4.0),  # cut int(0.2 * 7) = 1 at each end: mean of 2..6
        ("krum", {"num_malicious": 1}, None),
        ("multikrum", {"num_malicious": 1}, None),
        ("bulyan", {"num_malicious": 1}, None),
    ],
)
def test_aggregator_on_one_outlier(name, extra, expected):
    got = _aggregate(name, [*HONEST, 1000.0], **extra)
    if expected is not None:
        assert got == pytest.approx(expected)
    else:  # selection-based rules must land inside the honest range
        assert min(HONEST) <= got <= max(HONEST)


def test_registry_is_complete():
    from typing import get_args

    from fedready.config import SimulationConfig

    assert set(AGGREGATORS) == set(get_args(SimulationConfig.model_fields["aggregator"].annotation))


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"aggregator": "bulyan", "num_malicious": 2, "num_clients": 10}, "num-malicious"),
        ({"aggregator": "krum", "num_malicious": 4, "num_clients": 10}, "num-malicious"),
        ({"aggregator": "median", "client_dp": "server-fixed", "client_epsilon": 1.0}, "aggregator"),
        ({"client_dp": "server-fixed"}, "client-epsilon"),
        ({"attack": "scale"}, "attack-fraction"),
        ({"min_clients": 11}, "min-clients"),
    ],
)
def test_impossible_combinations_are_refused(cfg, field):
    with pytest.raises(ConfigError) as e:
        make_config(**cfg)
    assert e.value.field == field


def test_qfedavg_under_dp_needs_the_training_loss_released_outside_the_guarantee():
    with pytest.raises(ConfigError, match="release-train-loss") as e:
        make_config(aggregator="qfedavg")
    assert e.value.field == "aggregator"
    assert make_config(aggregator="qfedavg", dp=False).aggregator == "qfedavg"


def test_qfedavg_keeps_the_global_models_dtype():
    """QFedAvg's float64 result would make every later float32 update a dtype mismatch."""
    from flwr.app import ConfigRecord

    strategy = build_strategy(make_config(num_clients=2, aggregator="qfedavg", release_train_loss=True), None)
    strategy.current_arrays = ArrayRecord([np.zeros(3, dtype=np.float32)])
    replies = []
    for loss, value in ((0.5, 1.0), (1.5, -1.0)):
        content = RecordDict({K.ARRAYS: ArrayRecord([np.full(3, value, dtype=np.float32)]),
                              K.METRICS: MetricRecord({K.NUM_EXAMPLES: 10, K.TRAIN_LOSS: loss}),
                              K.CONFIG: ConfigRecord({})})  # fmt: skip
        replies.append(Message(content=content, dst_node_id=0, message_type="train"))
    arrays, _ = strategy.aggregate_train(1, replies)
    (out,) = arrays.to_numpy_ndarrays()
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert out[0] < 0  # the higher-loss client (pushing to -1) weighs more under q-FFL
