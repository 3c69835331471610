"""Fairness from summed counts equals fairlearn on pooled rows; undefined stays undefined."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from hypothesis import given, settings
from hypothesis import strategies as st

from fedready.errors import ConfigError
from fedready.fairness import (
    confusion_counts,
    fairness_from_counts,
    group_labels,
    group_names,
    sensitive_attributes,
)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 6))
def test_summed_client_counts_equal_fairlearn_on_pooled_rows(adult_schema, seed, clients):
    rng = np.random.default_rng(seed)
    names = group_names(adult_schema, "sex")
    n = 400
    y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
    g = rng.choice(["Female", "Male"], n)
    split = np.sort(rng.choice(np.arange(1, n), clients - 1, replace=False)) if clients > 1 else []
    parts = zip(np.split(y, split), np.split(p, split), np.split(g, split), strict=True)
    total = sum(confusion_counts(yc, pc, gc, names) for yc, pc, gc in parts)
    fair = fairness_from_counts({"sex": total}, adult_schema)["sex"]
    assert fair["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y, p, sensitive_features=g),
                                                              abs=1e-12)  # fmt: skip
    assert fair["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, p, sensitive_features=g), abs=1e-12)  # fmt: skip


def test_group_without_members_or_positives_is_undefined_never_nan(adult_schema):
    names = group_names(adult_schema, "race")
    y = np.array([1, 0, 1, 0, 0])
    p = np.array([1, 0, 0, 1, 0])
    g = np.array(["White", "White", "Black", "Black", "Other"])  # Other: no positives; Asian-Pac-Islander: nobody
    fair = fairness_from_counts({"race": confusion_counts(y, p, g, names)}, adult_schema)["race"]
    assert fair["groups"]["Other"]["tpr"] is None and fair["groups"]["Other"]["fpr"] == 0.0
    assert fair["groups"]["Asian-Pac-Islander"]["count"] == 0
    assert fair["groups"]["Asian-Pac-Islander"]["accuracy"] is None
    assert {"Other", "Asian-Pac-Islander"} <= set(fair["undefined_groups"])
    assert "<unknown>" not in fair["groups"]
    flat = [v for grp in fair["groups"].values() for v in grp.values()]
    assert not any(isinstance(v, float) and np.isnan(v) for v in flat)
    assert fair["equal_opportunity_difference"] == pytest.approx(1.0)  # White 1.0 vs Black 0.0


def test_unknown_sensitive_attribute_names_the_field(adult_schema):
    with pytest.raises(ConfigError, match="sensitive: unknown sensitive attribute 'religion'"):
        sensitive_attributes(adult_schema, ["religion"])


def test_numeric_sensitive_attribute_is_sliced_by_declared_bins(adult_schema):
    labels = group_labels(adult_schema, "age", np.array(["17", "24.9", "25", "90"]))
    assert list(labels) == ["[17, 20)", "[20, 25)", "[25, 30)", "[70, 90)"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), clients=st.integers(1, 5), k=st.integers(3, 5))
def test_summed_multiclass_confusion_matrices_equal_fairlearn_one_vs_rest(seed, clients, k):
    from fedready.fairness import holdout_fairness
    from fedready.schema import DataSchema

    schema = DataSchema.model_validate({
        "name": "mc", "sensitive": ["g"], "target": {"column": "y", "classes": list(range(k))},
        "columns": [{"name": "g", "kind": "categorical", "categories": ["a", "b", "c"]}],
    })  # fmt: skip
    rng = np.random.default_rng(seed)
    n = 500
    y, p, g = rng.integers(0, k, n), rng.integers(0, k, n), rng.choice(["a", "b", "c"], n)
    names = group_names(schema, "g")
    split = np.sort(rng.choice(np.arange(1, n), clients - 1, replace=False)) if clients > 1 else []
    parts = zip(np.split(y, split), np.split(p, split), np.split(g, split), strict=True)
    tables = [confusion_counts(yc, pc, gc, names, classes=k) for yc, pc, gc in parts]
    # one row adds 1 to exactly one cell of its group's table (the noise calibration relies on it)
    assert all(t.shape == (len(names), k * k) for t in tables) and int(sum(t.sum() for t in tables)) == n
    fair = fairness_from_counts({"g": sum(tables)}, schema)["g"]
    pooled = holdout_fairness(y, p, {"g": g}, classes=schema.classes)["g"]
    for j, c in enumerate(schema.classes):
        yt, yp = (y == j).astype(int), (p == j).astype(int)
        assert fair["per_class"][c]["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(yt, yp, sensitive_features=g), abs=1e-12)  # fmt: skip
        assert fair["per_class"][c]["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(yt, yp, sensitive_features=g), abs=1e-12)  # fmt: skip
    for key in ("equalized_odds_difference", "demographic_parity_difference", "worst_group_accuracy"):
        assert fair[key] == pytest.approx(pooled[key], abs=1e-12), key
    assert fair["groups"]["a"]["accuracy"] == pytest.approx(float((y == p)[g == "a"].mean()), abs=1e-12)
