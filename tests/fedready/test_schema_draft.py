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


def _write(tmp_path, header, rows, name="d.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_narrow_range_far_from_zero_keeps_max_above_min(tmp_path):
    # a year column 2003..2009 was rounded to 2000..2000 and the draft crashed
    path = _write(tmp_path, "year,education", [f"{2003 + i % 7},{'abcde'[i % 5]}" for i in range(70)])
    res = CliRunner().invoke(app, ["schema", "draft", str(path), "--target", "education"])
    assert res.exit_code == 0, res.output
    year = load_schema(tmp_path / "d.schema.toml").column("year")
    assert (year.min, year.max) == (2000, 2010)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(18, 79, (15, 80)), (2003, 2009, (2000, 2010)), (0.31, 0.38, (0.31, 0.38)), (-3.3, 12.7, (-5, 15)),
     (1234, 98765, (0, 100000)), (5, 5, (4, 6)), (1.0, 1.0001, (1.0, 1.0001))],
)  # fmt: skip
def test_drafted_ranges_are_rounded_outward_and_never_empty(lo, hi, expected):
    from fedready.schema_draft import _range

    out = _range(lo, hi)
    assert out == pytest.approx(expected) and out[0] <= lo and out[1] >= hi and out[1] > out[0]


def test_sensitive_candidates_are_whole_words_and_known_abbreviations(tmp_path):
    header = "wage,afam,hispanic,foreign_worker,isFemale,ageGroup,Race,usage,y"
    path = _write(tmp_path, header, [f"{i},{i % 2},{i % 3 == 0},{'yes' if i % 4 else 'no'},{i % 2},{i % 5},"
                                     f"{'ab'[i % 2]},{i},{i % 2}" for i in range(40)])  # fmt: skip
    text = draft_schema(path).toml
    line = next(ln for ln in text.splitlines() if "Candidates by name" in ln)
    named = line.split("Candidates by name: ")[1].rstrip(".").split(", ")
    assert named == ["afam", "hispanic", "foreign_worker", "isFemale", "ageGroup", "Race"]  # not wage, not usage


def test_without_target_a_sensitive_last_column_is_not_the_label(tmp_path):
    path = _write(tmp_path, "hours,smoker,gender", [f"{i % 9},{'yn'[i % 2]},{'fm'[i % 3 % 2]}" for i in range(40)])
    draft = draft_schema(path)
    assert draft.target == "smoker"
    assert any("'smoker' was taken as the label" in n and "'gender'" in n for n in draft.notes)
    res = CliRunner().invoke(app, ["schema", "draft", str(path), "--out", str(tmp_path / "s.toml")])
    assert res.exit_code == 0 and "'smoker' was taken as the label" in res.stderr


def test_a_numeric_column_with_some_text_is_numeric_with_the_text_as_missing(tmp_path):
    # every seventh value is text: it was drafted as a 36-category categorical
    rows = [f"{'unknown' if i % 7 == 0 else 10 + i % 40},{i % 2}" for i in range(140)]
    path = _write(tmp_path, "amount,y", rows)
    res = CliRunner().invoke(app, ["schema", "draft", str(path), "--out", str(tmp_path / "s.toml")])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "'amount'" in warnings[0] and "unknown" in warnings[0], res.stderr
    col = load_schema(tmp_path / "s.toml").column("amount")
    assert col.kind == "numeric" and "unknown" in col.missing_values
    task = load_task(TaskSpec(data=str(path), schema=str(tmp_path / "s.toml")))  # it loads and encodes
    assert task.in_features > 0


def test_a_text_column_is_not_taken_for_a_mixed_numeric_one(tmp_path):
    rows = [f"{'abcdefghijkl'[i % 12]},{i % 2}" if i % 5 else f"{i},{i % 2}" for i in range(120)]
    draft = draft_schema(_write(tmp_path, "code,y", rows))
    assert draft.warnings == () and 'kind = "categorical"' in draft.toml


def test_sensitive_and_ignore_options_mark_columns(tmp_path):
    path = _write(tmp_path, "zip,grp,score,y", [f"{i % 4},{'ab'[i % 2]},{i},{i % 2}" for i in range(40)])
    out = tmp_path / "s.toml"
    res = CliRunner().invoke(app, ["schema", "draft", str(path), "--out", str(out), "--sensitive", "grp",
                                   "--ignore", "zip", "--ignore", "score"])  # fmt: skip
    assert res.exit_code == 0, res.output
    schema = load_schema(out)
    assert schema.sensitive == ["grp"] and schema.ignore == ["zip", "score"]
    assert [c.name for c in schema.features] == ["grp"]


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--sensitive", "nope"], "sensitive"), (["--ignore", "nope"], "ignore"), (["--sensitive", "y"], "sensitive"),
     (["--target", "nope"], "target")],
)  # fmt: skip
def test_draft_option_errors_are_one_line_exit_2(tmp_path, args, field):
    path = _write(tmp_path, "a,y", [f"{i},{i % 2}" for i in range(20)])
    res = CliRunner().invoke(app, ["schema", "draft", str(path), "--target", "y", *args])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and field in lines[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "d.schema.toml").exists()


def test_a_draft_that_does_not_validate_is_one_config_error(tmp_path, monkeypatch):
    import fedready.schema_draft as sd

    monkeypatch.setattr(sd, "_range", lambda lo, hi: (2000.0, 2000.0))  # the old rounding bug, forced
    path = _write(tmp_path, "year,y", [f"{2003 + i % 7},{i % 2}" for i in range(40)])
    res = CliRunner().invoke(app, ["schema", "draft", str(path)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "year" in lines[0] and "Traceback" not in res.output, res.output
