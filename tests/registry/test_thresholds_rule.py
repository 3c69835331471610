"""The edge runtime applies the rule ``fedready evaluate`` stores, without fairlearn."""

import json

import numpy as np
import pytest

from fedready.errors import IntegrityError
from fedready.thresholds import DecisionRule, positive_probability, row_uniform

RULE = {
    "attribute": "sex",
    "groups": {
        "Female": {"op0": ">", "op1": ">", "t0": 0.3, "t1": 0.3, "p0": 1.0, "p1": 0.0, "p_ignore": 0.0,
                   "prediction_constant": 0.0},
        "Male": {"op0": ">", "op1": ">", "t0": 0.7, "t1": 0.2, "p0": 0.5, "p1": 0.5, "p_ignore": 0.0,
                 "prediction_constant": 0.0},
    },
}  # fmt: skip


def _decide(rule: DecisionRule, row: dict, p: float, secret: bytes = b"device") -> bool:
    q, _ = rule.probability(p, rule.group_of(row))
    if 0 < q < 1:
        encoded = np.array([float(row["age"]) / 100, 1.0 if row["sex"] == "Male" else 0.0], dtype=np.float32)
        return q >= row_uniform(encoded, secret=secret)
    return q == 1.0


def test_evaluate_rule_is_applied_per_group_and_reproducibly(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(RULE))
    rule = DecisionRule.load(path)
    # deterministic part: a woman at 0.4 is positive (cut-off 0.3), a man at 0.1 is not
    assert rule.probability(0.4, rule.group_of({"sex": "Female"}))[0] == 1.0
    assert rule.probability(0.1, rule.group_of({"sex": "Male"}))[0] == 0.0
    # randomised part: a man at 0.5 is positive with probability 0.5, fixed per row and device
    rows = [{"sex": "Male", "age": str(a)} for a in range(2000)]
    first = [_decide(rule, r, 0.5) for r in rows]
    assert first == [_decide(rule, r, 0.5) for r in rows]
    assert abs(np.mean(first) - 0.5) < 0.05
    other_device = [_decide(rule, r, 0.5, secret=b"another device") for r in rows]
    assert other_device != first and abs(np.mean(other_device) - 0.5) < 0.05
    q = positive_probability(np.array([0.5]), np.array(["Male"]), RULE)[0]
    assert rule.probability(0.5, "Male")[1] == {"positive_probability": q}


@pytest.mark.parametrize(("row", "message"), [({}, "'sex' is missing"), ({"sex": "male"}, "'sex' is 'male', not one")])
def test_unknown_or_missing_group_is_refused_unless_the_rule_states_a_fallback(row, message):
    with pytest.raises(IntegrityError, match=message):
        DecisionRule.from_dict(RULE).group_of(row)
    plain = DecisionRule.from_dict({**RULE, "unknown_group": "no-post-processing"})
    assert plain.group_of(row) is None and plain.probability(0.6, None) == (1.0, {"threshold": 0.5})
    assert DecisionRule.from_dict({**RULE, "unknown_group": "group:Female"}).group_of(row) == "Female"
    with pytest.raises(IntegrityError, match="unknown_group must be"):
        DecisionRule.from_dict({**RULE, "unknown_group": "group:Other"})


def test_hand_written_cut_offs_use_their_declared_default_for_other_groups():
    rule = DecisionRule.from_dict({"attribute": "sex", "thresholds": {"Female": 0.3, "Male": 0.6}, "default": 0.45})
    assert rule.probability(0.4, rule.group_of({"sex": "Female"})) == (1.0, {"threshold": 0.3})
    assert rule.probability(0.5, rule.group_of({"sex": "Other"})) == (1.0, {"threshold": 0.45})
    no_default = DecisionRule.from_dict({"attribute": "sex", "thresholds": {"Female": 0.3}})
    with pytest.raises(IntegrityError, match="'sex' is missing"):
        no_default.group_of({})
