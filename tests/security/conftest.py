"""Fixtures of the security suite: the registry suite's keys, runs, artifacts and served fleet.

One test module per item of issue 16's "Why" list; each test is named after the attack (or
failure) it stages, shows it doing no harm, then the refusal or message that replaces it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from tests.registry.conftest import (  # noqa: F401, F811 -- fixtures shared with the registry suite
    StaticServer,
    artifact,
    artifact_evil,
    artifact_v2,
    fake_run,
    fleet,
    keys,
    serve,
    write_fake_run,
)


def cli(*args: object) -> tuple[int, str]:
    """``fedready ARGS`` in-process; return (exit code, stdout + stderr)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def assert_one_line_error(code: int, output: str, *, expect: str) -> None:
    """A clear refusal: non-zero exit, one ``error:`` line naming the problem, no traceback."""
    assert code != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], output


def copy_artifact(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def resign(folder: Path, key: Path) -> None:
    """Sign ``folder`` again with ``key`` (what an operator, or a thief of the key, can do)."""
    from fedready.registry._artifact import sign_artifact

    (folder / "model.sig").unlink()
    sign_artifact(folder, key=key)


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def device(tmp_path, artifact, keys):  # noqa: F811 -- the imported fixtures, requested by name
    """A device folder running 1.0.0, installed offline."""
    from fedready.registry import EdgeAgent

    agent = EdgeAgent(tmp_path / "device")
    agent.install(artifact, public_key=keys["operator"][1])
    return agent
