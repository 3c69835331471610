"""Shared fixtures: small, fast configurations of the embedded federation."""

from __future__ import annotations

import os

import pytest

# Ray and Flower print to the terminal; keep test output readable.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def adult_schema():
    from fedready.data import adult_schema as load

    return load()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """One short ``fedready pipeline`` (2 rounds of the default MLP), shared by the slow tests that need it.

    Returns (out folder, the CLI arguments, the first run's result).
    """
    from typer.testing import CliRunner

    from fedready.cli import app

    out = tmp_path_factory.mktemp("pipeline")
    args = ["pipeline", "--out", str(out), "--model", "mlp", "--rounds", "2", "--json"]
    return out, args, CliRunner().invoke(app, args)
