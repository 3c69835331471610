"""The CLI's error paths: one line naming the field, exit code 2, no traceback, nothing started."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedready.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--epsilon", "0"], "epsilon"),
        (["--epsilon", "-2"], "epsilon"),
        (["--delta", "0.5"], "delta"),  # above 1/n for any client
        (["--delta", "1e-3"], "delta"),  # below 1 but not below 1/n (n ~ 3000 rows per client)
        (["--clients", "100000"], "num_clients"),
        (["--partitioner", "zipf"], "partitioner"),
        (["--accountant", "moments"], "accountant"),
        (["--rounds", "0"], "rounds"),
        (["--alpha", "0"], "alpha"),
        # distributed noise is proven in RDP/zCDP only: PRV would charge it as a continuous Gaussian, under its bound
        (["--secagg", "--accountant", "prv"], "accountant"),
        (["--query-secagg-threshold", "3"], "query-secagg-threshold"),  # without --secagg it would do nothing
        (["--secagg", "--query-noise", "0.5"], "query-secagg-threshold"),  # a share's sigma below KLS 2021's 1/2
    ],
)
def test_invalid_configuration_is_one_line_exit_2(tmp_path, args, field):
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert field.replace("_", "-") in lines[0] or field in lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid configuration"


def test_console_script_reports_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedready.cli", "simulate", "--epsilon", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "epsilon" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_resume_refuses_changed_options(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text('{"config": {"num_clients": 3, "rounds": 2}}')
    result = runner.invoke(app, ["simulate", "--resume", str(run), "--epsilon", "3"])
    assert result.exit_code == 2
    assert "epsilon" in result.stderr and "resum" in result.stderr


def test_resume_of_a_folder_without_a_run(tmp_path):
    result = runner.invoke(app, ["simulate", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "resume" in result.stderr


def test_a_temp_folder_too_long_for_rays_sockets_is_refused_before_anything_starts(tmp_path, monkeypatch):
    # Ray would fail to bind its Unix sockets (107 bytes at most) and the run would wait for clients forever
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "t" * 60)
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--rounds", "1"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "TMPDIR" in lines[0] and "107" in lines[0], result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the engine can start"
    monkeypatch.setenv("RAY_TMPDIR", "/tmp")
    from fedready.simulations.engine import check_ray_temp_dir

    check_ray_temp_dir(None)  # the default folder leaves room
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "t" * 60)
    check_ray_temp_dir("127.0.0.1:6379")  # an existing cluster keeps its own folder


SCHEMA = """name = "s"
{top}
[target]
column = "y"
positive = ["1"]
{target}
[[columns]]
name = "x"
kind = "numeric"
{column}
max = 10
"""


@pytest.mark.parametrize(
    ("top", "target", "column", "expected"),
    [
        ("", 'negative = ["0"]', "mn = 0", "column 'x': unknown key 'mn'; did you mean 'min'?"),
        ("sensitve = []", 'negative = ["0"]', "min = 0", ": unknown key 'sensitve'; did you mean 'sensitive'?"),
        ("", 'negatve = ["0"]', "min = 0", "target: unknown key 'negatve'; did you mean 'negative'?"),
        ("[contract]\nmin_row = 3", 'negative = ["0"]', "min = 0",
         "contract: unknown key 'min_row'; did you mean 'min_rows'?"),
    ],
    ids=["column-key", "top-key", "target-key", "contract-key"],
)  # fmt: skip
def test_a_misspelt_schema_key_gets_a_suggestion(tmp_path, top, target, column, expected):
    from fedready.errors import ConfigError
    from fedready.schema import load_schema

    path = tmp_path / "s.toml"
    text = SCHEMA.format(top="" if top.startswith("[") else top, target=target, column=column)
    path.write_text(text + ("\n" + top + "\n" if top.startswith("[") else ""))
    with pytest.raises(ConfigError) as e:
        load_schema(path)
    assert str(e.value).endswith(expected) and str(e.value).count("\n") == 0, str(e.value)


def _fake_run(tmp_path, schema_toml: str):
    """A folder holding only a run's schema.json (what evaluate reads --data with before the model)."""
    from fedready.schema import load_schema

    (tmp_path / "s.toml").write_text(schema_toml)
    run = tmp_path / "run"
    run.mkdir()
    (run / "schema.json").write_text(json.dumps(load_schema(tmp_path / "s.toml").to_dict()))
    return run


