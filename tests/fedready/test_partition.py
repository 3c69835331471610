import numpy as np
import pytest

from fedready import partition as P
from fedready.errors import ConfigError
from fedready.partition import create_partitioner, partitioner_names

RNG = np.random.default_rng(0)
LABELS = (RNG.random(5000) < 0.25).astype(int)
SEX = np.where(RNG.random(5000) < 0.33, "Female", "Male")
ATTRS = {"sex": SEX}


def _parts(name, k=10, seed=0, **kw):
    return create_partitioner(name, **kw).partition(labels=LABELS, attributes=ATTRS, num_partitions=k, seed=seed)


def test_every_partitioner_subclass_is_registered():
    subclasses = set()
    todo = [P.Partitioner]
    while todo:
        for sub in todo.pop().__subclasses__():
            subclasses.add(sub)
            todo.append(sub)
    assert {c.name for c in subclasses} == set(partitioner_names())


@pytest.mark.parametrize("name", ["iid", "dirichlet", "sensitive", "quantity"])
def test_partitions_cover_every_row_once_and_are_deterministic(name):
    parts = _parts(name)
    allrows = np.concatenate(parts)
    assert len(allrows) == len(LABELS) and len(np.unique(allrows)) == len(LABELS)
    assert min(len(p) for p in parts) >= 20
    again = _parts(name)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = _parts(name, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_are_equal_and_labels_balanced():
    parts = _parts("iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    rates = [LABELS[p].mean() for p in parts]
    assert np.std(rates) < 0.03


def test_dirichlet_skews_labels_more_as_alpha_shrinks():
    def spread(alpha):
        return np.std([LABELS[p].mean() for p in _parts("dirichlet", alpha=alpha)])

    assert spread(0.1) > spread(1.0) > spread(100.0)
    assert spread(100.0) < 0.05


def test_sensitive_skew_moves_the_attribute_not_the_labels_directly():
    parts = _parts("sensitive", alpha=0.2, attribute="sex")
    female = [np.mean(SEX[p] == "Female") for p in parts]
    assert np.std(female) > 0.2


def test_quantity_skew_varies_sizes():
    sizes = [len(p) for p in _parts("quantity", alpha=0.3)]
    assert max(sizes) > 3 * min(sizes)
    assert sum(sizes) == len(LABELS)


def test_unknown_partitioner_lists_the_choices():
    with pytest.raises(ConfigError, match="expected one of: iid, dirichlet, sensitive, quantity"):
        create_partitioner("nope")


def test_more_clients_than_rows_is_refused():
    with pytest.raises(ConfigError, match="num_clients"):
        _parts("iid", k=len(LABELS))


def test_unknown_skew_attribute_is_refused():
    with pytest.raises(ConfigError, match="race"):
        _parts("sensitive", attribute="race")
