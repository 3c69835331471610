"""The training plan: defaults chosen from rows per client, never overriding what the user set."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.config import make_config
from fedready.simulations.plan import LARGE_MODEL_ROWS, NOISE_NORM, final_noise, plan_training
from fedready.task import TaskSpec, load_task
from tests.conftest import write_task


@pytest.fixture(scope="module")
def adult():
    return load_task()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("plan"), rows=900, test_rows=300)


def _schema(task_paths):
    return load_task(TaskSpec(data=str(task_paths["data"]), schema=str(task_paths["schema"]))).schema


def test_the_embedded_data_keeps_its_defaults(adult):
    plan = plan_training({}, train_rows=len(adult.train), schema=adult.schema)
    assert plan.options == {} and plan.note == ""
    assert plan.rows_per_client >= LARGE_MODEL_ROWS


def test_few_rows_per_client_get_logreg_and_a_rate_whose_noise_norm_is_bounded(small):
    schema = _schema(small)
    plan = plan_training({"num_clients": 3}, train_rows=900, schema=schema)
    assert plan.options["model"] == "logreg"
    default = make_config(model="logreg").lr
    assert 0 < plan.options["lr"] < default
    # rounded down to two significant digits: under the bound, and within 10% of it
    assert 0.9 * NOISE_NORM <= plan.noise_norm <= NOISE_NORM
    assert plan.note.startswith("plan for 3 clients of about 240 training rows, 2 classes: model logreg")
    assert "pass --model or --lr to choose" in plan.note


def test_what_the_user_set_is_kept(small):
    schema = _schema(small)
    plan = plan_training({"num_clients": 3, "lr": 2.0, "model": "mlp"}, train_rows=900, schema=schema)
    assert plan.options == {} and plan.note == ""
    # the rules were measured under DP, on logreg, with sample-level DP only: nothing is chosen elsewhere
    assert plan_training({"num_clients": 3, "dp": False}, train_rows=900, schema=schema).options == {}
    assert plan_training({"num_clients": 3, "model": "mlp"}, train_rows=900, schema=schema).options == {}
    client_dp = {"num_clients": 3, "client_dp": "server-fixed", "client_noise_multiplier": 0.5}
    assert plan_training(client_dp, train_rows=900, schema=schema).options == {"model": "logreg"}


def test_the_noise_grows_with_the_rate_and_shrinks_with_rows_and_clients():
    cfg = make_config(model="logreg")
    base = final_noise(cfg, 300)
    assert final_noise(make_config(model="logreg", lr=cfg.lr / 2), 300) == pytest.approx(base / 2)
    assert final_noise(cfg, 3000) < base / 5  # batch and subsampling both help
    assert final_noise(cfg, 300, clients=40) == pytest.approx(base / 2)
    assert math.isfinite(base) and base > 0


@pytest.mark.slow
def test_simulate_prints_the_plan_in_one_line_and_records_the_rate(small, tmp_path):
    res = CliRunner().invoke(app, ["simulate", "--data", str(small["data"]), "--schema", str(small["schema"]), "--test",
                                   str(small["test"]), "--clients", "3", "--rounds", "10", "--epsilon", "0.5",
                                   "--out", str(tmp_path), "--name", "r"])  # fmt: skip
    assert res.exit_code == 0, res.output[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("note: plan for ")]
    expected = plan_training({"num_clients": 3, "rounds": 10, "epsilon": 0.5}, train_rows=900, schema=_schema(small))
    assert lines == [f"note: {expected.note}"] and "lr " in lines[0]
    import json

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert cfg["model"] == "logreg" and cfg["lr"] == expected.options["lr"] < 6.0
