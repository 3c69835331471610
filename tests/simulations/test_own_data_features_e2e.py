"""Every simulation feature runs on a declared multi-class CSV, not only on the embedded data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from fedready.privacy.ledger import Ledger

pytestmark = pytest.mark.slow


def _simulate(task, out, name, *args):
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # a private Ray temp dir
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
    cmd = [sys.executable, "-m", "fedready.cli", "simulate", "--data", str(task["data"]), "--schema",
           str(task["schema"]), "--test", str(task["test"]), "--out", str(out), "--name", name, "--json",
           "--local-steps", "5", "--batch-size", "128", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_secagg_with_client_level_dp_on_own_data(multiclass_task, tmp_path):
    # iid: client-level DP averages the clients uniformly, and under the default Dirichlet label skew the
    # uniform mean of three skewed clients barely moves in two rounds (measured 0.30-0.38 accuracy, a flaky
    # "better than chance"; 0.43-0.47 on iid shards)
    s = _simulate(multiclass_task, tmp_path, "secagg", "--clients", "3", "--rounds", "2", "--secagg", "--partitioner",
                  "iid", "--client-dp", "client-fixed", "--client-noise-multiplier", "0.1")  # fmt: skip
    assert s["secagg"] and s["rounds_completed"] == 2 and s["client_epsilon"] > 0 and 0 < s["epsilon"] <= 1
    assert s["accuracy"] > 1 / 3  # better than chance over three classes


def test_label_flip_attack_sensitive_skew_and_resume_on_own_data(multiclass_task, tmp_path):
    attack = ["--attack", "label-flip", "--attack-fraction", "0.25", "--aggregator", "median"]
    first = _simulate(multiclass_task, tmp_path, "attack", "--clients", "4", "--rounds", "1", "--partitioner",
                      "sensitive", *attack)  # fmt: skip
    assert first["rounds_completed"] == 1
    again = _simulate(multiclass_task, tmp_path, "attack", "--resume", str(tmp_path / "attack"), "--rounds", "2")
    assert again["resumed_from_round"] == 1 and again["rounds_completed"] == 2
    ledger = Ledger.load(tmp_path / "attack" / "ledger.json")
    assert {e.round for e in ledger.entries} == {1, 2} and ledger.epsilon <= 1.0 + 1e-9
    config = json.loads((tmp_path / "attack" / "config.json").read_text())["config"]
    assert config["data"] == str(multiclass_task["data"].resolve()) and config["partitioner"] == "sensitive"
