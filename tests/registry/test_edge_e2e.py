"""Operator to device, end to end through the CLI, on a real 3-round simulation (slow).

Also: the device path runs with the training stack made unimportable, and raw Adult CSV rows
predicted on the device match the training-side PyTorch model.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.registry import in_canary
from tests.registry.conftest import StaticServer

pytestmark = pytest.mark.slow

BLOCKED = ("torch", "flwr", "opacus", "fairlearn", "onnx", "ray")
BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not part of the edge install (blocked by the test)")
        return None


sys.meta_path.insert(0, _Block())
"""


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output)
    return res.output


def _write_csv(path, n: int) -> dict:
    from fedready.datasets.adult import load_adult

    table = load_adult("test").take(np.arange(n))
    names = list(table.columns)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*(table.columns[k] for k in names), strict=True))
    return table


def _torch_probabilities(run, table) -> np.ndarray:
    import torch

    from fedready.datasets.adult import adult_schema
    from fedready.encoding import FeatureEncoder
    from fedready.modelio import load_npz
    from fedready.models import create_model

    cfg = json.loads((run / "config.json").read_text())["config"]
    enc = FeatureEncoder(adult_schema())
    model = create_model(cfg["model"], enc.width)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_npz((run / "model.npz").read_bytes()).items()})
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(enc.transform(table.columns))), dim=1)[:, 1].numpy()


@pytest.fixture(scope="module")
def operator(sim_run, tmp_path_factory):
    """Keys, two signed versions of the simulated run (1.1.0 passed its gates), a served registry."""
    base = tmp_path_factory.mktemp("operator")
    _cli("keys", "generate", "--out", base / "keys")
    key, pub = base / "keys" / "signing.key", base / "keys" / "signing.pub"
    _cli("package", sim_run, "--key", key, "--version", "1.0.0", "--out", base / "artifacts")
    evaluated = base / "evaluated-run"
    shutil.copytree(sim_run, evaluated)
    (evaluated / "evaluation.json").write_text(json.dumps({"passed": True}))
    _cli("package", evaluated, "--key", key, "--version", "1.1.0", "--out", base / "artifacts",
         "--parent-version", "1.0.0")  # fmt: skip
    _cli("verify", base / "artifacts" / "1.1.0", "--public-key", pub)
    reg = base / "registry"
    _cli("registry", "init", reg)
    for v in ("1.0.0", "1.1.0"):
        _cli("registry", "publish", reg, base / "artifacts" / v, "--public-key", pub)
    server = StaticServer(reg / "repository")
    yield {"base": base, "pub": pub, "reg": reg, "url": server.url, "root": reg / "repository/metadata/1.root.json"}
    server.stop()


def test_publish_promote_update_predict_rollback_through_cli(operator, sim_run, tmp_path):
    reg, url = operator["reg"], operator["url"]
    refused = CliRunner().invoke(app, ["registry", "promote", str(reg), "1.0.0", "--channel", "stable",
                                       "--approver", "alice"])  # fmt: skip
    assert refused.exit_code == 2 and "gates not run" in refused.output
    _cli("registry", "promote", reg, "1.0.0", "--channel", "stable", "--approver", "alice", "--force",
         "--reason", "first release, evaluation pending")  # fmt: skip
    home = tmp_path / "device"
    device = ("--home", home)
    _cli("edge", "update", "--repo", url, "--device-id", "shop-7", *device, "--root", operator["root"],
         "--public-key", operator["pub"])  # fmt: skip
    assert json.loads(_cli("edge", "status", *device))["active"] == "1.0.0"

    _cli("registry", "promote", reg, "1.1.0", "--channel", "canary", "--approver", "bob", "--rollout", "20")
    _cli("edge", "update", "--repo", url, "--device-id", "shop-7", *device)
    expected = "1.1.0" if in_canary("shop-7", 20) else "1.0.0"
    assert json.loads(_cli("edge", "status", *device))["active"] == expected
    _cli("registry", "promote", reg, "1.1.0", "--channel", "stable", "--approver", "bob")
    _cli("edge", "update", "--repo", url, "--device-id", "shop-7", *device)
    status = json.loads(_cli("edge", "status", *device))
    assert status["active"] == "1.1.0" and status["provenance"]["evaluation"] == "passed"

    rows = tmp_path / "rows.csv"
    table = _write_csv(rows, 400)
    out = [json.loads(line) for line in _cli("edge", "predict", *device, rows).splitlines()]
    assert len(out) == 400 and {o["version"] for o in out} == {"1.1.0"}
    proba = _torch_probabilities(sim_run, table)
    np.testing.assert_allclose([o["probability"] for o in out], proba, atol=1e-5)
    assert [o["prediction"] for o in out] == (proba >= 0.5).astype(int).tolist()
    assert np.ptp(proba) > 0.05  # a trained model whose output depends on the row, not a constant

    _cli("edge", "rollback", *device)
    assert json.loads(_cli("edge", "status", *device))["active"] == "1.0.0"
    _cli("registry", "rollback", reg, "--channel", "stable", "--approver", "carol", "--reason", "field reports")
    status_text = _cli("registry", "status", reg)
    assert "stable: 1.0.0" in status_text and "forced: rollback: field reports" in status_text
    events = [json.loads(x)["event"] for x in (reg / "audit.jsonl").read_text().splitlines()]
    assert events[-4:] == ["promote", "promote", "promote", "rollback"]


def test_edge_path_runs_without_the_training_stack(operator, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=BLOCKED))
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    _cli("registry", "promote", operator["reg"], "1.1.0", "--channel", "stable", "--approver", "bob")
    home = tmp_path / "lean-device"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "fedready.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=120)  # fmt: skip

    probe = run("simulate", "--rounds", "1")  # the blocker really blocks: training cannot start
    assert probe.returncode != 0 and "not part of the edge install" in probe.stderr
    upd = run("edge", "update", "--repo", operator["url"], "--device-id", "lean-1", "--home", home,
              "--root", operator["root"], "--public-key", operator["pub"])  # fmt: skip
    assert upd.returncode == 0, upd.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"age": 52, "workclass": "Private", "education": "Doctorate", "education-num": 16,
                                "marital-status": "Married-civ-spouse", "occupation": "Prof-specialty",
                                "relationship": "Husband", "race": "White", "sex": "Male", "capital-gain": 15024,
                                "capital-loss": 0, "hours-per-week": 60, "native-country": "United-States",
                                "fnlwgt": 1}) + "\n")  # fmt: skip
    pred = run("edge", "predict", "--home", home, rows)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)["version"] == "1.1.0"
    assert run("verify", home / "models" / "1.1.0", "--public-key", operator["pub"]).returncode == 0