def test_evaluate_data_without_schema_reads_the_runs_schema_and_names_an_undeclared_label(tmp_path):
    run = _fake_run(tmp_path, SCHEMA.format(top="", target='negative = ["0"]', column="min = 0"))
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n" + "".join(f"{i % 10},{i % 2}\n" for i in range(20)) + "3,maybe\n")
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(csv)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output  # read with the run's schema, not "needs --schema"
    assert lines[0].startswith("error: target:") and "line 22: label 'maybe'" in lines[0], lines[0]
    csv.write_text("x,y\n" + "".join(f"{i % 10},{i % 2}\n" for i in range(20)))
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(csv)])
    assert res.exit_code == 2 and "holds no config.json" in res.stderr, res.output  # past the data, at the model
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nothing"), "--data", str(csv)])
    assert res.exit_code == 2 and "pass --schema" in res.stderr, res.output


def _own_data(tmp_path, name="wages", rows=60):
    (tmp_path / "s.toml").write_text(SCHEMA.format(top="", target='negative = ["0"]', column="min = 0")
                                     .replace('name = "s"', f'name = "{name}"'))  # fmt: skip
    (tmp_path / "d.csv").write_text("x,y\n" + "".join(f"{i % 10},{i % 3 % 2}\n" for i in range(rows)))
    return tmp_path / "d.csv", tmp_path / "s.toml"


def test_pipeline_refuses_an_out_folder_holding_another_data_sets_run(tmp_path):
    from fedready.schema import load_schema

    data, schema = _own_data(tmp_path)
    run = tmp_path / "out" / "runs" / "pipeline"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {}, "data_digest": "sha256:" + "ab" * 32}))
    (run / "summary.json").write_text('{"accuracy": 0.9}')  # the old run's numbers must not be reported
    args = ["pipeline", "--data", str(data), "--schema", str(schema), "--out", str(tmp_path / "out")]
    res = runner.invoke(app, args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "out:" in lines[0] and "other data" in lines[0], res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs"]  # nothing signed or published
    # same data, another schema
    from fedready.task import TaskSpec, data_digest

    same = data_digest(TaskSpec(data=str(data), schema=str(schema)))
    (run / "config.json").write_text(json.dumps({"data_digest": same}))
    other = load_schema(schema).model_copy(update={"name": "older"})
    (run / "schema.json").write_text(json.dumps(other.to_dict()))
    res = runner.invoke(app, args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "another schema ('older'" in lines[0], res.output
    from fedready.api._pipeline import check_out

    (run / "schema.json").write_text(json.dumps(load_schema(schema).to_dict()))
    check_out(tmp_path / "out", {"data": str(data.resolve()), "schema": str(schema)})  # its own run: resumed
    # the fix keeps the keys and the registry: only the run is to move
    assert "move " + str(run) in lines[0] and "keys and the registry" in lines[0]
    # a mistyped --data into a folder that holds a run: one line naming the field, no traceback
    typo = [a if a != str(data) else str(data) + "x" for a in args]
    assert typo != args
    res = runner.invoke(app, typo)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "data:" in lines[0] and "Traceback" not in res.output, res.output


def test_pipeline_on_own_data_defaults_to_a_folder_named_after_the_schema(tmp_path, monkeypatch):
    import fedready

    data, schema = _own_data(tmp_path, name="wage survey")
    monkeypatch.chdir(tmp_path)
    seen = {}

    class Stop(Exception):
        pass

    def train(given, *, out, name, resume, ray_address):
        seen["out"] = out
        raise Stop

    with pytest.raises(Stop):
        fedready.pipeline(data, schema, simulate_with=train)
    assert seen["out"] == Path("fedready-wage-survey") / "runs"
    from fedready.api._pipeline import default_out

    assert default_out(None, None) == Path("fedready-demo")  # the Quick start keeps its folder
