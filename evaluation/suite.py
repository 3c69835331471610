"""``fedready evaluate``: every suite on one run, the gates, ``evaluation.json`` and the model card."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedready.calibration import calibration_report
from fedready.constants import LEDGER_FILE
from fedready.data import Table, read_csv
from fedready.encoding import FeatureEncoder
from fedready.errors import ConfigError
from fedready.estimates import benchmark_estimates, constant_decision_groups
from fedready.evaluation.gates import Policy, check_gates, decision, load_policy
from fedready.evaluation.mitigation import MIN_LABEL_ROWS, apply_thresholds, fit_thresholds, split_halves
from fedready.evaluation.model import RunModel, check_width, load_run, run_schema
from fedready.evaluation.stability import churn, default_perturbations, perturbation_report, seed_stability
from fedready.fairness import group_labels, group_names, holdout_fairness, sensitive_attributes
from fedready.files import atomic_write_text
from fedready.intervals import Estimate
from fedready.metrics import classification_metrics
from fedready.schema import DataSchema, load_schema
from fedready.task import Task, load_task, task_of

__all__ = ["EvalData", "assess_predictor", "evaluate_run", "load_eval_data", "privacy_report"]

EVALUATION_FILE = "evaluation.json"
THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class EvalData:
    """Labelled rows to evaluate on, their schema and where they came from."""

    table: Table
    schema: DataSchema
    y: np.ndarray
    source: str
    data_digest: str

    @property
    def x(self) -> np.ndarray:
        return FeatureEncoder(self.schema).transform(self.table.columns)

    @property
    def classes(self) -> list[str]:
        return self.schema.classes


def load_eval_data(
    csv: Path | None = None, schema_path: Path | DataSchema | None = None, *, task: Task | None = None
) -> EvalData:
    """The benchmark: the task's (a run's) benchmark rows by default, or a CSV with its declared schema.

    ``schema_path`` is a schema TOML or an already loaded schema (a run's ``schema.json``).

    Raises
    ------
    ConfigError
        If a CSV comes without a schema, holds an undeclared label, or its label column holds a
        single class.
    """
    if csv is None:
        task = task or load_task()
        schema, table, source, digest = task.schema, task.test, task.test_source, task.test_digest
    else:
        if schema_path is None:
            raise ConfigError("schema", "a --data CSV needs its declared schema: pass --schema schema.toml")
        import hashlib

        schema = schema_path if isinstance(schema_path, DataSchema) else load_schema(schema_path)
        table = read_csv(csv, schema)
        source, digest = str(csv), "sha256:" + hashlib.sha256(Path(csv).read_bytes()).hexdigest()
    y = table.labels(schema)
    if len(y) == 0 or len(np.unique(y)) < 2:
        only = "no rows" if len(y) == 0 else f"only the class '{schema.classes[int(y[0])]}'"
        raise ConfigError("data", f"{table.source or source}: label column '{schema.target.column}' holds {only}; "
                                  "accuracy-based fairness, calibration and thresholds need two classes or more: "
                                  "pass a benchmark with --test / --data")  # fmt: skip
    return EvalData(table, schema, y, source, digest)


def _with_empty_groups(fair: dict[str, Any], schema: DataSchema) -> dict[str, Any]:
    """Declared groups without members appear explicitly, every metric 'undefined' (None)."""
    empty = {"count": 0, "accuracy": None, "selection_rate": None, "tpr": None, "fpr": None}
    for attr, entry in fair.items():
        for g in group_names(schema, attr):
            if g.startswith("<"):
                continue
            for part in [entry, *entry.get("per_class", {}).values()]:
                if g not in part["groups"]:
                    part["groups"][g] = dict(empty) if part is not entry or "per_class" not in entry else \
                        {"count": 0, "accuracy": None}  # fmt: skip
                    if g not in part["undefined_groups"]:
                        part["undefined_groups"].append(g)
    return fair


def privacy_report(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The privacy part of ``evaluation.json``: epsilon from the ledger, delta, each client's epsilon, caveats."""
    led_path = run_dir / LEDGER_FILE
    led = json.loads(led_path.read_text()) if led_path.exists() else {}
    # each client's epsilon composed over every release about its rows (count, training, query, seed runs);
    # not under client-level DP: the report ships, and per-client numbers say which client took part, and when
    per_client: dict[str, float] = dict(led.get("clients", {})) if summary.get("client_dp", "off") == "off" else {}
    return {
        "dp": summary.get("dp"), "delta": summary.get("delta"),
        "epsilon": led.get("epsilon", summary.get("epsilon")) if summary.get("dp") else None,  # from the ledger
        "epsilon_parts": led.get("epsilon_parts"), "private": led.get("private", False),
        "caveats": led.get("caveats", []),
        "accountant": led.get("accountant"), "target_epsilon": led.get("target_epsilon"),
        "client_dp": summary.get("client_dp"), "client_epsilon": summary.get("client_epsilon"),
        "client_delta": summary.get("client_delta"), "per_client_epsilon": per_client,
        "declines": len(led.get("declines", [])), "secagg": summary.get("secagg"),
    }  # fmt: skip


BINARY_ONLY = (
    "threshold post-processing (fairlearn ThresholdOptimizer, equalized odds) is defined for binary "
    "targets only: skipped for this {k}-class target"
)


def _small_group_notes(rules: Any, y: np.ndarray, groups: np.ndarray, attribute: str) -> list[str]:
    """One line per way small groups were handled (pooled, skipped) in either fold, naming the groups."""
    pooled = sorted({g for r in rules for g in r["pooled"]})
    skipped = sorted({g for r in rules for g in r["skipped"]} - set(pooled))

    def named(gs: list[str]) -> str:
        parts = []
        for g in gs:
            n, labels = int((groups == g).sum()), len(set(y[groups == g].tolist()))
            parts.append(f"'{g}' ({n} benchmark row{'s' * (n != 1)}{', one label' if n and labels == 1 else ''})")
        return f"group{'s' * (len(gs) > 1)} {', '.join(parts)} of '{attribute}'"

    lead = f"threshold post-processing: {{}} too small for a rule of its own (under {MIN_LABEL_ROWS} rows of a label)"
    out = []
    if pooled:
        out.append(lead.format(named(pooled)) + ": pooled into one shared rule")
    if skipped:
        they = "they keep" if len(skipped) > 1 else "it keeps"
        out.append(lead.format(named(skipped)) + f": skipped, {they} the plain decision (score > 0.5)")
    return out


def _mitigation(scores: np.ndarray, y: np.ndarray, groups: np.ndarray, attribute: str, seed: int) -> dict[str, Any]:
    """Cross-fitted threshold post-processing: fit on half A, measure on half B (and the swap)."""
    from fairlearn.metrics import equalized_odds_difference

    a, b = split_halves(y, groups, seed=seed)
    folds, rules, decided = {}, {}, {}
    names = sorted(set(groups.tolist()))
    for name, fit, test in (("fit_a_measure_b", a, b), ("fit_b_measure_a", b, a)):
        rule = fit_thresholds(scores[fit], y[fit], groups[fit], attribute=attribute, names=names)
        rules[name] = rule
        before = (scores[test] > 0.5).astype(np.int64)
        after = apply_thresholds(scores[test], groups[test], rule, seed=seed)
        eod_b = float(equalized_odds_difference(y[test], before, sensitive_features=groups[test]))
        eod_a = float(equalized_odds_difference(y[test], after, sensitive_features=groups[test]))
        acc_b, acc_a = float((before == y[test]).mean()), float((after == y[test]).mean())
        decided[name] = (test, after)
        folds[name] = {"rows_fit": len(fit), "rows_measured": len(test), "accuracy_before": acc_b,
                       "accuracy_after": acc_a, "accuracy_cost_points": 100 * (acc_b - acc_a),
                       "eod_before": eod_b, "eod_after": eod_a,
                       "eod_reduction": 1 - eod_a / eod_b if eod_b > 0 else None}  # fmt: skip
    return {"attribute": attribute, "method": "fairlearn ThresholdOptimizer(equalized_odds), randomised",
            "stored_rule": "fit_a_measure_b", "seed": seed, "folds": folds, "rule": rules["fit_a_measure_b"],
            "small_groups": _small_group_notes(rules.values(), y, groups, attribute),
            "by_attribute": {attribute: {"eod_after": folds["fit_a_measure_b"]["eod_after"]}},
            "_decided": decided["fit_a_measure_b"], **folds["fit_a_measure_b"]}  # fmt: skip


def _history(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    return [{k: h.get(k) for k in ("round", "accuracy", "epsilon", "client_epsilon")}
            for h in map(json.loads, p.read_text().splitlines())]  # fmt: skip


def assess_predictor(
    predict_proba: Callable[[np.ndarray], np.ndarray], ev: EvalData, policy: Policy, *, mitigate: str | None
) -> tuple[dict[str, Any], Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """The model-dependent suites for any predictor of class probabilities over encoded rows.

    ``predict_proba(x)`` returns ``(rows, classes)`` probabilities. Accuracy, holdout fairness
    (fairlearn; one-vs-rest per class for a multi-class target), calibration, perturbations and
    the cross-fitted threshold post-processing (binary only) on ``ev``. ``fedready evaluate``
    runs it on the PyTorch global model and ``fedready compress`` on every ONNX variant, so both
    gate the same numbers. Returns the report sections and a ``predict(raw columns) -> class``
    function.
    """
    attrs = sensitive_attributes(ev.schema)
    encoder = FeatureEncoder(ev.schema)
    x, y = encoder.transform(ev.table.columns), ev.y
    proba = np.asarray(predict_proba(x), dtype=np.float64)
    pred = proba.argmax(axis=1).astype(np.int64)
    groups = {a: group_labels(ev.schema, a, ev.table.columns[a]).astype(str) for a in attrs}
    base_blocks = {c.name: encoder.transform_column(c.name, ev.table.columns[c.name]) for c in ev.schema.features}

    def predict_raw(columns: dict[str, np.ndarray]) -> np.ndarray:
        # Perturbations change one or a few columns: re-encode only those (same arrays are reused).
        parts = [base_blocks[c.name] if columns[c.name] is ev.table.columns[c.name]
                 else encoder.transform_column(c.name, columns[c.name]) for c in ev.schema.features]  # fmt: skip
        return np.asarray(predict_proba(np.concatenate(parts, axis=1).astype(np.float32))).argmax(axis=1)

    names = list(dict.fromkeys(default_perturbations(ev.schema) + policy.perturbations()))
    perturbed: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {
        "metrics": classification_metrics(y, pred, ev.classes),
        "fairness": _with_empty_groups(holdout_fairness(y, pred, groups, classes=ev.classes), ev.schema),
        "calibration": calibration_report(y, proba),
        "stability": {"perturbations": perturbation_report(ev.table, ev.schema, y, predict_raw, groups, names=names,
                                                           decisions=perturbed)},  # fmt: skip
    }
    mitigated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rules: dict[str, dict[str, Any]] = {}
    if mitigate is not None and ev.schema.target.binary:
        out["mitigation"] = _mitigation(proba[:, 1], y, groups[mitigate], mitigate, seed=0)
        mitigated[mitigate] = out["mitigation"].pop("_decided")
        rules[mitigate] = out["mitigation"]["rule"]
    elif mitigate is not None:
        out["mitigation_skipped"] = BINARY_ONLY.format(k=len(ev.classes))
    out["estimates"] = benchmark_estimates(ev.schema, y, proba, groups, perturbed=perturbed, mitigated=mitigated)
    constant = constant_decision_groups(pred, rules)
    out["sanity"] = {"constant_decision_groups": len(constant), "constant": constant}
    out["estimates"]["sanity.constant_decision_groups"] = Estimate.exact(
        float(len(constant)), "benchmark", "decides the same whatever the model says: " + ", ".join(constant)
        if constant else "").to_dict()  # fmt: skip
    return out, predict_raw


def _trained_schema(run_dir: Path) -> DataSchema:
    if not (run_dir / "schema.json").exists() and not (run_dir / "config.json").exists():
        raise ConfigError("schema", f"{run_dir} holds no run (no schema.json) to read --data with: pass --schema "
                                    "schema.toml or the folder of a finished run")  # fmt: skip
    return run_schema(run_dir)


def evaluate_run(
    run_dir: str | Path,
    *,
    policy: str | Path | None = None,
    baseline: str | Path | None = None,
    seeds: int = 0,
    federated: bool = True,
    data: Path | None = None,
    schema: Path | None = None,
    mitigate: str | None = None,
    write: bool = True,
    seeds_epsilon: float | None = None,
) -> dict[str, Any]:
    """Run every suite on a finished run, check the gates and write the report and model card.

    Parameters
    ----------
    run_dir : path
        A finished ``fedready simulate`` run.
    policy : path, optional
        Gate policy TOML (default: the policy shipped beside the run's data set if it has one,
        else the shipped ``default_policy.toml``, whose gates the schema fills in).
    baseline : path, optional
        A previous run: report version churn against its model.
    seeds : int
        Retrain the run's configuration with this many seeds in total (the run itself
        counts as one; 0 or 1: off) and report seed stability. Each retrain is a full run, a
        release about the same rows: refused unless ``seeds_epsilon`` allows the composed epsilon
        it takes the run to (:func:`check_seed_budget`).
    seeds_epsilon : float, optional
        The budget the run's composed epsilon may reach with the retrains (default: the run's own).
    federated : bool
        Ask the run's clients for group counts on their validation splits (not with ``data``).
    data, schema : path, optional
        Evaluate on a CSV with its declared schema instead of the run's benchmark (default
        schema: the run's own, ``schema.json``).
    mitigate : str, optional
        Sensitive attribute for the threshold post-processing (default: the schema's first).

    Returns
    -------
    dict
        The report written to ``evaluation.json``.
    """
    from fedready.evaluation.explain import permutation_importance

    run_dir = Path(run_dir)
    if data is None:
        rm = load_run(run_dir)
        task: Task | None = task_of(rm.cfg)
        ev = load_eval_data(task=task)
    else:  # without --schema, the CSV is read with the schema the run was trained on (its schema.json)
        task, ev = None, load_eval_data(data, schema if schema is not None else _trained_schema(run_dir))
        rm = load_run(run_dir, schema=ev.schema)  # a run trained on another schema is refused here
    check_width(rm.arrays, ev.schema, rm.cfg.model)
    if seeds > 1:  # before any work: a retrained seed is a release like any other
        check_seed_budget(rm, seeds, seeds_epsilon)
    if policy is None and task is not None and task.policy is not None:
        policy = task.policy  # the policy shipped beside the data set names its columns
    pol = load_policy(policy, ev.schema)
    attrs = sensitive_attributes(ev.schema)
    if mitigate and not ev.schema.target.binary:
        raise ConfigError("mitigate", BINARY_ONLY.format(k=len(ev.classes)).replace(": skipped", "; drop --mitigate"))
    mitigate_attr = sensitive_attributes(ev.schema, [mitigate])[0] if mitigate else (attrs[0] if attrs else None)
    x, y = ev.x, ev.y
    report: dict[str, Any] = {
        "run": str(run_dir), "run_id": rm.summary.get("run_id", run_dir.name), "model_digest": rm.digest,
        "model": rm.cfg.model, "policy": {"name": pol.name, "version": pol.version, "path": str(policy or "default")},
        "data": {"source": ev.source, "digest": ev.data_digest, "rows": len(y), "schema": ev.schema.name,
                 "schema_digest": ev.schema.digest(), "classes": ev.classes,
                 "class_rates": {c: float((y == i).mean()) for i, c in enumerate(ev.classes)},
                 **({"positive_rate": float(y.mean())} if ev.schema.target.binary else {}),
                 "caveats": list(task.caveats) if task is not None else []},
        "training": {"clients": rm.cfg.num_clients, "rounds": rm.summary.get("rounds_completed"),
                     "partitioner": rm.cfg.partitioner, "alpha": rm.cfg.alpha, "aggregator": rm.cfg.aggregator,
                     "seed": rm.cfg.seed, "val_fraction": rm.cfg.val_fraction, "history": _history(run_dir)},
        "privacy": privacy_report(run_dir, rm.summary),
    }  # fmt: skip
    suites, predict_raw = assess_predictor(rm.predict_proba, ev, pol, mitigate=mitigate_attr)
    report.update(suites)
    pred = rm.predict(x)
    stab = report["stability"]
    if baseline is not None:
        other = load_run(baseline, schema=ev.schema)
        check_width(other.arrays, ev.schema, other.cfg.model)
        stab["churn"] = churn(pred, other.predict(x))
        stab["baseline"] = str(baseline)
    if seeds > 1:
        stab["seeds"] = {**seed_stability([pred] + [m.predict(x) for m in _retrain(rm, seeds, seeds_epsilon)], y),
                         "seeds": list(range(rm.cfg.seed, rm.cfg.seed + seeds))}  # fmt: skip
    report["federated"] = _federated(rm) if federated and data is None else None
    report["importance"] = permutation_importance(ev.table, ev.schema, y, predict_raw)
    if report["federated"] is not None:
        report["estimates"].update(report["federated"].get("estimates", {}))
    results = check_gates(pol, report)
    report["gates"] = [r.to_dict() for r in results]
    report["decision"] = decision(results)
    report["passed"] = report["decision"] == "passed"
    report["promotion"] = {"undecided": pol.undecided, "variant_gates": [list(v) for v in pol.variant_limits]}
    if write:
        from fedready.evaluation.card import write_model_card

        if "mitigation" in report:
            rule = {**report["mitigation"]["rule"], "model_digest": rm.digest,
                    "fitted_on": "half A of the benchmark (stratified by group and label, seed 0)"}  # fmt: skip
            atomic_write_text(run_dir / THRESHOLDS_FILE, json.dumps(rule, indent=2, sort_keys=True) + "\n")
        atomic_write_text(run_dir / EVALUATION_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
        write_model_card(report, run_dir)
    return report


def _federated(rm: RunModel) -> dict[str, Any]:
    """Federated group counts for this model: reuse ``federated_eval.json`` if it matches, else ask the clients."""
    from fedready.server.queries import FEDERATED_FILE, FORMAT, federated_numbers
    from fedready.simulations.engine import federated_evaluate

    p = rm.run_dir / FEDERATED_FILE
    if p.exists():
        cached = json.loads(p.read_text())
        if cached.get("model_digest") == rm.digest and cached.get("format") == FORMAT:
            # what the clients released, with every number derived from it computed again (post-processing)
            return {**cached, **federated_numbers(cached, rm.schema)}
    return federated_evaluate(rm.run_dir)


def check_seed_budget(rm: RunModel, seeds: int, seeds_epsilon: float | None,
                      extra: list[tuple[float, float, int]] | None = None) -> float:  # fmt: skip
    """The run's epsilon with ``seeds - 1`` retrains charged; refuse it above the budget.

    Each retrain runs the same plan (the same calibration), so its worst client's releases are
    projected as this run's worst client's; ``extra`` adds releases already known. The budget is
    the run's own target epsilon unless ``seeds_epsilon`` raises it explicitly.

    Raises
    ------
    ConfigError
        ``seeds`` when the projection exceeds the budget (or under client-level DP, whose budget
        the retrains would spend too and which is not charged here).
    """
    from fedready.privacy.accounting import compose_epsilon
    from fedready.privacy.ledger import Ledger

    if rm.cfg.client_dp != "off":
        raise ConfigError("seeds", "every retrain also spends the clients' client-level budget, which --seeds does "
                                   "not charge: run the other seeds as separate simulations instead")  # fmt: skip
    led_path = rm.run_dir / LEDGER_FILE
    if not rm.cfg.dp or not led_path.exists():
        return 0.0
    ledger = Ledger.load(led_path)
    per_client = ledger.client_epsilon()
    if not per_client:
        return 0.0
    worst = max(per_client, key=lambda c: per_client[c])
    mine = [e for e in ledger.entries if e.client == worst]
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in mine]
    own = [(e.noise_multiplier, e.sample_rate, e.steps) for e in mine if e.level != "seed"]  # one run's plan
    retrains = seeds - 1 - len({e.round for e in ledger.entries if e.level == "seed"})
    projected = compose_epsilon([*history, *(extra or []), *own * max(0, retrains)], delta=rm.cfg.delta,
                                accountant=rm.cfg.accountant)  # fmt: skip
    budget = rm.cfg.epsilon if seeds_epsilon is None else float(seeds_epsilon)
    if projected > budget:
        raise ConfigError("seeds", f"--seeds {seeds} retrains {seeds - 1} more private run(s) on the same rows: "
                                   f"the run's epsilon would reach about {projected:.3f} > "
                                   f"{'its budget' if seeds_epsilon is None else '--seeds-epsilon'} {budget:g}; "
                                   f"pass --seeds-epsilon {projected * 1.05:.2f} (or more) to accept that")  # fmt: skip
    return projected


def _retrain(rm: RunModel, seeds: int, seeds_epsilon: float | None = None) -> list[RunModel]:
    """Retrain the run's configuration with the next ``seeds - 1`` seeds (each a full run, cached).

    Notes
    -----
    Every retrain is another private run on the same clients' rows, and the seed-stability numbers
    published from it are releases about those rows: each is charged to the run's ledger (level
    ``seed``). A different seed partitions the rows differently, so a row may sit with any client in
    a retrain: every client is charged the retrain's worst client's releases (a valid upper bound).
    """
    from fedready.privacy.ledger import Ledger
    from fedready.simulations.engine import simulate

    out = []
    led_path = rm.run_dir / LEDGER_FILE
    ledger = Ledger.load(led_path) if led_path.exists() and rm.cfg.dp else None
    for s in range(rm.cfg.seed + 1, rm.cfg.seed + seeds):
        d = rm.run_dir / "seeds" / f"seed-{s}"
        if not (d / "summary.json").exists():
            simulate(rm.cfg.model_copy(update={"seed": s}), d)
        out.append(load_run(d))
        if ledger is not None and not any(e.level == "seed" and e.round == -s for e in ledger.entries):
            other = Ledger.load(d / LEDGER_FILE)
            worst = max(other.client_epsilon().items(), key=lambda kv: kv[1], default=(None, 0.0))[0]
            releases = [e for e in other.entries if e.client == worst]
            for client in sorted({e.client for e in ledger.entries if e.level != "client"}):
                for e in releases:  # round -seed: a release of retrain `seed`, not of a round of this run
                    ledger.charge(
                        round=-s,
                        client=client,
                        level="seed",
                        noise_multiplier=e.noise_multiplier,
                        sample_rate=e.sample_rate,
                        steps=e.steps,
                        delta=e.delta,
                        note=f"seed-{s}",
                    )
            if ledger.epsilon > (rm.cfg.epsilon if seeds_epsilon is None else seeds_epsilon):
                ledger.save(led_path)  # charged: it ran
                raise ConfigError("seeds", f"retrain seed-{s} took the run's epsilon to {ledger.epsilon:.3f}, above "
                                           "the budget; its seed is not used")  # fmt: skip
    if ledger is not None:
        ledger.save(led_path)
        summary_path = rm.run_dir / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary.update(epsilon=ledger.epsilon, epsilon_parts=ledger.epsilon_parts())
        atomic_write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        rm.summary.update(epsilon=ledger.epsilon, epsilon_parts=ledger.epsilon_parts())
    return out
