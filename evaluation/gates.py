"""Release gates: a TOML policy of limits, checked against an evaluation report.

Gates are registered under string keys (the policy's keys). A gate is either
plain (``min_accuracy = 0.8``) or keyed by a sensitive attribute or a
perturbation (``[gates.max_equalized_odds_difference] sex = 0.1``). A key can stand for many,
so that a policy need not name any data set's columns: ``"*" = 0.2`` is every sensitive
attribute of the schema, ``"missing-*"`` every feature column's perturbation (``"swap-*"`` every
categorical one); a key named explicitly overrides its wildcard. For a multi-class target the
fairness gates read the worst class (one-vs-rest). Unknown keys,
attributes, perturbations or non-numeric limits are refused when the policy is
loaded, naming the key. A measured value that is undefined (no DP, no baseline,
an empty group) fails its gate, and the report says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fedready._io import read_toml
from fedready.errors import ConfigError
from fedready.schema import DataSchema

__all__ = ["GATES", "GateResult", "Policy", "check_gates", "default_policy_path", "load_policy"]

Report = dict[str, Any]


@dataclass(frozen=True)
class Gate:
    """One registered gate: which way the limit points and how to read the measured value."""

    direction: Literal["min", "max"]
    keyed_by: Literal["", "attribute", "perturbation"]
    measure: Callable[[Report, str], float | None]
    what: str  # plain-words description for the table and the README


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def _lift(r: Report) -> float | None:
    acc, base = _get(r, "metrics", "accuracy"), _get(r, "metrics", "majority_rate")
    return None if acc is None or base is None else acc - base


def _fair(metric: str) -> Callable[[Report, str], float | None]:
    return lambda r, attr: _get(r, "fairness", attr, metric)


def _pert(metric: str) -> Callable[[Report, str], float | None]:
    return lambda r, name: _get(r, "stability", "perturbations", name, metric)


GATES: dict[str, Gate] = {
    "min_accuracy": Gate("min", "", lambda r, _: _get(r, "metrics", "accuracy"), "accuracy on the benchmark"),
    "min_accuracy_lift": Gate("min", "", lambda r, _: _lift(r), "accuracy minus the majority class's share"),
    "max_ece": Gate("max", "", lambda r, _: _get(r, "calibration", "ece"), "expected calibration error"),
    "max_brier": Gate("max", "", lambda r, _: _get(r, "calibration", "brier"), "Brier score"),
    "max_epsilon": Gate("max", "", lambda r, _: _get(r, "privacy", "epsilon"), "sample-level epsilon (ledger)"),
    "max_client_epsilon": Gate("max", "", lambda r, _: _get(r, "privacy", "client_epsilon"), "client-level epsilon"),
    "max_client_accuracy_std": Gate("max", "", lambda r, _: _get(r, "federated", "client_accuracy", "std"),
                                    "std of accuracy across clients"),
    "min_worst_client_accuracy": Gate("min", "", lambda r, _: _get(r, "federated", "client_accuracy",
                                                                   "worst_accuracy"), "worst client's accuracy"),
    "max_churn": Gate("max", "", lambda r, _: _get(r, "stability", "churn"), "decisions changed vs --baseline"),
    "max_seed_disagreement": Gate("max", "", lambda r, _: _get(r, "stability", "seeds", "disagreement_rate"),
                                  "rows on which --seeds retrains disagree"),
    "max_equalized_odds_difference": Gate("max", "attribute", _fair("equalized_odds_difference"),
                                          "equalized odds difference"),
    "max_equal_opportunity_difference": Gate("max", "attribute", _fair("equal_opportunity_difference"),
                                             "equal opportunity difference"),
    "max_demographic_parity_difference": Gate("max", "attribute", _fair("demographic_parity_difference"),
                                              "demographic parity difference"),
    "min_demographic_parity_ratio": Gate("min", "attribute", _fair("demographic_parity_ratio"),
                                         "demographic parity ratio"),
    "min_worst_group_accuracy": Gate("min", "attribute", _fair("worst_group_accuracy"), "worst group's accuracy"),
    "max_mitigated_equalized_odds_difference": Gate(
        "max", "attribute", lambda r, attr: _get(r, "mitigation", "eod_after")
        if _get(r, "mitigation", "attribute") == attr else None,
        "equalized odds difference after the stored post-processing (held-out half)"),
    "max_flip_rate": Gate("max", "perturbation", _pert("flip_rate"), "decisions flipped by the perturbation"),
    "max_accuracy_drop": Gate("max", "perturbation", _pert("accuracy_drop"), "accuracy lost to the perturbation"),
}  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """A loaded policy: ``limits`` maps ``(gate, key)`` to the limit (key ``""`` for plain gates)."""

    name: str
    version: str
    limits: tuple[tuple[str, str, float], ...]

    def perturbations(self) -> list[str]:
        """Perturbations the policy names (the stability suite must measure them)."""
        return sorted({k for g, k, _ in self.limits if GATES[g].keyed_by == "perturbation"})


@dataclass(frozen=True)
class GateResult:
    """One checked limit."""

    gate: str  # e.g. "max_equalized_odds_difference[sex]"
    measured: float | None
    limit: float
    passed: bool
    what: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_policy_path() -> Path:
    """Path of the policy shipped with fedready (``fedready/evaluation/default_policy.toml``)."""
    return Path(str(resources.files("fedready.evaluation").joinpath("default_policy.toml")))


def _limit(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field, f"the limit must be a finite number (got {value!r})")
    return float(value)


def load_policy(path: str | Path | None, schema: DataSchema) -> Policy:
    """Read and check a gate policy (the shipped default if ``path`` is None).

    Raises
    ------
    ConfigError
        Naming the policy key at fault: an unknown gate, attribute or perturbation,
        a table where a number belongs or the reverse, or a non-numeric limit.
    """
    from fedready.evaluation.stability import check_perturbation

    p = Path(path) if path is not None else default_policy_path()
    raw = read_toml(p, field="gate", missing=f"policy file {p} does not exist")
    # [monitoring] holds the drift thresholds of `fedready monitor` (fedready.monitoring.MonitoringPolicy)
    unknown_top = sorted(set(raw) - {"name", "version", "gates", "monitoring"})
    if unknown_top:
        raise ConfigError(unknown_top[0], f"unknown policy key in {p}; expected: name, version, [gates], [monitoring]")
    gates = raw.get("gates")
    if not isinstance(gates, dict) or not gates:
        raise ConfigError("gates", f"{p} declares no [gates] table")
    limits: dict[tuple[str, str], float] = {}
    for name, value in gates.items():
        gate = GATES.get(name)
        field = f"gates.{name}"
        if gate is None:
            raise ConfigError(field, f"unknown gate '{name}'; expected one of: {', '.join(GATES)}")
        if not gate.keyed_by:
            if isinstance(value, dict):
                raise ConfigError(field, f"'{name}' takes one number, not a table")
            limits[(name, "")] = _limit(field, value)
            continue
        if not isinstance(value, dict) or not value:
            example = "sex" if gate.keyed_by == "attribute" else '"gaussian-0.1"'
            raise ConfigError(field, f"'{name}' takes a table of {gate.keyed_by} = limit, e.g. [gates.{name}] "
                                     f"{example} = 0.1")  # fmt: skip
        for key in sorted(value, key=lambda k: not k.endswith("*")):  # wildcards first: explicit keys override
            lim = _limit(f"{field}.{key}", value[key])
            if key.endswith("*"):
                for concrete in _expand(gate.keyed_by, key, schema, field):
                    limits[(name, concrete)] = lim
                continue
            if gate.keyed_by == "attribute" and key not in schema.sensitive:
                raise ConfigError(f"{field}.{key}", f"unknown sensitive attribute '{key}'; the schema declares: "
                                                    f"{', '.join(schema.sensitive) or 'none'}")  # fmt: skip
            if gate.keyed_by == "perturbation":
                check_perturbation(schema, key, field=f"{field}.{key}")
            limits[(name, key)] = lim
    flat = tuple((g, k, v) for (g, k), v in limits.items())
    return Policy(str(raw.get("name", p.stem)), str(raw.get("version", "1")), flat)


def _expand(keyed_by: str, key: str, schema: DataSchema, field: str) -> list[str]:
    """The keys a wildcard stands for: ``*`` every sensitive attribute, ``<kind>-*`` every fitting feature."""
    from fedready.schema import CategoricalColumn

    if keyed_by == "attribute":
        if key != "*":
            raise ConfigError(f"{field}.{key}", 'an attribute wildcard is "*" (every sensitive attribute)')
        return list(schema.sensitive)
    kind = key.removesuffix("*").removesuffix("-")
    if kind == "missing":
        return [f"missing-{c.name}" for c in schema.features]
    if kind == "swap":
        return [f"swap-{c.name}" for c in schema.features if isinstance(c, CategoricalColumn)]
    raise ConfigError(f"{field}.{key}", 'a perturbation wildcard is "missing-*" or "swap-*"')


def check_gates(policy: Policy, report: Report) -> list[GateResult]:
    """Check every limit of ``policy`` against ``report``; an undefined measurement fails."""
    out = []
    for name, key, limit in policy.limits:
        gate = GATES[name]
        value = gate.measure(report, key)
        label = f"{name}[{key}]" if key else name
        what = f"{gate.what} ({key})" if key else gate.what
        if value is None:
            out.append(GateResult(label, None, limit, False, what, "undefined: " + _why_undefined(name)))
            continue
        ok = value >= limit if gate.direction == "min" else value <= limit
        out.append(GateResult(label, float(value), limit, bool(ok), what))
    return out


def _why_undefined(name: str) -> str:
    return {
        "max_epsilon": "the run has no sample-level DP",
        "max_client_epsilon": "the run has no client-level DP",
        "max_churn": "no --baseline run given",
        "max_seed_disagreement": "no --seeds retrains",
        "max_client_accuracy_std": "no federated evaluation (run `fedready evaluate RUN` first)",
        "min_worst_client_accuracy": "no federated evaluation (run `fedready evaluate RUN` first)",
        "max_mitigated_equalized_odds_difference": "no threshold post-processing for this attribute (binary "
        "targets only)",
    }.get(name, "a group or bin had no members, or the metric needs at least two groups")
