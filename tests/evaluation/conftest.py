"""One short federated run, trained and evaluated once per test session (the slow tests share it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# 4 clients with label skew, 3 rounds of 40 local SGD steps, no DP: about a minute with the evaluation.
SHORT_RUN = ["--clients", "4", "--rounds", "3", "--no-dp", "--local-steps", "40", "--batch-size", "64", "--lr", "0.1"]


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "fedready.cli", *args], capture_output=True, text=True,
                          timeout=900, env=env)  # fmt: skip


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory) -> tuple[Path, dict]:
    """A finished short run and its ``evaluation.json`` (written by ``fedready evaluate``).

    ``FEDREADY_EVAL_RUN=runs/<name>`` evaluates that run instead (how the README's default-run
    numbers were checked against fairlearn).
    """
    tmp = Path(tempfile.mkdtemp(prefix="ev", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    given = os.environ.get("FEDREADY_EVAL_RUN")  # check an existing run instead, e.g. the default 50-round one
    if given:
        run = Path(given)
    else:
        sim = _cli("simulate", *SHORT_RUN, "--out", str(tmp), "--name", "short", "--json", tmp=tmp)
        assert sim.returncode == 0, sim.stderr[-3000:]
        run = tmp / "short"
    ev = _cli("evaluate", str(run), "--json", tmp=tmp)
    assert ev.returncode in (0, 1), ev.stderr[-3000:]
    return run, json.loads((run / "evaluation.json").read_text())


@pytest.fixture(scope="session")
def evaluated_multiclass_run(tmp_path_factory, multiclass_task) -> tuple[Path, dict]:
    """A short run on the synthetic three-class task (sensitive attribute ``group``), evaluated."""
    tmp = Path(tempfile.mkdtemp(prefix="mc", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    sim = _cli("simulate", "--data", str(multiclass_task["data"]), "--schema", str(multiclass_task["schema"]),
               "--test", str(multiclass_task["test"]), "--clients", "3", "--rounds", "3", "--no-dp",
               "--local-steps", "20", "--batch-size", "64", "--lr", "0.1", "--out", str(tmp), "--name", "mc",
               "--json", tmp=tmp)  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-3000:]
    ev = _cli("evaluate", str(tmp / "mc"), "--json", tmp=tmp)
    assert ev.returncode in (0, 1), ev.stderr[-3000:]
    return tmp / "mc", json.loads((tmp / "mc" / "evaluation.json").read_text())
