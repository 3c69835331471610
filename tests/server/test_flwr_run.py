"""The same ServerApp/ClientApp run under Flower's own ``flwr run .`` (local SuperLink)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_flwr_run_dot_trains_with_the_same_app_on_a_declared_csv(tmp_path, multiclass_task):
    """`flwr run .` takes the task from run-config keys (data, schema, test), like `fedready simulate --data`."""
    flwr = Path(sys.executable).with_name("flwr")
    if not flwr.exists():
        pytest.fail(f"{flwr} is missing: install fedready (it depends on flwr) in this environment")
    home = tempfile.mkdtemp(prefix="fh", dir="/tmp")  # FLWR_HOME: config, apps and the local SuperLink's state
    env = {
        **os.environ,
        "FLWR_HOME": home,
        "PATH": f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Dependencies are installed by pip from the README; Flower must not run `uv sync`.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    run_dir = tmp_path / "flwr-run"
    try:
        proc = subprocess.run(
            [str(flwr), "run", ".", "--stream", "--federation-config", "num-supernodes=4",
             "--run-config", f"num-clients=4 rounds=2 partitioner='iid' run-dir='{run_dir}' "
                             f"data='{multiclass_task['data']}' schema='{multiclass_task['schema']}' "
                             f"test='{multiclass_task['test']}'"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        # `flwr run .` leaves a background SuperLink running: stop what this test started.
        subprocess.run(["pkill", "-f", home], check=False)
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 4
    assert 0 < summary["epsilon"] <= 1.0
    # the run ends with one line naming its accuracy, epsilon and folder (streamed back by `flwr run --stream`)
    assert f"accuracy {summary['accuracy']:.4f}, epsilon {summary['epsilon']:.3f}; run folder {run_dir}" in (
        proc.stdout + proc.stderr
    )
    assert summary["accuracy"] > 0.4  # three balanced classes: a third is chance
    ledger = json.loads((run_dir / "ledger.json").read_text())
    assert {e["round"] for e in ledger["entries"] if e["level"] == "sample"} == {1, 2}  # queries: round 3
