"""The gate registry and policy loading: complete, loud on unknown keys, undefined values fail."""

from __future__ import annotations

import pytest

from fedready.errors import ConfigError
from fedready.evaluation.gates import GATES, check_gates, default_policy_path, load_policy


def _write(tmp_path, text):
    p = tmp_path / "policy.toml"
    p.write_text(text)
    return p


def test_default_policy_names_no_column_and_fits_any_schema(adult_schema, multiclass_task):
    from fedready.schema import load_schema

    text = default_policy_path().read_text()
    assert not [c.name for c in adult_schema.columns if f'"{c.name}"' in text or f"{c.name} =" in text]
    for schema in (adult_schema, load_schema(multiclass_task["schema"])):
        policy = load_policy(None, schema)
        keys = {(g, k) for g, k, _ in policy.limits}
        assert {("max_epsilon", ""), ("min_balanced_accuracy_lift", ""), ("max_constant_decision_groups", "")} <= keys
        assert {g for g, _, _ in policy.variant_limits} >= {"max_accuracy_loss", "min_agreement", "max_ece"}
        assert policy.undecided == "canary"
        # "*" became one fairness gate per sensitive attribute the schema declares
        assert {k for g, k in keys if g == "max_equalized_odds_difference"} == set(schema.sensitive)


def test_the_embedded_data_set_ships_its_own_policy(adult_schema):
    from fedready.datasets.adult import policy_path

    policy = load_policy(policy_path(), adult_schema)
    names = {g for g, _, _ in policy.limits}
    assert {"min_accuracy", "max_equalized_odds_difference", "max_epsilon", "max_flip_rate"} <= names
    assert "max_ece" in {g for g, _, _ in policy.variant_limits}  # the shipped variant is the calibrated one


def test_wildcards_expand_and_explicit_keys_override(adult_schema, tmp_path):
    text = ('[gates.max_equalized_odds_difference]\n"*" = 0.2\nsex = 0.05\n'
            '[gates.max_flip_rate]\n"missing-*" = 0.1\n"swap-*" = 0.2\n')  # fmt: skip
    limits = {(g, k): v for g, k, v in load_policy(_write(tmp_path, text), adult_schema).limits}
    assert limits[("max_equalized_odds_difference", "sex")] == 0.05
    assert limits[("max_equalized_odds_difference", "race")] == 0.2
    assert limits[("max_flip_rate", "missing-age")] == 0.1 and ("max_flip_rate", "swap-age") not in limits
    assert limits[("max_flip_rate", "swap-race")] == 0.2
    with pytest.raises(ConfigError, match="perturbation wildcard"):
        load_policy(_write(tmp_path, '[gates.max_flip_rate]\n"gaussian-*" = 0.1\n'), adult_schema)


def test_every_registered_gate_loads_and_reads_a_report(adult_schema, tmp_path):
    lines = []
    for table, level in (("gates", "model"), ("variant_gates", "variant")):
        names = [n for n, g in GATES.items() if level in g.levels and (table == "gates" or "model" not in g.levels)]
        lines += [f"[{table}]"] + [f"{n} = 0.5" for n in names if not GATES[n].keyed_by]
        for n in names:
            if GATES[n].keyed_by:
                key = "sex" if GATES[n].keyed_by == "attribute" else '"gaussian-0.1"'
                lines += [f"[{table}.{n}]", f"{key} = 0.5"]
    policy = load_policy(_write(tmp_path, "\n".join(lines)), adult_schema)
    assert {g for g, _, _ in policy.limits + policy.variant_limits} == set(GATES)
    results = check_gates(policy, {}) + check_gates(policy.as_variant(), {})  # every measurement undefined
    assert len(results) == len(GATES)
    assert all(not r.passed and r.measured is None and r.note.startswith("undefined") for r in results)
    # undefined is undecided, unless undefined means the worst case (no DP: no finite epsilon)
    assert {r.gate for r in results if r.outcome == "fail"} == {n for n, g in GATES.items() if g.undefined_fails}
    # a gate that needs the federated evaluation says which command supplies it
    spread = next(r for r in results if r.gate.startswith("max_client_accuracy_std"))
    assert "fedready evaluate" in spread.note


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[gates]\nmax_accuracy = 0.9", "gates.max_accuracy"),
        ("[gates.max_equalized_odds_difference]\nreligion = 0.1", "gates.max_equalized_odds_difference.religion"),
        ("[gates]\nmax_equalized_odds_difference = 0.1", "gates.max_equalized_odds_difference"),
        ("[gates.min_accuracy]\nsex = 0.1", "gates.min_accuracy"),
        ('[gates.max_flip_rate]\n"missing-salary" = 0.1', "gates.max_flip_rate.missing-salary"),
        ('[gates.max_flip_rate]\n"blur-0.1" = 0.1', "gates.max_flip_rate.blur-0.1"),
        ("[gates]\nmin_accuracy = true", "gates.min_accuracy"),
        ("colour = 'red'\n[gates]\nmin_accuracy = 0.8", "colour"),
        ("name = 'x'", "gates"),
        ("[gates]\nmax_accuracy_loss = 0.01", "gates.max_accuracy_loss"),
        ("[gates]\nmin_accuracy = 0.8\n[variant_gates]\nmax_epsilon = 1.0", "variant_gates.max_epsilon"),
        ("[gates]\nmin_accuracy = 0.8\n[promotion]\nundecided = 'yes'", "promotion.undecided"),
    ],
)
def test_bad_policy_names_the_key(adult_schema, tmp_path, text, field):
    with pytest.raises(ConfigError) as e:
        load_policy(_write(tmp_path, text), adult_schema)
    assert e.value.field == field


def test_limits_compare_in_the_gates_direction(adult_schema, tmp_path):
    policy = load_policy(_write(tmp_path, "[gates]\nmin_accuracy = 0.8\nmax_ece = 0.05"), adult_schema)
    report = {"metrics": {"accuracy": 0.8}, "calibration": {"ece": 0.06}}
    by = {r.gate: r for r in check_gates(policy, report)}
    assert by["min_accuracy"].passed and by["min_accuracy"].measured == 0.8
    assert not by["max_ece"].passed and by["max_ece"].limit == 0.05
