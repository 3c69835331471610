"""Shared fixtures: small, fast configurations of the embedded federation, and synthetic tasks."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

# Ray and Flower print to the terminal; keep test output readable.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Under pytest-xdist (`pytest -n 2`, as CI runs): each test module runs whole on one worker, so a
# module-scoped federation (tests/deploy) starts once; the modules that share a session fixture running a
# whole simulation go to the same worker, so each such fixture is computed once.
EXPENSIVE_SESSION_FIXTURES = ("evaluated_run", "evaluated_multiclass_run", "sim_run", "pipeline_run")


def _module_groups() -> dict[str, str]:
    """Test module (as in a node id) -> its scheduling group: the first module sharing a fixture with it."""
    root = Path(__file__).resolve().parent.parent
    group: dict[str, str] = {}
    first: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.rglob("test_*.py")):
        module = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        used = [f for f in EXPENSIVE_SESSION_FIXTURES if re.search(rf"\b{f}\b", text)]
        owners = {group.get(first[f], first[f]) for f in used if f in first}
        target = min(owners) if owners else module
        for f in used:
            first.setdefault(f, target)
        for m, g in list(group.items()):  # merge groups this module joins together
            if g in owners:
                group[m] = target
        group[module] = target
    return group


def _module_weights() -> dict[str, float]:
    """A module's expected cost, read from its source: end-to-end (``slow``) tests dominate."""
    root = Path(__file__).resolve().parent.parent
    weights = {}
    for path in Path(__file__).parent.rglob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        tests = len(re.findall(r"^(?:async )?def test_", text, re.M))
        slow = tests if re.search(r"^pytestmark = .*mark\.slow", text, re.M) else text.count("@pytest.mark.slow")
        weights[path.relative_to(root).as_posix()] = 40.0 * slow + 0.5 * (tests - slow)
    return weights


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    groups, cost = _module_groups(), {}
    for module, weight in _module_weights().items():
        cost[groups.get(module, module)] = cost.get(groups.get(module, module), 0.0) + weight

    class ModuleGroupScheduling(LoadFileScheduling):
        """Whole modules (and groups sharing a simulated run) per worker, the most expensive first."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return groups.get(module, module)

        def _assign_work_unit(self, node) -> None:
            if self.workqueue:  # the most expensive scope left goes next (longest first balances the workers)
                scope = max(self.workqueue, key=lambda s: cost.get(s, 0.0))
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return ModuleGroupScheduling(config, log)


# The user-model fixtures (tests/fixtures/fedready_test_models.py) are imported by name, as a user's
# `--model module:factory` is: in this process and, through PYTHONPATH, in subprocesses and Ray workers.
FIXTURES = Path(__file__).parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="session")
def adult_schema():
    from fedready.datasets.adult import adult_schema as load

    return load()


_COLUMNS = """
[[columns]]
name = "age"
kind = "numeric"
min = 18
max = 80
bins = [30, 45, 60]

[[columns]]
name = "income"
kind = "numeric"
min = 0
max = 1000000
transform = "log1p"
actionable = true

[[columns]]
name = "group"
kind = "categorical"
categories = ["A", "B"]

[[columns]]
name = "color"
kind = "categorical"
categories = ["red", "green", "blue"]
actionable = true

[[columns]]
name = "score"
kind = "numeric"
min = -4
max = 4
"""


def synthetic_rows(n: int, seed: int, *, classes: int = 2) -> list[str]:
    """CSV lines (header first) of a synthetic table with a planted sensitive attribute ``group``.

    The label depends on age, log income, colour, a noisy ``score`` (5% of it missing as ``?``)
    and on ``group`` itself (group A is favoured): a model that learns the data inherits the bias,
    which the fairness suites must see. Binary labels are ``yes``/``no``; multi-class labels the
    integers ``0 .. classes-1`` (ordered bands of the same latent score).
    """
    rng = np.random.default_rng(seed)
    g = rng.choice(["A", "B"], n, p=[0.6, 0.4])
    age = rng.integers(18, 80, n)
    income = np.round(np.exp(rng.normal(10, 1, n))).astype(int)
    color = rng.choice(["red", "green", "blue"], n)
    s = rng.normal(0, 1, n)
    z = 0.04 * (age - 45) + 0.8 * (np.log(income) - 10) + 0.7 * (g == "A") + 0.9 * s + 0.5 * (color == "red")
    if classes == 2:
        y = np.where(rng.random(n) < 1 / (1 + np.exp(-(z - 0.3))), "yes", "no")
    else:
        cuts = np.quantile(z, np.linspace(0, 1, classes + 1)[1:-1])
        y = np.digitize(z + rng.logistic(0, 0.3, n), cuts).astype(str)
    score = np.round(s, 3).astype(str)
    score[rng.random(n) < 0.05] = "?"
    lines = ["age,income,group,color,score,target"]
    lines += [",".join(map(str, r)) for r in zip(age, income, g, color, score, y, strict=True)]
    return lines


def write_task(folder: Path, *, classes: int = 2, rows: int = 1500, test_rows: int = 600, seed: int = 0) -> dict:
    """Write train.csv, test.csv and schema.toml of a synthetic task into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join(synthetic_rows(rows, seed, classes=classes)) + "\n")
    (folder / "test.csv").write_text("\n".join(synthetic_rows(test_rows, seed + 1, classes=classes)) + "\n")
    target = ('positive = ["yes"]\nnegative = ["no"]' if classes == 2
              else f"classes = [{', '.join(str(i) for i in range(classes))}]")  # fmt: skip
    (folder / "schema.toml").write_text(f'name = "synthetic-{classes}"\nsensitive = ["group"]\n{_COLUMNS}\n'
                                        f'[target]\ncolumn = "target"\n{target}\n')  # fmt: skip
    return {"data": folder / "train.csv", "test": folder / "test.csv", "schema": folder / "schema.toml"}


@pytest.fixture(scope="session")
def binary_task(tmp_path_factory):
    """A synthetic binary task (yes/no target, sensitive attribute ``group``)."""
    return write_task(tmp_path_factory.mktemp("binary-task"), classes=2)


@pytest.fixture(scope="session")
def multiclass_task(tmp_path_factory):
    """A synthetic three-class task (integer classes 0, 1, 2; sensitive attribute ``group``)."""
    return write_task(tmp_path_factory.mktemp("multiclass-task"), classes=3)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One short ``fedready pipeline`` (2 rounds of the default MLP), shared by the slow tests that need it.

    Returns (out folder, the CLI arguments, the first run's result).
    """
    from typer.testing import CliRunner

    from fedready.cli import app

    out = tmp_path_factory.mktemp("pipeline")
    # a 2-round model is not meant to pass the gates: published with a recorded override, for the device tests
    args = ["pipeline", "--out", str(out), "--model", "mlp", "--rounds", "2", "--json", "--force", "--reason",
            "test fixture: a 2-round model"]  # fmt: skip
    return out, args, CliRunner().invoke(app, args)
