"""The task layer: any declared CSV, binary or multi-class targets, bad input, user models."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.config import make_config
from fedready.data import read_csv
from fedready.errors import ConfigError
from fedready.federation import client_shard, holdout, partition_sizes, task_of
from fedready.models import check_model, create_model
from fedready.schema import Target, load_schema
from fedready.task import TaskSpec, load_task

SCHEMA = """name = "tiny"
sensitive = ["g"]
[target]
column = "y"
{target}
[[columns]]
name = "x"
kind = "numeric"
min = 0
max = 10
[[columns]]
name = "g"
kind = "categorical"
categories = ["a", "b"]
"""


def _files(tmp_path, csv: str, target: str = 'positive = ["1"]\nnegative = ["0"]') -> tuple:
    data, schema = tmp_path / "d.csv", tmp_path / "s.toml"
    data.write_text(csv)
    schema.write_text(SCHEMA.format(target=target))
    return data, schema


def _cli_error(tmp_path, csv: str, target: str = 'positive = ["1"]\nnegative = ["0"]') -> str:
    data, schema = _files(tmp_path, csv, target)
    res = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(schema), "--rounds", "1",
                                   "--out", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return " ".join(res.output.split())


ROWS = "x,g,y\n" + "".join(f"{i % 10},{'ab'[i % 2]},{i % 3 % 2}\n" for i in range(60))


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("", "is empty; it needs a header row and at least one data row"),
        ("\n\n", "is empty"),
        ("x,g,y\n", "has a header (line 1) but no data rows"),
        ("x,g,y\n1,a,1\n2,b\n", "line 3 has 2 fields, the header has 3"),
        ("x,g\n1,a\n", "lacks declared column(s) ['y']"),
        ("x,g,y\n1,a,1\n2,b,maybe\n", "line 3: label 'maybe' in column 'y' is not declared"),
        ("x,g,y\n1,a,1\nten,b,0\n", "line 3: column 'x': 'ten' is not a number"),
        ("x,g,y\n" + "1,a,1\n" * 30, "holds only the class '1' (30 rows); a classifier needs at least two classes"),
    ],
    ids=["empty", "blank-lines", "header-only", "ragged-row", "missing-column", "undeclared-label", "not-a-number",
         "one-class"],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_file_and_the_fix(tmp_path, csv, expected):
    out = _cli_error(tmp_path, csv)
    assert str(tmp_path / "d.csv") in out.replace(" ", "") or "d.csv" in out
    assert expected in out


def test_integer_labels_in_the_schema_just_work(tmp_path):
    data, schema = _files(tmp_path, ROWS, "positive = [1]\nnegative = [0]")
    s = load_schema(schema)
    assert s.target.positive == ["1"] and s.classes == ["0", "1"]
    y = read_csv(data, s).labels(s)
    assert y.dtype == np.int64 and set(y.tolist()) == {0, 1}
    # a CSV that writes the integer as a float still matches
    assert Target(column="y", classes=[0, 1, 2]).encode(np.array(["1.0", "2", " 0 ", "3"])).tolist() == [1, 2, 0, -1]


def test_multiclass_target_with_several_spellings_per_class(tmp_path):
    t = Target(column="y", classes=[["<=50K", "<=50K."], [">50K", ">50K."], "n/a"])
    assert t.class_names == ["<=50K", ">50K", "n/a"] and t.num_classes == 3 and not t.binary
    assert t.encode(np.array([">50K.", "<=50K", "n/a", "x"])).tolist() == [1, 0, 2, -1]
    with pytest.raises(ValueError, match="declared for two classes"):
        Target(column="y", classes=["a", ["b", "a"]])
    with pytest.raises(ValueError, match="either classes"):
        Target(column="y", classes=["a", "b"], positive=["a"])
    with pytest.raises(ValueError, match="at least two classes"):
        Target(column="y", classes=["a"])


def test_semicolon_csv_with_byte_order_mark_reads(tmp_path):
    data, schema = _files(tmp_path, "\ufeff" + ROWS.replace(",", ";"))
    table = read_csv(data, load_schema(schema))
    assert list(table.columns) == ["x", "g", "y"] and len(table) == 60


def test_missing_numeric_values_encode_at_the_declared_fill(tmp_path):
    data, schema = _files(tmp_path, ROWS.replace("x,g,y\n0,", "x,g,y\n?,"))
    s = load_schema(schema)
    from fedready.encoding import FeatureEncoder

    x = FeatureEncoder(s).transform(read_csv(data, s).columns)
    assert x[0, 0] == 0.0  # the middle of [0, 10], scaled to [-1, 1]


def test_held_out_fraction_is_stratified_seeded_and_never_trained_on(binary_task):
    spec = TaskSpec(data=str(binary_task["data"]), schema=str(binary_task["schema"]), test_fraction=0.25)
    task = load_task(spec)
    assert len(task.test) == pytest.approx(0.25 * 1500, abs=2) and len(task.train) + len(task.test) == 1500
    assert abs(task.y_test.mean() - task.y_train.mean()) < 0.02  # stratified by label
    train_lines, test_lines = set(task.train.lines.tolist()), set(task.test.lines.tolist())
    assert not train_lines & test_lines
    again = load_task(TaskSpec(**{**spec.to_dict(), "model": "logreg"}))
    assert again.test.lines.tolist() == task.test.lines.tolist()  # the same split for every model and seed


def test_task_travels_in_the_flat_run_config(multiclass_task):
    cfg = make_config(data=str(multiclass_task["data"]), schema=str(multiclass_task["schema"]),
                      test=str(multiclass_task["test"]), num_clients=3, partitioner="sensitive")  # fmt: skip
    rc = cfg.to_run_config()
    assert rc["data"] == str(multiclass_task["data"].resolve()) and rc["test-fraction"] == 0.0
    from fedready.config import SimulationConfig

    again = SimulationConfig.from_run_config(rc)
    task = task_of(again)
    assert task is task_of(cfg)  # rebuilt once per process, then cached
    assert task.classes == ["0", "1", "2"] and task.num_classes == 3
    x, y = holdout(cfg)
    assert x.shape == (600, task.in_features) and set(np.unique(y).tolist()) == {0, 1, 2}
    sizes = partition_sizes(cfg)
    assert sum(sizes) == pytest.approx((1 - cfg.val_fraction) * 1500, abs=3)  # the rest is local validation
    # skew by the schema's (only) sensitive attribute: group shares differ a lot between clients
    shares = []
    for pid in range(3):
        rows = client_shard(cfg, pid)
        assert rows.y_train.dtype == np.int64
        from fedready.federation import client_train_columns

        shares.append(float((client_train_columns(cfg, pid)["group"] == "A").mean()))
    assert max(shares) - min(shares) > 0.2


def test_sensitive_partitioner_needs_a_sensitive_attribute(tmp_path):
    data, schema = _files(tmp_path, ROWS)
    schema.write_text(schema.read_text().replace('sensitive = ["g"]', "sensitive = []"))
    cfg = make_config(data=str(data), schema=str(schema), partitioner="sensitive", num_clients=2, min_client_rows=5)
    with pytest.raises(ConfigError, match="declares none; add sensitive"):
        partition_sizes(cfg)


def test_data_options_go_together():
    with pytest.raises(ConfigError, match="needs its --schema"):
        make_config(data="x.csv")
    with pytest.raises(ConfigError, match="not both"):
        make_config(data="x.csv", schema="s.toml", test="t.csv", test_fraction=0.2)
    with pytest.raises(ConfigError, match="goes with --data"):
        make_config(test_fraction=0.2)


def test_user_models_are_checked_with_opacus():
    assert check_model("fedready_test_models:residual_layernorm", 12, 3) is None
    note = check_model("fedready_test_models:residual_batchnorm", 12, 3)
    assert note is not None and "BatchNorm1d replaced with GroupNorm" in note and "\n" not in note
    fixed = create_model("fedready_test_models:residual_batchnorm", 12, num_classes=3).eval()
    assert not any("BatchNorm" in type(m).__name__ for m in fixed.modules())
    import torch

    x = torch.randn(5, 12)
    with torch.no_grad():  # one group per layer: a single row is scored, and the same way as in a batch
        assert torch.allclose(fixed(x[:1]), fixed(x)[:1], atol=1e-6)
    with pytest.raises(ConfigError, match="Opacus cannot train .* trainable layer with buffers"):
        check_model("fedready_test_models:buffered", 12, 3)
    with pytest.raises(ConfigError, match=r"logits of shape \[batch, 3\]"):
        check_model("fedready_test_models:wrong_output", 12, 3)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        create_model("no_such_module:f", 12)
    with pytest.raises(ConfigError, match="unknown model 'nope'; expected one of: logreg"):
        create_model("nope", 12)


def test_the_same_seed_gives_the_same_user_model():
    a = create_model("fedready_test_models:residual_layernorm", 8, num_classes=2, seed=3).state_dict()
    b = create_model("fedready_test_models:residual_layernorm", 8, num_classes=2, seed=3).state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_label_errors_name_the_file_and_line(tmp_path):
    data, schema = _files(tmp_path, ROWS + "3,a,2\n")
    s = load_schema(schema)
    with pytest.raises(ConfigError, match=r"^target: .*d\.csv line 62: label '2' in column 'y' is not declared"):
        read_csv(data, s).labels(s)


def test_a_file_that_is_not_utf8_is_named_with_its_line_and_column(tmp_path):
    data, schema = _files(tmp_path, "")
    data.write_bytes(ROWS.encode() + "3,b,1\n4,caf\xe9,0\n".encode("latin-1"))  # a Latin-1 export
    with pytest.raises(ConfigError, match=r"not UTF-8 text: line 63, column 6: byte 0xe9"):
        read_csv(data, load_schema(schema))
    res = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(schema), "--rounds", "1",
                                   "--out", str(tmp_path / "runs")])  # fmt: skip
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "line 63, column 6" in " ".join(res.output.split()), res.output


RANDOM_G = "x,g,y\n" + "".join(f"{i % 10},id-{i * 7919 % 10007:05d}-{i},{i % 3 % 2}\n" for i in range(60))
EMPTY_G = ("column 'g': none of its 60 values is inside its declared categories (60 outside, 0 missing): it carries "
           "nothing to the model; fix the schema (fedready schema draft) or list it under ignore")  # fmt: skip


def test_a_column_of_random_strings_is_named_in_one_note_before_training(tmp_path):
    from fedready.simulations.engine import check_config

    data, schema = _files(tmp_path, RANDOM_G)
    assert EMPTY_G in load_task(TaskSpec(data=str(data), schema=str(schema))).notes
    assert EMPTY_G in check_config(make_config(data=str(data), schema=str(schema), model="logreg", num_clients=2))
    data, schema = _files(tmp_path, ROWS)  # a declared vocabulary in use: no note
    assert not [n for n in load_task(TaskSpec(data=str(data), schema=str(schema))).notes if "none of its" in n]


@pytest.mark.parametrize("command", ["simulate", "pipeline"])
def test_simulate_and_pipeline_apply_the_schemas_data_contract(tmp_path, command):
    data, schema = _files(tmp_path, RANDOM_G, 'positive = ["1"]\nnegative = ["0"]\n[contract]\nmax_invalid_rate = 0.1')
    res = CliRunner().invoke(app, [command, "--data", str(data), "--schema", str(schema), "--rounds", "1", "--out",
                                   str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == (
        f"error: data: {data} breaks the schema's [contract]: column 'g': 60 of 60 rows (100.0%) outside the declared "
        f"values or range, limit 10.0%; fix the data or the contract (fedready contract check --data {data} --schema "
        f"{schema} lists every violation)"
    )
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_simulate_warns_about_a_column_of_random_strings(tmp_path):
    data, schema = _files(tmp_path, RANDOM_G)
    res = CliRunner().invoke(app, ["simulate", "--data", str(data), "--schema", str(schema), "--rounds", "1",
                                   "--clients", "2", "--model", "logreg", "--out", str(tmp_path / "runs")])  # fmt: skip
    assert res.exit_code == 0, res.output[-3000:]
    assert f"note: {EMPTY_G}" in res.stderr.splitlines(), res.stderr
