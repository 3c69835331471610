"""Seeded partitioners that split one table into per-client shards (label, group or quantity skew).

Every partitioner is registered under a string key; :func:`create_partitioner`
is loud on unknown keys. Label and attribute skew use the Dirichlet scheme of
Hsu et al. 2019 ("Measuring the effects of non-identical data distribution",
arXiv:1909.06335): for each class, client shares are drawn from Dir(alpha).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from fedready.errors import ConfigError

__all__ = [
    "DirichletPartitioner",
    "IidPartitioner",
    "Partitioner",
    "QuantityPartitioner",
    "SensitivePartitioner",
    "create_partitioner",
    "partitioner_names",
]

_MAX_DRAWS = 1000  # redraws allowed to give every client at least min_size rows


class Partitioner(ABC):
    """Split row indices among ``num_partitions`` clients.

    Subclasses implement :meth:`_assign`; :meth:`partition` validates the request
    and checks the result.
    """

    name: ClassVar[str]

    def __init__(self, *, min_size: int = 20) -> None:
        if min_size < 1:
            raise ConfigError("min_size", f"must be >= 1, got {min_size}")
        self.min_size = min_size

    def partition(
        self,
        *,
        labels: np.ndarray,
        attributes: dict[str, np.ndarray],
        num_partitions: int,
        seed: int,
    ) -> list[np.ndarray]:
        """Return one sorted index array per client; together they cover every row once.

        Raises
        ------
        ConfigError
            If there are more clients than rows allow (``num_partitions * min_size > rows``).
        """
        n = len(labels)
        if num_partitions < 1:
            raise ConfigError("num_clients", f"must be >= 1, got {num_partitions}")
        if num_partitions * self.min_size > n:
            raise ConfigError(
                "num_clients",
                f"{num_partitions} clients need at least {num_partitions * self.min_size} rows "
                f"({self.min_size} each) but the data has {n}; use at most {n // self.min_size} clients "
                "or lower --min-client-rows",
            )
        rng = np.random.default_rng(seed)
        parts = self._assign(labels=labels, attributes=attributes, k=num_partitions, rng=rng)
        return [np.sort(p) for p in parts]

    @abstractmethod
    def _assign(
        self, *, labels: np.ndarray, attributes: dict[str, np.ndarray], k: int, rng: np.random.Generator
    ) -> list[np.ndarray]: ...

    def _dirichlet_by_key(self, key: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
        values = np.unique(key)
        for _ in range(_MAX_DRAWS):
            parts: list[list[np.ndarray]] = [[] for _ in range(k)]
            for v in values:
                idx = rng.permutation(np.flatnonzero(key == v))
                shares = rng.dirichlet(np.full(k, alpha))
                cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
                for i, chunk in enumerate(np.split(idx, cuts)):
                    parts[i].append(chunk)
            out = [np.concatenate(p) for p in parts]
            if min(len(p) for p in out) >= self.min_size:
                return out
        raise ConfigError(
            "alpha",
            f"could not give each of {k} clients {self.min_size} rows in {_MAX_DRAWS} draws; "
            "raise alpha or use fewer clients",
        )


class IidPartitioner(Partitioner):
    """Shuffle and split into near-equal shards."""

    name = "iid"

    def _assign(self, *, labels, attributes, k, rng):  # noqa: D102
        return np.array_split(rng.permutation(len(labels)), k)


class DirichletPartitioner(Partitioner):
    """Label skew: each class is spread over clients with shares drawn from Dir(alpha)."""

    name = "dirichlet"

    def __init__(self, *, alpha: float = 0.5, min_size: int = 20) -> None:
        super().__init__(min_size=min_size)
        if not alpha > 0:
            raise ConfigError("alpha", f"must be > 0, got {alpha}")
        self.alpha = alpha

    def _assign(self, *, labels, attributes, k, rng):  # noqa: D102
        return self._dirichlet_by_key(labels, k, self.alpha, rng)


class SensitivePartitioner(DirichletPartitioner):
    """Skew by a sensitive attribute: each of its groups is spread over clients by Dir(alpha).

    ``attributes`` maps each sensitive attribute to its group label per row (numeric attributes
    by their declared bins); ``attribute`` empty means the first one.
    """

    name = "sensitive"

    def __init__(self, *, alpha: float = 0.5, attribute: str = "", min_size: int = 20) -> None:
        super().__init__(alpha=alpha, min_size=min_size)
        self.attribute = attribute

    def _assign(self, *, labels, attributes, k, rng):  # noqa: D102
        if not attributes:
            raise ConfigError(
                "partitioner",
                "'sensitive' skews by a sensitive attribute but the schema declares none; add sensitive = [...] "
                "to the schema or pick another partitioner",
            )
        attribute = self.attribute or next(iter(attributes))
        if attribute not in attributes:
            raise ConfigError(
                "skew-attribute",
                f"unknown sensitive attribute '{attribute}'; expected one of: {', '.join(attributes)}",
            )
        return self._dirichlet_by_key(attributes[attribute], k, self.alpha, rng)


class QuantityPartitioner(Partitioner):
    """Quantity skew: client sizes drawn from Dir(alpha); rows assigned at random."""

    name = "quantity"

    def __init__(self, *, alpha: float = 0.5, min_size: int = 20) -> None:
        super().__init__(min_size=min_size)
        if not alpha > 0:
            raise ConfigError("alpha", f"must be > 0, got {alpha}")
        self.alpha = alpha

    def _assign(self, *, labels, attributes, k, rng):  # noqa: D102
        n = len(labels)
        # Every client gets min_size rows; the rest is split by Dirichlet shares.
        spare = n - k * self.min_size
        sizes = self.min_size + np.floor(rng.dirichlet(np.full(k, self.alpha)) * spare).astype(int)
        sizes[: n - sizes.sum()] += 1  # hand out the rounding remainder
        return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


_PARTITIONERS: dict[str, type[Partitioner]] = {
    p.name: p for p in (IidPartitioner, DirichletPartitioner, SensitivePartitioner, QuantityPartitioner)
}


def partitioner_names() -> list[str]:
    """Return the registered partitioner keys."""
    return list(_PARTITIONERS)


def create_partitioner(name: str, **params: object) -> Partitioner:
    """Build the partitioner registered under ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is not registered.
    """
    cls = _PARTITIONERS.get(name)
    if cls is None:
        raise ConfigError("partitioner", f"unknown partitioner '{name}'; expected one of: {', '.join(_PARTITIONERS)}")
    # Options that do not apply to this partitioner (alpha for iid, say) are ignored.
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})
