"""``fedready compress``: build the edge variants, measure them, gate them, pick the smallest that passes.

Data: the server's public holdout (the run's benchmark rows) is split once, by seed, into a
*transfer* half and the rest. The transfer half feeds distillation, fine-tuning after pruning
and static-quantisation calibration with its features only (the teacher supplies the targets),
and temperature scaling with its labels (one parameter per variant). Every variant, the fp32
teacher included, is gated on the whole benchmark, as ``fedready evaluate`` does: the fairness
gates need every row (small groups may hold a few dozen positives each), and the threshold
post-processing inside the suite is cross-fitted. Accuracy on the untouched half,
which no step saw, is reported next to it. No client data is touched
(see :mod:`fedready.compression.variants`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedready.compression.export import mlp_layers, mlp_to_onnx, module_to_onnx, onnx_probabilities
from fedready.compression.measure import measure_speed
from fedready.compression.variants import (
    Layers,
    Variant,
    count,
    count_module,
    distil,
    fine_tune,
    fine_tune_module,
    fit_temperature,
    module_logits,
    prune_module_unstructured,
    prune_structured,
    prune_unstructured,
    quantize,
    teacher_logits,
    temperature_scale,
)
from fedready.errors import ConfigError, IntegrityError
from fedready.evaluation.gates import GateResult, decision
from fedready.intervals import worst_decision
from fedready.modelio import arrays_digest, load_npz

__all__ = [
    "CompressionOptions",
    "build_variants",
    "model_decision",
    "release_decision",
    "compress",
    "compress_run",
    "gate_assessor",
    "measure",
    "public_outputs",
    "public_split",
    "select",
]

OUT_DIR = "compression"
SELECTED = "selected.onnx"


@dataclass(frozen=True)
class CompressionOptions:
    """Knobs of ``fedready compress`` (defaults are what the documented numbers use)."""

    student_widths: tuple[int, ...] = (64,)
    prune_keep: float = 0.25  # structured: share of hidden units kept
    sparsity: float = 0.5  # unstructured: share of weights zeroed
    epochs: int = 30  # distillation and fine-tuning epochs over the transfer set
    seed: int = 0
    transfer_share: float = 0.5
    calibrate: bool = True  # temperature scaling on the public transfer half (labels used, public data only)

    def __post_init__(self) -> None:
        if not 0.0 < self.transfer_share < 1.0:
            raise ConfigError("transfer-share", f"must be in (0, 1), got {self.transfer_share}")
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be at least 1, got {self.epochs}")


@dataclass
class Measured:
    variant: Variant
    size: int
    speed: dict[str, float]
    accuracy: float
    agreement: float  # share of evaluation rows whose label equals the fp32 teacher's
    metrics: dict[str, Any] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)  # the policy's variant gates, decided for this variant

    @property
    def decision(self) -> str:
        return decision(self.gates)

    @property
    def passed(self) -> bool:
        return self.decision == "passed"


def public_split(n: int, *, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (transfer, evaluation) index arrays, sorted, by a seeded permutation."""
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE])).permutation(n)
    k = int(round(share * n))
    return np.sort(perm[:k]), np.sort(perm[k:])


@dataclass
class _Net:
    """A variant's network before export: a built-in MLP's layers, or any PyTorch module (and a temperature)."""

    layers: Layers | None = None
    module: Any = None
    in_features: int = 0
    temperature: float = 1.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.layers is not None:
            return teacher_logits(self.layers, x)
        return module_logits(self.module, x) / self.temperature

    def calibrated(self, x: np.ndarray, y: np.ndarray) -> tuple[_Net, float]:
        """Temperature scaling on labelled public rows (folded into the last layer of an MLP)."""
        if self.layers is not None:
            layers, t = temperature_scale(self.layers, x, y)
            return _Net(layers=layers), t
        t = fit_temperature(self.logits(x), y)
        return _Net(module=self.module, in_features=self.in_features, temperature=self.temperature * t), t

    def onnx(self) -> Any:
        if self.layers is not None:
            return mlp_to_onnx(self.layers)
        return module_to_onnx(self.module, self.in_features, scale=self.temperature)

    def count(self) -> tuple[int, int]:
        return count(self.layers) if self.layers is not None else count_module(self.module)


