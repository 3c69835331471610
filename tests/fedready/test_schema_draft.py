"""`fedready schema draft`: a reviewable schema from one local CSV, which then loads and trains."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.errors import ConfigError
from fedready.schema import load_schema
from fedready.schema_draft import draft_schema
from fedready.task import TaskSpec, load_task


def test_draft_reads_kinds_ranges_classes_and_marks_no_sensitive_attribute(multiclass_task, tmp_path):
    out = tmp_path / "draft.toml"
    res = CliRunner().invoke(app, ["schema", "draft", str(multiclass_task["data"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "on this machine" in res.stderr and "review every field" in res.stderr
    schema = load_schema(out)
    assert schema.classes == ["0", "1", "2"] and schema.target.column == "target"
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {"age": "numeric", "income": "numeric", "group": "categorical", "color": "categorical",
                     "score": "numeric"}  # fmt: skip
    age = schema.column("age")
    assert (age.min, age.max) == (15, 80) and age.bins  # widened to round numbers; rounded quintiles as bins
    assert schema.column("income").transform == "log1p"
    assert schema.sensitive == [] and "Candidates by name: age" in out.read_text()
    # the draft trains as it stands
    task = load_task(TaskSpec(data=str(multiclass_task["data"]), schema=str(out)))
    assert task.num_classes == 3 and task.in_features > 0


def test_rare_categories_and_identifiers_are_left_out(tmp_path):
    rows = ["id,city,y"] + [f"{i},{'Paris' if i % 2 else 'Lyon'},{i % 2}" for i in range(40)] + ["40,Smallville,1"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    draft = draft_schema(tmp_path / "d.csv")
    text = draft.toml
    assert '"Smallville"' not in text and "1 rare value(s) left out" in text
    assert 'ignore = ["id"]' not in text  # numeric ids are numbers, a person decides
    schema = load_schema_from(text, tmp_path)
    assert schema.target.positive == ["1"] and schema.target.negative == ["0"] and draft.target == "y"


def load_schema_from(text, tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_schema(p)


def test_text_identifiers_are_ignored_and_the_rarer_class_is_flagged(tmp_path):
    rows = ["name,size,outcome"] + [f"person-{i},{i % 7},{'won' if i % 3 == 0 else 'lost'}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    draft = draft_schema(tmp_path / "d.csv", target="outcome")
    schema = load_schema_from(draft.toml, tmp_path)
    assert schema.ignore == ["name"] and schema.target.positive == ["won"]
    assert any("rarer class" in n for n in draft.notes) and any("identifier" in n for n in draft.notes)


@pytest.mark.parametrize(
    ("csv", "target", "match"),
    [
        ("a,b\n1,x\n2,x\n", "b", "holds 1 class"),
        ("a,b\n1,x\n2,y\n", "c", "has no column 'c'"),
        ("a,b\n" + "".join(f"{i},{i}\n" for i in range(80)), "b", "80 distinct values, too many for classes"),
    ],
)
def test_a_target_that_is_not_a_class_column_is_refused(tmp_path, csv, target, match):
    (tmp_path / "d.csv").write_text(csv)
    with pytest.raises(ConfigError, match=match):
        draft_schema(tmp_path / "d.csv", target=target)


def test_draft_never_overwrites_without_force(binary_task, tmp_path):
    out = tmp_path / "s.toml"
    out.write_text("mine")
    res = CliRunner().invoke(app, ["schema", "draft", str(binary_task["data"]), "--out", str(out)])
    assert res.exit_code == 2 and "exists; pass --force" in res.output and out.read_text() == "mine"
