"""Release gates: a TOML policy of limits, decided on numbers with their intervals.

A gate compares one measured number with a limit and has three outcomes: **pass** when the
number's whole interval lies on the right side of the limit, **fail** when it lies wholly on the
wrong side, **undecided** otherwise (and when the number is undefined), with a hint of what would
decide it (docs/guides/operator.md, "Evaluation and release gates"). Numbers come from three sources, named on
every result: the coordinator's public **benchmark** (exact counts of a finite sample: the
interval is the sampling error), the **clients'** validation rows (counts each client noised: the
interval covers the DP noise and the sample), and the privacy **ledger** (exact).

A policy has two tables of gates. ``[gates]`` are *model* gates, decided once for the trained
model; ``[variant_gates]`` are *variant* gates, deciding each compressed edge variant by its
fidelity to that model on the benchmark (accuracy lost, decisions agreeing, its calibration, the
change in group fairness); a policy without that table gets the shipped default's. ``[promotion]``
says what an undecided model may reach (default: the canary channel, never stable).

Gates are registered under string keys (the policy's keys). A gate is either plain
(``min_accuracy = 0.8``) or keyed by a sensitive attribute or a perturbation
(``[gates.max_equalized_odds_difference] sex = 0.1``). ``"*"`` stands for every sensitive
attribute of the schema, ``"missing-*"`` every feature column's perturbation (``"swap-*"`` every
categorical one); a key named explicitly overrides its wildcard. For a multi-class target the
fairness gates read the worst class (one-vs-rest). Unknown keys, attributes, perturbations or
non-numeric limits are refused when the policy is loaded, naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fedready.errors import ConfigError
from fedready.files import read_toml
from fedready.intervals import Estimate
from fedready.schema import DataSchema

__all__ = [
    "GATES",
    "OUTCOMES",
    "UNDECIDED_MODES",
    "GateResult",
    "Policy",
    "check_gates",
    "decision",
    "default_policy_path",
    "load_policy",
]

Report = dict[str, Any]
OUTCOMES = ("pass", "fail", "undecided")
UNDECIDED_MODES = ("canary", "block", "stable")  # what an undecided model may reach


@dataclass(frozen=True)
class Gate:
    """One registered gate: which way the limit points, where its number lives, and what it means."""

    direction: Literal["min", "max"]
    keyed_by: Literal["", "attribute", "perturbation"]
    path: str  # dotted path in the report; {key} is the attribute or perturbation
    source: str  # "benchmark" | "clients" | "ledger"
    what: str  # plain-words description for the table and the docs
    levels: tuple[str, ...] = ("model", "variant")  # the policy tables the gate may appear in
    undefined: str = "a group or bin had no members, or the metric needs at least two groups"
    undefined_fails: bool = False  # an undefined number is a failure, not an open question (no DP: epsilon is inf)


_MODEL, _VARIANT = ("model",), ("variant",)

GATES: dict[str, Gate] = {
    "min_accuracy": Gate("min", "", "metrics.accuracy", "benchmark", "accuracy on the benchmark"),
    "min_accuracy_lift": Gate("min", "", "metrics.accuracy_lift", "benchmark",
                              "accuracy minus the majority class's share (paired on the same rows)"),
    "min_balanced_accuracy_lift": Gate("min", "", "metrics.balanced_accuracy_lift", "benchmark",
                                       "balanced accuracy (mean recall) minus chance (1 / classes)"),
    "max_ece": Gate("max", "", "calibration.ece", "benchmark", "expected calibration error"),
    "max_brier": Gate("max", "", "calibration.brier", "benchmark", "Brier score"),
    "max_epsilon": Gate("max", "", "privacy.epsilon", "ledger", "sample-level epsilon (ledger)", _MODEL,
                        "the run has no sample-level DP", undefined_fails=True),
    "max_client_epsilon": Gate("max", "", "privacy.client_epsilon", "ledger", "client-level epsilon", _MODEL,
                               "the run has no client-level DP", undefined_fails=True),
    "max_client_accuracy_std": Gate("max", "", "federated.client_accuracy.std", "clients",
                                    "std of accuracy across clients (noise-corrected)", _MODEL,
                                    "no federated evaluation (run `fedready evaluate RUN` first), or fewer than two "
                                    "clients large enough to estimate"),
    "min_worst_client_accuracy": Gate("min", "", "federated.client_accuracy.worst_accuracy", "clients",
                                      "worst estimated client's accuracy", _MODEL,
                                      "no federated evaluation (run `fedready evaluate RUN` first)"),
    "max_federated_equalized_odds_difference": Gate(
        "max", "attribute", "federated.fairness.{key}.equalized_odds_difference", "clients",
        "equalized odds difference on the clients' validation rows (noisy counts)", _MODEL,
        "no federated evaluation, or a group without members"),
    "max_churn": Gate("max", "", "stability.churn", "benchmark", "decisions changed vs --baseline",
                      undefined="no --baseline run given"),
    "max_seed_disagreement": Gate("max", "", "stability.seeds.disagreement_rate", "benchmark",
                                  "rows on which --seeds retrains disagree", _MODEL, "no --seeds retrains"),
    "max_equalized_odds_difference": Gate("max", "attribute", "fairness.{key}.equalized_odds_difference",
                                          "benchmark", "equalized odds difference"),
    "max_equal_opportunity_difference": Gate("max", "attribute", "fairness.{key}.equal_opportunity_difference",
                                             "benchmark", "equal opportunity difference"),
    "max_demographic_parity_difference": Gate("max", "attribute", "fairness.{key}.demographic_parity_difference",
                                              "benchmark", "demographic parity difference"),
    "min_demographic_parity_ratio": Gate("min", "attribute", "fairness.{key}.demographic_parity_ratio",
                                         "benchmark", "demographic parity ratio"),
    "min_worst_group_accuracy": Gate("min", "attribute", "fairness.{key}.worst_group_accuracy", "benchmark",
                                     "worst group's accuracy"),
    "max_mitigated_equalized_odds_difference": Gate(
        "max", "attribute", "mitigation.by_attribute.{key}.eod_after", "benchmark",
        "equalized odds difference after the stored post-processing (held-out half)",
        undefined="no threshold post-processing for this attribute (binary targets only)"),
    "max_constant_decision_groups": Gate(
        "max", "", "sanity.constant_decision_groups", "benchmark",
        "groups whose decision does not depend on the model (post-processing or the model itself)",
        undefined_fails=True),
    "max_flip_rate": Gate("max", "perturbation", "stability.perturbations.{key}.flip_rate", "benchmark",
                          "decisions flipped by the perturbation"),
    "max_accuracy_drop": Gate("max", "perturbation", "stability.perturbations.{key}.accuracy_drop", "benchmark",
                              "accuracy lost to the perturbation"),
    # variant gates: a compressed variant against the model it was made from, on the benchmark
    "max_accuracy_loss": Gate("max", "", "fidelity.accuracy_loss", "benchmark",
                              "accuracy lost against the trained model (paired on the same rows)", _VARIANT,
                              undefined_fails=True),
    "min_agreement": Gate("min", "", "fidelity.agreement", "benchmark",
                          "share of decisions equal to the trained model's", _VARIANT, undefined_fails=True),
    "max_equalized_odds_change": Gate("max", "attribute", "fidelity.equalized_odds_change.{key}", "benchmark",
                                      "change of the equalized odds difference against the trained model", _VARIANT),
}  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """A loaded policy: ``limits`` maps ``(gate, key)`` to the limit (key ``""`` for plain gates)."""

    name: str
    version: str
    limits: tuple[tuple[str, str, float], ...]
    variant_limits: tuple[tuple[str, str, float], ...] = ()
    undecided: str = "canary"

    def perturbations(self) -> list[str]:
        """Perturbations the policy names (the stability suite must measure them)."""
        both = self.limits + self.variant_limits
        return sorted({k for g, k, _ in both if GATES[g].keyed_by == "perturbation"})

    def as_variant(self) -> Policy:
        """The policy whose model gates are this policy's variant gates (to check a compressed variant)."""
        return Policy(self.name, self.version, self.variant_limits, (), self.undecided)


