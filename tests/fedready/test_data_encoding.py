import gzip
import hashlib

import numpy as np
import pytest

from fedready.data import Table
from fedready.datasets import adult as data_mod
from fedready.datasets.adult import ADULT_SHA256, load_adult
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError, IntegrityError
from fedready.schema import load_schema


def test_adult_row_counts_and_labels(adult_schema):
    train, test = load_adult("train"), load_adult("test")
    assert len(train) == 32561 and len(test) == 16281
    # Positive rate documented for Adult: about 24% in both splits.
    assert 0.23 < train.labels(adult_schema).mean() < 0.25
    assert 0.23 < test.labels(adult_schema).mean() < 0.25


def test_corrupt_vendored_file_is_refused(monkeypatch):
    load_adult.cache_clear()
    good = ADULT_SHA256["train"]
    monkeypatch.setitem(data_mod.ADULT_SHA256, "train", "0" * 64)
    with pytest.raises(IntegrityError, match=good):  # the message shows the digest actually found
        load_adult("train")
    load_adult.cache_clear()


def test_vendored_bytes_match_provenance_digest():
    from importlib import resources

    raw = gzip.decompress(resources.files("fedready.datasets.adult").joinpath("adult.test.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == ADULT_SHA256["test"]


def test_encoding_comes_from_the_schema_not_the_rows(adult_schema):
    enc = FeatureEncoder(adult_schema)
    full = load_adult("train")
    # Encoding one row alone gives the same vector as encoding it among all rows:
    # nothing is fitted on the data.
    alone = enc.transform(full.take(np.array([5])).columns)
    among = enc.transform(full.columns)[5:6]
    np.testing.assert_array_equal(alone, among)
    assert enc.width == len(enc.feature_names) == alone.shape[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("17", -1.0), ("90", 1.0), ("200", 1.0), ("5", -1.0), ("53.5", 0.0)],  # clipped to the declared range
)
def test_numeric_scaling_uses_declared_range(adult_schema, value, expected):
    enc = FeatureEncoder(adult_schema)
    cols = {k: v for k, v in load_adult("test").take(np.array([0])).columns.items()}
    cols["age"] = np.array([value])
    x = enc.transform(cols)
    assert x[0, enc.feature_names.index("age")] == pytest.approx(expected)


def test_unknown_and_missing_categories_share_the_unknown_slot(adult_schema):
    enc = FeatureEncoder(adult_schema)
    cols = {k: np.repeat(v, 3) for k, v in load_adult("test").take(np.array([0])).columns.items()}
    cols["workclass"] = np.array(["Private", "?", "Martian"])
    x = enc.transform(cols)
    i_priv = enc.feature_names.index("workclass=Private")
    i_unk = enc.feature_names.index("workclass=<unknown>")
    assert x[0, i_priv] == 1 and x[0, i_unk] == 0
    assert x[1, i_unk] == 1 and x[2, i_unk] == 1
    # every categorical block is one-hot
    block = [i for i, n in enumerate(enc.feature_names) if n.startswith("workclass=")]
    assert (x[:, block].sum(axis=1) == 1).all()


def test_log1p_feature_is_monotone(adult_schema):
    enc = FeatureEncoder(adult_schema)
    cols = {k: np.repeat(v, 3) for k, v in load_adult("test").take(np.array([0])).columns.items()}
    cols["capital-gain"] = np.array(["0", "1000", "99999"])
    col = enc.transform(cols)[:, enc.feature_names.index("capital-gain")]
    assert col[0] == -1.0 and col[2] == 1.0 and -1 < col[1] < 1


def test_undeclared_label_value_is_an_error(adult_schema):
    t = load_adult("test").take(np.arange(3))
    cols = dict(t.columns)
    cols["income"] = np.array(["<=50K", "maybe", ">50K"])
    with pytest.raises(ConfigError, match="^target: row 2: label 'maybe' in column 'income' is not declared"):
        Table(cols).labels(adult_schema)


def test_schema_digest_is_stable_and_sensitive(adult_schema, tmp_path):
    assert adult_schema.digest() == adult_schema.digest()
    other = adult_schema.model_copy(update={"sensitive": ["sex"]})
    assert other.digest() != adult_schema.digest()


def test_bad_schema_file_names_the_problem(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'name = "x"\nsensitive = ["nope"]\n[target]\ncolumn = "y"\npositive=["1"]\nnegative=["0"]\n'
        '[[columns]]\nname = "a"\nkind = "numeric"\nmin = 0\nmax = 1\n'
    )
    with pytest.raises(ConfigError, match="nope"):
        load_schema(p)
