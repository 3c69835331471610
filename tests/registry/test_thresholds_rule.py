"""The edge runtime applies the rule ``fedready evaluate`` stores, without fairlearn."""

import json

import numpy as np

from fedready.registry._predict import _Thresholds
from fedready.thresholds import positive_probability

RULE = {
    "attribute": "sex",
    "groups": {
        "Female": {"op0": ">", "op1": ">", "t0": 0.3, "t1": 0.3, "p0": 1.0, "p1": 0.0, "p_ignore": 0.0,
                   "prediction_constant": 0.0},
        "Male": {"op0": ">", "op1": ">", "t0": 0.7, "t1": 0.2, "p0": 0.5, "p1": 0.5, "p_ignore": 0.0,
                 "prediction_constant": 0.0},
    },
}  # fmt: skip


def test_evaluate_rule_is_applied_per_group_and_reproducibly(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(RULE))
    th = _Thresholds.load(path)
    # deterministic part: a woman at 0.4 is positive (cut-off 0.3), a man at 0.1 is not
    assert th.decide({"sex": "Female", "age": "30"}, 0.4)[0] is True
    assert th.decide({"sex": "Male", "age": "30"}, 0.1)[0] is False
    # randomised part: a man at 0.5 is positive with probability 0.5, fixed per row
    rows = [{"sex": "Male", "age": str(a)} for a in range(2000)]
    first = [th.decide(r, 0.5)[0] for r in rows]
    assert first == [th.decide(r, 0.5)[0] for r in rows]
    assert abs(np.mean(first) - 0.5) < 0.05
    q = positive_probability(np.array([0.5]), np.array(["Male"]), RULE)[0]
    assert th.decide(rows[0], 0.5)[1] == {"positive_probability": q}
    # a group the rule does not know keeps p > 0.5
    assert th.decide({"sex": "Other"}, 0.6)[0] is True and th.decide({"sex": "Other"}, 0.4)[0] is False