@dataclass(frozen=True)
class GateResult:
    """One decided (or undecided) limit."""

    gate: str  # e.g. "max_equalized_odds_difference[sex]"
    measured: float | None
    limit: float
    outcome: str  # "pass" | "fail" | "undecided"
    what: str
    source: str = ""
    lo: float | None = None
    hi: float | None = None
    noise_std: float = 0.0
    note: str = ""
    decide: str = ""  # what would decide an undecided gate

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        keys = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in keys})

    def line(self) -> str:
        """One short, rounded line.

        For example ``max_client_accuracy_std: undecided, 0.081 [0.031, 0.162] (limit 0.150, clients)``.
        """
        if self.measured is None:
            value = "undefined"
        elif self.lo is None or self.hi is None or self.lo == self.hi:
            value = _round(self.measured)
        else:
            value = f"{_round(self.measured)} [{_round(self.lo)}, {_round(self.hi)}]"
        tail = f"; {self.note}" if self.note else ""
        tail += f"; {self.decide}" if self.decide and self.outcome == "undecided" else ""
        return f"{self.gate}: {self.outcome}, {value} (limit {_round(self.limit)}, {self.source}){tail}"


def _round(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.3g}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"


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
        Naming the policy key at fault: an unknown gate, attribute or perturbation, a gate in
        the wrong table, a table where a number belongs or the reverse, a non-numeric limit, or
        an unknown ``[promotion] undecided`` mode.
    """
    p = Path(path) if path is not None else default_policy_path()
    raw = read_toml(p, field="gate", missing=f"policy file {p} does not exist")
    # [monitoring] holds the drift thresholds of `fedready monitor` (fedready.monitoring.MonitoringPolicy)
    unknown_top = sorted(set(raw) - {"name", "version", "gates", "variant_gates", "promotion", "monitoring"})
    if unknown_top:
        raise ConfigError(unknown_top[0], f"unknown policy key in {p}; expected: name, version, [gates], "
                                          "[variant_gates], [promotion], [monitoring]")  # fmt: skip
    gates = raw.get("gates")
    if not isinstance(gates, dict) or not gates:
        raise ConfigError("gates", f"{p} declares no [gates] table")
    variant = raw.get("variant_gates")
    if variant is None:  # a policy without fidelity limits gets the shipped ones: no variant ships unchecked
        variant = read_toml(default_policy_path(), field="gate", missing="the shipped policy is missing").get(
            "variant_gates", {}
        )
    if not isinstance(variant, dict):
        raise ConfigError("variant_gates", "[variant_gates] must be a table of gate = limit")
    promotion = raw.get("promotion", {})
    if not isinstance(promotion, dict) or set(promotion) - {"undecided"}:
        raise ConfigError("promotion", "[promotion] takes one key: undecided = \"canary\" | \"block\" | \"stable\"")
    undecided = promotion.get("undecided", "canary")
    if undecided not in UNDECIDED_MODES:
        raise ConfigError("promotion.undecided", f"unknown mode {undecided!r}; expected one of: "
                                                 f"{', '.join(UNDECIDED_MODES)}")  # fmt: skip
    limits = _table(gates, "gates", "model", schema)
    variant_limits = _table(variant, "variant_gates", "variant", schema)
    return Policy(str(raw.get("name", p.stem)), str(raw.get("version", "1")), limits, variant_limits, undecided)


def _table(gates: dict[str, Any], table: str, level: str, schema: DataSchema) -> tuple[tuple[str, str, float], ...]:
    from fedready.evaluation.stability import check_perturbation

    limits: dict[tuple[str, str], float] = {}
    for name, value in gates.items():
        gate = GATES.get(name)
        field = f"{table}.{name}"
        if gate is None:
            known = [n for n, g in GATES.items() if level in g.levels]
            raise ConfigError(field, f"unknown gate '{name}'; expected one of: {', '.join(known)}")
        if level not in gate.levels:
            other = "variant_gates" if level == "model" else "gates"
            raise ConfigError(field, f"'{name}' is a {'variant' if level == 'model' else 'model'} gate: put it under "
                                     f"[{other}]")  # fmt: skip
        if not gate.keyed_by:
            if isinstance(value, dict):
                raise ConfigError(field, f"'{name}' takes one number, not a table")
            limits[(name, "")] = _limit(field, value)
            continue
        if not isinstance(value, dict) or not value:
            example = "sex" if gate.keyed_by == "attribute" else '"gaussian-0.1"'
            raise ConfigError(field, f"'{name}' takes a table of {gate.keyed_by} = limit, e.g. [{table}.{name}] "
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
    return tuple((g, k, v) for (g, k), v in limits.items())


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


def _lookup(d: Any, path: str) -> Any:
    for part in _split(path):
        if not isinstance(d, dict) or d.get(part) is None:
            return None
        d = d[part]
    return d


def _split(path: str) -> list[str]:
    """Split a dotted path whose keys may hold dots (``gaussian-0.01``): keys in the path are bracketed."""
    out, buf, depth = [], "", 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "." and depth == 0:
            out.append(buf)
            buf = ""
        else:
            buf += ch
    out.append(buf)
    return out


def measure(report: Report, name: str, key: str = "") -> Estimate | None:
    """The number gate ``name`` (for ``key``) reads from ``report``, with its interval; None if undefined.

    A report's ``estimates`` map (dotted path -> interval) gives the interval; otherwise the
    plain number is taken as exact, or an interval dict stored at the path itself is read.
    """
    gate = GATES[name]
    path = gate.path.replace("{key}", f"[{key}]")
    plain = gate.path.replace("{key}", key)
    est = (report.get("estimates") or {}).get(plain)
    if isinstance(est, dict) and est.get("value") is not None:
        return Estimate.from_dict({"source": gate.source, **est})
    value = _lookup(report, path)
    if isinstance(value, dict) and "value" in value:
        return Estimate.from_dict({"source": gate.source, **value}) if value.get("value") is not None else None
    if value is None or isinstance(value, dict | list | str | bool):
        return None
    return Estimate.exact(float(value), gate.source)


def decide(direction: str, est: Estimate, limit: float) -> str:
    """pass / fail / undecided: the whole interval on the right side of the limit, on the wrong side, or across it."""
    lo = est.lo if est.lo is not None else est.value
    hi = est.hi if est.hi is not None else est.value
    if lo is None or hi is None:
        return "undecided"
    if direction == "max":
        return "pass" if hi <= limit else "fail" if lo > limit else "undecided"
    return "pass" if lo >= limit else "fail" if hi < limit else "undecided"


def _decide_hint(gate: Gate) -> str:
    if gate.source == "clients":
        return ("to decide it: more privacy budget for the evaluation (a lower --query-noise) or more validation "
                "rows per client (--val-fraction)")  # fmt: skip
    if gate.source == "benchmark":
        return "to decide it: a larger benchmark (--test), or a limit set with this interval in mind"
    return ""


def check_gates(policy: Policy, report: Report) -> list[GateResult]:
    """Decide every limit of ``policy`` (its model gates) on ``report``'s numbers and their intervals.

    An undefined number is undecided (the note says why), except where undefined means the
    worst case (no DP: an infinite epsilon), which fails.
    """
    out = []
    for name, key, limit in policy.limits:
        gate = GATES[name]
        label = f"{name}[{key}]" if key else name
        what = f"{gate.what} ({key})" if key else gate.what
        est = measure(report, name, key)
        if est is None:
            outcome = "fail" if gate.undefined_fails else "undecided"
            out.append(GateResult(label, None, limit, outcome, what, gate.source, note="undefined: " + gate.undefined,
                                  decide="" if gate.undefined_fails else _decide_hint(gate)))  # fmt: skip
            continue
        outcome = decide(gate.direction, est, limit)
        hint = _decide_hint(gate) if outcome == "undecided" else ""
        out.append(GateResult(label, est.value, limit, outcome, what, est.source or gate.source, est.lo, est.hi,
                              est.noise_std, est.note, hint))  # fmt: skip
    return out


def decision(results: list[GateResult]) -> str:
    """The overall outcome: failed if any gate fails, else undecided if any is undecided, else passed."""
    outcomes = {r.outcome for r in results}
    return "failed" if "fail" in outcomes else "undecided" if "undecided" in outcomes else "passed"