def _variant(name: str, net: _Net, steps: tuple[str, ...], **details: Any) -> Variant:
    total, nonzero = net.count()
    return Variant(name, net.onnx().SerializeToString(), steps, total, nonzero, details)


def _quantised(base: Variant, net: _Net, mode: str, calibration: np.ndarray) -> Variant:
    data = quantize(net.onnx(), mode=mode, calibration=calibration)
    return Variant(f"{base.name}+int8-{mode}" if base.name != "fp32" else f"int8-{mode}", data,
                   (*base.steps, f"int8-{mode}"), base.parameters, base.nonzero, dict(base.details))  # fmt: skip


STRUCTURED_SKIP = ("prune-structured", "structured pruning removes hidden units of a plain chain of Linear layers; "
                                       "model '{model}' is not one (the built-in MLPs are)")  # fmt: skip


def build_variants(
    teacher: Layers | Any, x_transfer: np.ndarray, opts: CompressionOptions, y_transfer: np.ndarray | None = None,
    *, skipped: list[dict[str, str]] | None = None, model: str = "",
) -> list[Variant]:  # fmt: skip
    """Build the default family of variants from ``teacher`` using only the public transfer rows.

    ``teacher`` is a built-in MLP's layers or any PyTorch module. Variants that do not apply to it
    (structured pruning of a non-MLP, of a model without hidden units) are appended to ``skipped``
    as ``{"variant", "reason"}``. With ``y_transfer`` (public labels) each variant is
    temperature-scaled before export, so its probabilities are calibrated (ECE gate) without
    changing a single decision.
    """
    fit = dict(epochs=opts.epochs, seed=opts.seed)
    skipped = skipped if skipped is not None else []
    base = _Net(layers=teacher) if isinstance(teacher, list) else _Net(module=teacher, in_features=x_transfer.shape[1])
    soft = base.logits(x_transfer)  # the teacher's logits on the transfer rows: every student's targets

    def make(name: str, net: _Net, steps: tuple[str, ...], **details: Any) -> tuple[Variant, _Net]:
        if y_transfer is not None and opts.calibrate:
            net, t = net.calibrated(x_transfer, y_transfer)
            steps, details = (*steps, "temperature"), {**details, "temperature": t}
        return _variant(name, net, steps, **details), net

    out: list[Variant] = []
    fp32, cal = make("fp32", base, ())
    out += [fp32, _quantised(fp32, cal, "dynamic", x_transfer), _quantised(fp32, cal, "static", x_transfer)]

    name = f"prune-unstructured-{opts.sparsity:g}"
    if base.layers is not None:
        pruned, masks = prune_unstructured(base.layers, sparsity=opts.sparsity)
        pruned_net = _Net(layers=fine_tune(pruned, soft, x_transfer, masks=masks, **fit))
    else:
        module, masks = prune_module_unstructured(base.module, sparsity=opts.sparsity)
        pruned_net = _Net(module=fine_tune_module(module, soft, x_transfer, masks=masks, **fit),
                          in_features=base.in_features)  # fmt: skip
    out.append(make(name, pruned_net, ("prune-unstructured", "fine-tune"))[0])

    if base.layers is not None and len(base.layers) > 1:  # structured pruning needs hidden units
        # three levels: the smallest variant that stays faithful to the model is the one that ships
        for keep in (opts.prune_keep, opts.prune_keep * 0.75, opts.prune_keep / 2):
            slim = fine_tune(prune_structured(base.layers, keep=keep), soft, x_transfer, **fit)
            v, cal = make(f"prune-structured-{keep:g}", _Net(layers=slim), ("prune-structured", "fine-tune"))
            out += [v, _quantised(v, cal, "static", x_transfer)]
    elif base.layers is not None:
        skipped.append({"variant": "prune-structured", "reason": "the model has no hidden units to remove"})
    else:
        skipped.append({"variant": STRUCTURED_SKIP[0], "reason": STRUCTURED_SKIP[1].format(model=model or "custom")})

    widths = "x".join(str(w) for w in opts.student_widths)
    teacher_params = base.count()[0]
    student_params = _student_parameters(x_transfer.shape[1], opts.student_widths, soft.shape[1])
    if student_params >= teacher_params:  # a "student" at least as large as its teacher compresses nothing
        skipped.append({"variant": f"student-{widths}",
                        "reason": f"a student with hidden widths {widths} has {student_params:,} parameters, not "
                                  f"fewer than the model's {teacher_params:,}"})  # fmt: skip
        return out
    student = distil(soft, x_transfer, widths=opts.student_widths, **fit)
    s, cal = make(f"student-{widths}", _Net(layers=student), ("distil",), widths=list(opts.student_widths))
    out += [s, _quantised(s, cal, "dynamic", x_transfer), _quantised(s, cal, "static", x_transfer)]
    # the full chain: distil, then prune, then quantise
    slim_student = fine_tune(prune_structured(student, keep=0.5), soft, x_transfer, **fit)
    ss, cal = make(f"student-{widths}+prune-structured-0.5", _Net(layers=slim_student),
                   ("distil", "prune-structured", "fine-tune"))  # fmt: skip
    out += [ss, _quantised(ss, cal, "static", x_transfer)]
    return out


