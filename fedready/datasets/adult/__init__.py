"""The embedded UCI Adult (Census Income) data set: checksum-verified loading, its schema and policy.

The vendored files are the original ``adult.data`` and ``adult.test`` (see PROVENANCE.md),
gzip-compressed. This folder is the only place besides the task layer
(:mod:`fedready.task`) that knows the data set by name.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

from fedready.data import Table, parse_csv
from fedready.errors import IntegrityError
from fedready.schema import DataSchema, load_schema

__all__ = ["ADULT_SHA256", "CAVEATS", "adult_schema", "load_adult", "policy_path", "schema_path"]

# sha256 of the original (decompressed) files, as listed in PROVENANCE.md.
ADULT_SHA256 = {
    "train": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
_ADULT_FILES = {"train": "adult.data.gz", "test": "adult.test.gz"}
_ADULT_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]  # fmt: skip


CAVEATS = [
    "Adult is 1994 US census data: the world has changed; do not read decisions as about today's people.",
]


@lru_cache(maxsize=2)
def load_adult(split: str = "train") -> Table:
    """Load the vendored UCI Adult split ``"train"`` (32,561 rows) or ``"test"`` (16,281).

    The decompressed bytes are checked against the sha256 in ``PROVENANCE.md``
    before any row is parsed.

    Raises
    ------
    IntegrityError
        If the vendored file's digest differs from the recorded one.
    """
    if split not in _ADULT_FILES:
        raise ValueError(f"unknown Adult split '{split}'; expected one of: train, test")
    ref = resources.files("fedready.datasets.adult").joinpath(_ADULT_FILES[split])
    raw = gzip.decompress(ref.read_bytes())
    got = hashlib.sha256(raw).hexdigest()
    if got != ADULT_SHA256[split]:
        raise IntegrityError(
            f"vendored {_ADULT_FILES[split]} is corrupt: expected sha256 {ADULT_SHA256[split]}, "
            f"got {got}; reinstall fedready"
        )
    return parse_csv(raw.decode("utf-8"), _ADULT_COLUMNS, source=_ADULT_FILES[split].removesuffix(".gz"))


def schema_path() -> Path:
    """Path of the declared schema of the vendored Adult data set."""
    return Path(str(resources.files("fedready.datasets.adult").joinpath("schema.toml")))


def adult_schema() -> DataSchema:
    """Return the declared schema of the vendored Adult data set."""
    return load_schema(schema_path())


def policy_path() -> Path:
    """Path of the release-gate policy shipped beside the data set (it names Adult's columns)."""
    return Path(str(resources.files("fedready.datasets.adult").joinpath("policy.toml")))
