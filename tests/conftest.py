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