def _student_parameters(inputs: int, widths: Sequence[int], outputs: int) -> int:
    sizes = [inputs, *widths, outputs]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def select(measured: Sequence[Measured]) -> Measured | None:
    """The smallest variant on disk that passes every variant gate (ties: higher accuracy), or None.

    Variant gates judge a variant's fidelity to the trained model; the model's own gates are
    decided once, by ``fedready evaluate``, and do not choose between variants.
    """
    passing = [m for m in measured if m.passed]
    return min(passing, key=lambda m: (m.size, -m.accuracy, m.variant.name)) if passing else None


Assess = Callable[[Callable[[np.ndarray], np.ndarray]], tuple[dict[str, Any], list[GateResult]]]


def measure(
    variants: Sequence[Variant],
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    assess: Assess,
    *,
    timing: bool = True,
    untouched: np.ndarray | None = None,
) -> list[Measured]:
    """Measure every variant on the evaluation rows and run ``assess`` (metrics + gates) on it.

    ``assess`` receives a ``predict_proba(x) -> (rows, classes)`` function of the variant and
    returns the evaluation metrics and gate outcomes, the same suite ``fedready evaluate`` runs.
    """
    fp32 = next(v for v in variants if v.name == "fp32")
    ref = onnx_probabilities(fp32.onnx, x_eval).argmax(axis=1)
    out = []
    for v in variants:
        label = onnx_probabilities(v.onnx, x_eval).argmax(axis=1)
        metrics, gates = assess(lambda x, _m=v.onnx: onnx_probabilities(_m, x))
        speed = measure_speed(v.onnx, x_eval) if timing else {}
        if untouched is not None:  # rows no step of any variant saw
            metrics = {**metrics, "accuracy_untouched_half": float(np.mean(label[untouched] == y_eval[untouched]))}
        out.append(Measured(v, len(v.onnx), dict(speed), float(np.mean(label == y_eval)),
                            float(np.mean(label == ref)), metrics, list(gates)))  # fmt: skip
    return out


