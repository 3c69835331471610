"""The documentation's examples run as written (README.md and the docs site's pages under docs/): the schema
reference loads, the Python sweep trains and plots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from fedready.schema import DataSchema
from tests.docs_text import after, section

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str, lang: str) -> str:
    """The first fenced ``lang`` block after the heading ``heading``, in the README or the docs page that holds it."""
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(after(heading))
    assert m is not None, f"no {lang} block under '{heading}'"
    return m.group(1)


def test_readme_leads_with_your_own_data_in_three_commands():
    text = README.read_text()
    first = text.index("\n## ")
    assert text[first:].startswith("\n## Your own data in three commands\n")
    block = _block("Your own data in three commands", "bash")
    assert [line.split()[1:3] for line in block.splitlines()] == [["schema", "draft"], ["simulate", "--data"],
                                                                  ["pipeline", "--data"]]  # fmt: skip


def test_schema_reference_example_is_a_valid_schema():
    schema = DataSchema.model_validate(tomllib.loads(_block("Schema reference", "toml")))
    assert schema.classes == ["no", "yes"] and schema.column("income").impute == 25000
    documented = section("Schema reference")
    fields = (
        "name version ignore sensitive column positive negative classes kind min max transform bins unit "
        "missing_values impute categories actionable min_rows max_missing_rate missing_rate max_invalid_rate "
        "min_positive_rate max_positive_rate"
    ).split()
    assert not [f for f in fields if f"`{f}`" not in documented]


@pytest.mark.slow
def test_python_api_sweep_runs_as_written(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "TMPDIR": ray_tmp, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", _block("Python API", "python")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epsilon ")]
    assert len(lines) == 2
    eps = [float(re.search(r"epsilon ([\d.]+)", ln).group(1)) for ln in lines]
    assert eps[0] <= 0.5 + 1e-6 and 0.5 < eps[1] <= 4.0 + 1e-6
    acc = [float(re.search(r"accuracy ([\d.]+)", ln).group(1)) for ln in lines]
    assert all(a > 0.6 for a in acc)  # better than the majority class
    assert (tmp_path / "privacy_utility.png").stat().st_size > 5_000


def test_the_run_folder_layout_shows_client_state_beside_the_run_not_inside_it(tmp_path):
    from fedready.client.state import client_state_dir

    block = _block("The run folder", "")
    inside = block.split("runs/<name>.clients/")[0]
    assert "clients/" not in inside, "client state is not inside the run folder"
    from fedready.client.state import STATE_FILE

    assert f"runs/<name>.clients/<id>/{STATE_FILE}" in block
    assert client_state_dir(tmp_path / "runs" / "r1", 3) == tmp_path / "runs" / "r1.clients" / "3"


def test_the_draft_example_with_sensitive_and_ignore_runs_as_written(tmp_path, monkeypatch):
    import shlex

    from typer.testing import CliRunner

    from fedready.cli import app
    from fedready.schema import load_schema

    line = next(m.group(1) for m in re.finditer(r"`(fedready schema draft [^`]*--sensitive[^`]*)`", README.read_text()))
    rows = [f"{i},{'fm'[i % 2]},{'abc'[i % 3]},{20 + i % 40},{'<=50K' if i % 3 else '>50K'}" for i in range(60)]
    (tmp_path / "train.csv").write_text("\n".join(["id,sex,race,age,income", *rows]) + "\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, shlex.split(line)[1:])
    assert res.exit_code == 0, res.output
    schema = load_schema(tmp_path / "schema.toml")
    assert schema.sensitive == ["sex", "race"] and "id" in schema.ignore and schema.target.column == "income"


def test_every_section_the_tests_read_is_on_exactly_one_page():
    """The slow tests above and the wire-table and run-config checks find their sections (fast, before the runs)."""
    for heading, lang in [("Python API", "python"), ("Schema reference", "toml"), ("The run folder", ""),
                          ("Your own data in three commands", "bash")]:  # fmt: skip
        assert _block(heading, lang).strip()
    for heading in ("What leaves a client", "Which run-config keys a client takes"):
        assert "| `" in section(heading)
