"""Issue 23, Why 2: a randomised fairness decision could be re-rolled by resubmitting a meaningless variant.

The draw was an HMAC over the request's feature strings, so ``age = 41 + k * 1e-9`` or an unknown
spelling of a category (``Zz0`` ... ``Zz7``) gave fresh draws at the same approval probability: every
denied row of the pipeline's model was approved within 8 resubmissions. The draw is now keyed on the
model's own view of the row (the encoded float32 features), so none of these variants moves it.
"""

from __future__ import annotations

import json

import pytest

from fedready.registry import EdgeServer, ServeConfig
from tests.registry.test_edge_attacks import ROW
from tests.security.test_why05_hostile_http_clients import _post, _raw
from tests.security.test_why09_fairness_rerolls import RULE, _device

RESUBMISSIONS = 8  # the red team's budget per denied row
# a person from an unlisted country with the top education level: their unknown spellings and clipped
# values are all variants the model cannot tell apart
PERSON = {**ROW, "education-num": "16", "native-country": "Zz0"}


def _variants(row: dict) -> list[dict]:
    """Resubmissions that change nothing the model sees: each one a fresh draw under the old rule."""
    age = float(row["age"])
    out = [{**row, "age": repr(age + k * 1e-9)} for k in range(1, RESUBMISSIONS + 1)]  # the red team's attack
    out += [{**row, "native-country": f"Zz{k}"} for k in range(RESUBMISSIONS)]  # unknown spellings: one slot
    out += [{**row, "capital-loss": repr(float(row["capital-loss"]) + k * 1e-12)} for k in range(1, 4)]
    out += [{**row, "hours-per-week": f"{row['hours-per-week']}.000"}, {**row, "age": f"  {row['age']}  "},
            {**row, "age": int(float(row["age"]))} if float(row["age"]).is_integer() else row,
            {**row, "education-num": "16"}, {**row, "education-num": "160"},  # both clipped to the declared 16
            {**row, "request_id": "again", "note": "please"}, dict(reversed(list(row.items())))]  # fmt: skip
    return out


@pytest.fixture
def randomised(tmp_path, keys):
    return _device(tmp_path, keys, "reroll", RULE)


def test_why23_02_denied_rows_resubmitted_with_meaningless_perturbations_stay_denied(randomised):
    predictor = randomised.predictor()
    people = [{**PERSON, "age": str(a), "hours-per-week": str(h)} for a in range(20, 80) for h in (25, 40, 60)]
    first = predictor.predict(people)
    undecided = [(r, p) for r, p in zip(people, first, strict=True) if p.get("positive_probability") == 0.5]
    denied = [r for r, p in undecided if p["prediction"] == 0]
    approved = [r for r, p in undecided if p["prediction"] == 1]
    # the rule's coin is still a coin across people: both outcomes occur, roughly half each
    assert len(undecided) >= 40 and 0.3 < len(approved) / len(undecided) < 0.7, len(undecided)
    # the attack: every denied person resubmits meaningless variants of their row
    for row in denied + approved:
        decisions = {p["prediction"] for p in predictor.predict(_variants(row))}
        assert decisions == {0 if row in denied else 1}, row
    # under the old rule a denied row was approved within 8 tries with probability 1 - 0.5**8 > 0.99


def test_why23_02_resubmissions_to_edge_serve_get_the_same_decision(randomised):
    predictor = randomised.predictor()
    rows = [{**PERSON, "age": str(a)} for a in range(20, 80)]
    undecided = [r for r, p in zip(rows, predictor.predict(rows), strict=True) if 0 < p.get("positive_probability",
                                                                                                 0) < 1]  # fmt: skip
    assert undecided
    server = EdgeServer(randomised.home, ServeConfig(port=0))
    server.start()
    try:
        for row in undecided[:5]:
            body = json.dumps(_variants(row)).encode()
            status, _, answer = _raw(server, _post(body))
            assert status == 200, answer
            assert len({r["prediction"] for r in json.loads(answer)["results"]}) == 1
    finally:
        server.stop()


def test_why23_02_a_row_the_model_sees_differently_gets_its_own_draw(randomised):
    """The draw is per row as the model sees it (not per device): distinct people are not decided alike."""
    predictor = randomised.predictor()
    rows = [{**ROW, "age": str(a), "hours-per-week": str(h)} for a in range(20, 80) for h in range(30, 50, 5)]
    undecided = [p["prediction"] for p in predictor.predict(rows) if p.get("positive_probability") == 0.5]
    assert 0 < sum(undecided) < len(undecided)