def _table(measured: Sequence[Measured], chosen: Measured | None) -> str:
    base = next(m for m in measured if m.variant.name == "fp32")
    head = ("| variant | size (KB) | x smaller | params | non-zero | p50 µs | p95 µs | rows/s @256 | accuracy "
            "| Δ acc (pt) | agrees with fp32 | gates |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for m in measured:
        blocking = [f"{g.gate} {g.outcome}" for g in m.gates if not g.passed]
        mark = " **selected**" if m is chosen else ""
        s = m.speed
        lines.append(
            f"| {m.variant.name}{mark} | {m.size / 1024:.1f} | {base.size / m.size:.1f} | {m.variant.parameters:,} "
            f"| {m.variant.nonzero:,} | {s.get('p50_us', float('nan')):.1f} | {s.get('p95_us', float('nan')):.1f} "
            f"| {s.get('rows_per_s', float('nan')):,.0f} | {m.accuracy:.2%} "
            f"| {100 * (m.accuracy - base.accuracy):+.2f} "
            f"| {m.agreement:.2%} | {'pass' if not blocking else ', '.join(blocking)} |"
        )
    return "\n".join(lines) + "\n"


def _plot(measured: Sequence[Measured], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in measured:
        ax.scatter(m.size / 1024, 100 * m.accuracy, marker="o" if m.passed else "x", color="C0" if m.passed else "C3")
        ax.annotate(m.variant.name, (m.size / 1024, 100 * m.accuracy), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("ONNX file size (KB, log scale)")
    ax.set_ylabel("accuracy on the evaluation half (%)")
    ax.set_title("Size vs accuracy (o passes every variant gate, x does not)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _why_none(measured: Sequence[Measured]) -> str:
    """One short line: how many variants were tried, and what blocks the smallest of them."""
    smallest = min(measured, key=lambda m: m.size)
    first = next((g for g in smallest.gates if not g.passed), None)
    what = f"; the smallest, {smallest.variant.name}: {first.line()}" if first is not None else ""
    return f"no variant of {len(measured)} passes its variant gates{what}"


def public_outputs(
    onnx: bytes, rule: Mapping[str, Any] | None, *, x: np.ndarray, y: np.ndarray, groups: Mapping[str, np.ndarray],
    source: str,
) -> dict[str, Any]:  # fmt: skip
    """The output histograms of a model as it ships (``rule``: its thresholds.json) on public rows.

    The reference profile's score and decision histograms must describe the model a device
    serves: the selected variant (temperature-scaled, pruned or quantised) with its own
    post-processing. Computed on the server's public holdout, so it costs no privacy budget and
    asks no client anything; the price is fidelity, since public rows may be distributed unlike
    the clients' (see docs/guides/operator.md, "Monitoring").
    """
    import hashlib

    from fedready.monitoring.profile import shipped_outputs

    return shipped_outputs(onnx_probabilities(onnx, x), y, rule=rule, groups=groups,
                           model_sha256=hashlib.sha256(onnx).hexdigest(), source=source)  # fmt: skip


def compress(
    run_dir: str | Path, *, assess: Assess, options: CompressionOptions | None = None,
    x: np.ndarray, y: np.ndarray, timing: bool = True, groups: Mapping[str, np.ndarray] | None = None,
    source: str = "the server's public holdout",
) -> dict[str, Any]:  # fmt: skip
    """Build, measure and gate the variants of ``run_dir``'s model; write ``run_dir/compression/``.

    ``x``, ``y`` are the server's public holdout (encoded); ``groups`` its raw sensitive
    columns, with which the selected variant's outputs on it are written to
    ``compression/output_profile.json`` for the reference profile (:func:`public_outputs`). The
    folder is built beside the run and renamed into place, so it is written whole or not at
    all. Returns the report that is also written to ``compression/compression.json``.
    """
    opts = options or CompressionOptions()
    run = Path(run_dir)
    npz = run / "model.npz"
    if not npz.exists():
        raise IntegrityError(f"{npz} does not exist; run `fedready simulate` to completion first")
    teacher, model = _teacher(run)
    tr, ev = public_split(len(x), share=opts.transfer_share, seed=opts.seed)
    skipped: list[dict[str, str]] = []
    variants = build_variants(teacher, x[tr], opts, y[tr], skipped=skipped, model=model)
    measured = measure(variants, x, y, assess, timing=timing, untouched=ev)
    chosen = select(measured)
    base = next(m for m in measured if m.variant.name == "fp32")
    # No variant passes: the uncompressed model ships only as it was judged (fp32: temperature-scaled, with its
    # own refitted post-processing), and only if its variant gates are merely undecided; a failed one ships nothing.
    shipped = chosen if chosen is not None else (base if base.decision == "undecided" else None)
    model = model_decision(run)
    if model.get("model_digest") not in (None, arrays_digest(load_npz(npz.read_bytes()))):
        model = {"decision": "not-run", "gates": [], "undecided": model["undecided"],
                 "note": "evaluation.json describes another model: run `fedready evaluate` again"}  # fmt: skip
    report = {
        "run": run.name,
        "model": model,
        "decision": release_decision(model["decision"], shipped.decision if shipped else "failed"),
        "model_digest": arrays_digest(load_npz(npz.read_bytes())),
        "options": {**opts.__dict__, "student_widths": list(opts.student_widths)},
        "data": {
            "transfer_rows": int(len(tr)),
            "untouched_rows": int(len(ev)),
            "gated_on": "the whole benchmark (the run's test rows), as fedready evaluate",
            "source": "server public holdout; transfer half: features (and labels for temperature scaling)",
        },  # fmt: skip
        "privacy": "post-processing of the DP model on public data only: the ledger's epsilon still holds",
        "skipped": skipped,
        "selected": shipped.variant.name if shipped else None,
        "selected_decision": shipped.decision if shipped else None,
        "reason": None if chosen else _why_none(measured),
        "variants": [
            {
                "name": m.variant.name,
                "steps": list(m.variant.steps),
                "file": f"{m.variant.name}.onnx",
                "bytes": m.size,
                "smaller_than_fp32": base.size / m.size,
                "parameters": m.variant.parameters,
                "nonzero_parameters": m.variant.nonzero,
                **m.speed,
                "accuracy": m.accuracy,
                "accuracy_delta_points": 100 * (m.accuracy - base.accuracy),
                "label_agreement_with_fp32": m.agreement,
                "metrics": m.metrics,
                "gates": [g.to_dict() for g in m.gates],
                "decision": m.decision,
                "passed": m.passed,
                **m.variant.details,
            }  # fmt: skip
            for m in measured
        ],
    }
    target = run / OUT_DIR
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=f".{OUT_DIR}."))
    try:
        for m in measured:
            (tmp / f"{m.variant.name}.onnx").write_bytes(m.variant.onnx)
        if shipped is not None:
            (tmp / SELECTED).write_bytes(shipped.variant.onnx)
            rule = shipped.metrics.get("mitigation_rule")
            if rule:  # the post-processing refitted on the selected variant's own scores
                import hashlib

                rule = {**rule, "model": SELECTED, "model_sha256": hashlib.sha256(shipped.variant.onnx).hexdigest(),
                        "fitted_on": "half A of the evaluation half of the benchmark (stratified, seed 0)"}  # fmt: skip
                (tmp / "thresholds.json").write_text(json.dumps(rule, indent=2, sort_keys=True) + "\n")
            if groups is not None:
                from fedready.monitoring.profile import OUTPUTS_FILE

                doc = public_outputs(shipped.variant.onnx, rule or None, x=x, y=y, groups=groups, source=source)
                (tmp / OUTPUTS_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        (tmp / "compression.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=float) + "\n")
        (tmp / "compression.md").write_text(
            f"# Compression of {run.name}\n\n{_table(measured, shipped)}\n"
            f"Selected: **{report['selected'] or 'none'}**{'' if chosen else ' — ' + str(report['reason'])}\n"
        )
        _plot(measured, tmp / "size_vs_accuracy.png")
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=run, prefix=f".{OUT_DIR}.old."))
            os.replace(target, old / OUT_DIR)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["table"] = _table(measured, shipped)
    return report


def _teacher(run: Path) -> tuple[Layers | Any, str]:
    """The run's global model: a built-in MLP's layers, or (any other model) the PyTorch module; and its name."""
    from fedready.models import is_builtin

    cfg = _run_config(run)
    if cfg is None or is_builtin(cfg.model):
        return mlp_layers(load_npz((run / "model.npz").read_bytes())), cfg.model if cfg else "mlp"
    from fedready.evaluation.model import load_run

    return load_run(run).module, cfg.model


def _run_config(run: Path) -> Any:
    if not (run / "config.json").exists():
        return None
    from fedready.simulations.engine import load_run_config

    return load_run_config(run)


def _run_task(run: Path) -> Any:
    """The run's task (its schema and benchmark); the embedded data set's for a folder without config.json."""
    from fedready.task import load_task, task_of

    cfg = _run_config(run)
    return task_of(cfg) if cfg is not None else load_task()


def gate_assessor(run_dir: str | Path, policy: str | Path | None = None) -> tuple[Assess, np.ndarray, np.ndarray]:
    """The ``assess`` function ``fedready compress`` gates variants with, and the benchmark (x, y).

    Each variant is assessed on the run's benchmark by the suites of ``fedready evaluate``
    (accuracy, fairness, calibration, perturbations, cross-fitted threshold post-processing), and
    against the trained model on the same rows (:func:`fedready.estimates.fidelity_estimates`:
    accuracy lost, decisions agreeing, change of each attribute's equalized odds difference). The
    policy's *variant* gates decide it; its *model* gates (the clients' spread, fairness, the lift)
    were decided once for the trained model by ``fedready evaluate`` and are not re-decided here.
    """
    from fedready.estimates import fidelity_estimates
    from fedready.evaluation.gates import check_gates, load_policy
    from fedready.evaluation.model import load_run
    from fedready.evaluation.suite import assess_predictor, load_eval_data, privacy_report
    from fedready.fairness import group_labels, sensitive_attributes

    run = Path(run_dir)
    task = _run_task(run)
    ev = load_eval_data(task=task)
    if policy is None and task.policy is not None:
        policy = task.policy  # the policy shipped beside the data set, as fedready evaluate uses
    pol = load_policy(policy, ev.schema).as_variant()
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    privacy = privacy_report(run, summary)
    attrs = sensitive_attributes(ev.schema)
    groups = {a: group_labels(ev.schema, a, ev.table.columns[a]).astype(str) for a in attrs}
    teacher = load_run(run).predict(ev.x)

    def assess(predict: Callable[[np.ndarray], np.ndarray]) -> tuple[dict[str, Any], list[GateResult]]:
        suites, _ = assess_predictor(predict, ev, pol, mitigate=attrs[0] if attrs else None)
        decided = np.asarray(predict(ev.x)).argmax(axis=1)
        fidelity = fidelity_estimates(ev.schema, ev.y, teacher, decided, groups)
        report = {**suites, "privacy": privacy, "estimates": {**suites["estimates"], **fidelity},
                  "fidelity": {k.removeprefix("fidelity."): v["value"] for k, v in fidelity.items()}}  # fmt: skip
        return _compact(report), check_gates(pol, report)

    return assess, ev.x, ev.y


def model_decision(run: Path) -> dict[str, Any]:
    """The trained model's own gates, as ``fedready evaluate`` decided them (``not-run`` without evaluation.json)."""
    from fedready.evaluation.suite import EVALUATION_FILE

    path = run / EVALUATION_FILE
    if not path.exists():
        return {"decision": "not-run", "gates": [], "undecided": "canary"}
    ev = json.loads(path.read_text())
    return {"decision": ev.get("decision", "passed" if ev.get("passed") else "failed"), "gates": ev.get("gates", []),
            "undecided": (ev.get("promotion") or {}).get("undecided", "canary"), "model_digest": ev.get("model_digest")}


def release_decision(model: str, variant: str) -> str:
    """The decision a promotion reads: the worse of the model's gates and the shipped variant's.

    When no variant passes but fp32's variant gates are only undecided (an interval straddles its
    limit), fp32 as it was judged (temperature-scaled, its own post-processing) ships and the
    release is undecided; when fp32 failed one, nothing judged can ship and ``variant`` is "failed".
    """
    return worst_decision(model, variant)


def compress_run(
    run_dir: str | Path, *, policy: str | Path | None = None, options: CompressionOptions | None = None,
    timing: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """``fedready compress RUN --gate POLICY``: build, gate and select (see :func:`gate_assessor`)."""
    assess, x, y = gate_assessor(run_dir, policy)
    task = _run_task(Path(run_dir))  # the benchmark gate_assessor read (cached): its raw sensitive columns
    groups = {a: task.test.columns[a] for a in task.schema.sensitive}
    report = compress(run_dir, assess=assess, options=options or CompressionOptions(), x=x, y=y, timing=timing,
                      groups=groups, source=task.test_source)  # fmt: skip
    from fedready.evaluation.card import refresh_model_card

    refresh_model_card(Path(run_dir))  # an evaluated run's card gains its "Edge variants" section
    return report


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """The per-variant numbers worth keeping in ``compression.json`` (the full suites are large)."""
    fair = {a: {k: v for k, v in f.items() if k != "groups"} for a, f in report["fairness"].items()}
    pert = {n: {k: v for k, v in p.items() if k in ("accuracy_drop", "flip_rate")}
            for n, p in report["stability"]["perturbations"].items()}  # fmt: skip
    mit = report.get("mitigation")
    return {
        "fairness": fair,
        "fidelity": report.get("fidelity", {}),
        "estimates": {k: v for k, v in report.get("estimates", {}).items()
                      if k.startswith(("fidelity.", "calibration.", "metrics."))},  # fmt: skip
        "calibration": {k: report["calibration"][k] for k in ("ece", "brier")},
        "perturbations": pert,
        "mitigation": {k: mit[k] for k in ("attribute", "eod_before", "eod_after", "accuracy_cost_points")}
        if mit
        else None,
        "mitigation_rule": mit["rule"] if mit else None,
    }
