"""``fedready evaluate``, ``compress`` and ``explain``: judge a finished run and shrink it for devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedready.cli._common import _errors, _fail, app, err
from fedready.errors import ConfigError, FedreadyError


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    gate: Annotated[Path | None, typer.Option(help="Gate policy TOML. [default: the shipped default policy]")] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="A previous run: report version churn against its model.")
    ] = None,
    seeds: Annotated[
        int,
        typer.Option(help="Retrain with this many seeds in total for seed stability (each is a full run; 0 = off)."),
    ] = 0,
    seeds_epsilon: Annotated[
        float | None,
        typer.Option(help="The epsilon the run may reach with the --seeds retrains (each is a release about the same "
                          "rows). [default: the run's own budget: --seeds is refused]"),
    ] = None,
    federated: Annotated[
        bool, typer.Option("--federated/--no-federated", help="Ask the run's clients for group counts (on).")
    ] = True,
    data: Annotated[Path | None, typer.Option(help="Evaluate on this CSV instead of the run's benchmark.")] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Declared schema TOML of --data. [default: the run's schema.json]")
    ] = None,
    mitigate: Annotated[
        str | None,
        typer.Option(help="Sensitive attribute for threshold post-processing. [default: the schema's first]"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Fairness, stability, calibration, mitigation and explanations for a run; check the gates; write the model card.

    Every gated number is shown with its 95% interval and its source (benchmark, clients, ledger).
    Exit code 0 when every gate passes, 1 when any fails, 3 when none fails but some are undecided,
    2 for a bad policy or option.
    """
    from fedready.evaluation import evaluate_run

    try:
        report = evaluate_run(run, policy=gate, baseline=baseline, seeds=seeds, federated=federated, data=data,
                              schema=schema, mitigate=mitigate, seeds_epsilon=seeds_epsilon)  # fmt: skip
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(report, sort_keys=True))
    else:
        _print_gates(report)
    if report["decision"] != "passed":
        raise typer.Exit(1 if report["decision"] == "failed" else 3)


@app.command()
def compress(
    run: Annotated[Path, typer.Argument(help="A finished run folder (best trained with --model mlp-large).")],
    gate: Annotated[Path | None, typer.Option(help="Gate policy TOML. [default: the shipped default policy]")] = None,
    student_widths: Annotated[
        str, typer.Option(help="Hidden widths of the distilled student, e.g. 64 or 32,32.")
    ] = "64",
    prune_keep: Annotated[float, typer.Option(help="Structured pruning: share of hidden units kept.")] = 0.25,
    sparsity: Annotated[float, typer.Option(help="Unstructured pruning: share of weights zeroed.")] = 0.5,
    epochs: Annotated[int, typer.Option(help="Distillation and fine-tuning epochs over the public transfer set.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the transfer/evaluation split and of training.")] = 0,
    timing: Annotated[bool, typer.Option("--timing/--no-timing", help="Measure latency and throughput (on).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print compression.json on stdout.")] = False,
) -> None:
    """Build edge variants (int8, pruned, distilled, chained), gate each one, select the smallest that passes.

    Each variant is judged by the policy's variant gates: its fidelity to the trained model on the benchmark
    (accuracy lost, decisions agreeing, calibration, change in group fairness). Writes RUN/compression/ (every
    variant's ONNX, compression.json, compression.md, size_vs_accuracy.png, selected.onnx and its
    thresholds.json). Exit code 0 when a variant passes and is selected; 3 when none passes but fp32's
    variant gates are only undecided (fp32, as judged, is selected: canary at most); 1 when nothing may ship.
    """
    with _errors():
        try:
            widths = tuple(int(w) for w in student_widths.split(","))
        except ValueError:
            raise ConfigError(
                "student-widths", f"expected comma-separated integers like 64 or 32,32, got '{student_widths}'"
            ) from None
        from fedready.compression.pipeline import CompressionOptions, compress_run

        opts = CompressionOptions(
            student_widths=widths, prune_keep=prune_keep, sparsity=sparsity, epochs=epochs, seed=seed
        )
        report = compress_run(run, policy=gate, options=opts, timing=timing)
    if json_out:
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "table"}, sort_keys=True, default=float))
    else:
        typer.echo(report["table"])
    for skip in report.get("skipped", []):
        err.print(f"skipped {skip['variant']}: {skip['reason']}", markup=False, highlight=False, soft_wrap=True)
    model = report["model"]
    if report["selected"] is None:
        err.print(f"[bold red]no variant selected:[/] {escape(report['reason'])}", markup=True, highlight=False,
                  soft_wrap=True)  # fmt: skip
        err.print(f"release decision: failed (fp32 failed a variant gate too; the trained model's gates: "
                  f"{model['decision']})", highlight=False)  # fmt: skip
        raise typer.Exit(1)
    shipped = report.get("selected_decision") or "passed"
    err.print(f"selected {report['selected']} -> {run / 'compression' / 'selected.onnx'}", highlight=False)
    if shipped != "passed":  # no variant passed; fp32's gates were only undecided, so it ships as judged
        err.print(f"[yellow]no variant passes:[/] {escape(report['reason'])}", markup=True, highlight=False,
                  soft_wrap=True)  # fmt: skip
    err.print(f"release decision: {report['decision']} (the trained model's gates: {model['decision']}; the selected "
              f"variant's gates: {shipped})", highlight=False)  # fmt: skip
    if shipped != "passed":
        raise typer.Exit(3)


def _num(v: Any) -> str:
    return "undefined" if v is None else f"{v:.4f}"


_VERDICT = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "undecided": "[yellow]undecided[/]"}


def _measured(g: dict[str, Any]) -> str:
    if g["measured"] is None:
        return "undefined"
    if g.get("lo") is None or g.get("hi") is None or g["lo"] == g["hi"]:
        return f"{g['measured']:.4f}"
    return f"{g['measured']:.4f} [{g['lo']:.4f}, {g['hi']:.4f}]"


def _print_gates(report: dict[str, Any]) -> None:
    from rich.table import Table

    from fedready.evaluation.gates import GateResult

    table = Table(title=escape(f"release gates: {report['policy']['name']} on {report['run_id']}"))
    table.add_column("gate", overflow="fold")
    for col in ("measured [95% interval]", "limit", "source", "result"):
        table.add_column(col, justify="right", no_wrap=True)
    for g in report["gates"]:
        table.add_row(escape(g["gate"]), _measured(g), _num(g["limit"]), g.get("source", ""), _VERDICT[g["outcome"]])
    Console().print(table)
    m = report.get("mitigation")
    lines = [f"accuracy {report['metrics']['accuracy']:.4f}, ECE {report['calibration']['ece']:.4f}"]
    if m:
        lines.append(
            f"post-processing ({m['attribute']}): EOD {m['eod_before']:.4f} -> {m['eod_after']:.4f}, "
            f"accuracy {m['accuracy_before']:.4f} -> {m['accuracy_after']:.4f} on the held-out half"
        )
        lines += m.get("small_groups", [])
    run = Path(report["run"])
    lines.append(f"wrote {run / 'evaluation.json'}, {run / 'model_card.html'}, {run / 'model_card.md'}")
    for line in lines:
        err.print(line, highlight=False)
    err.print(f"decision: {report['decision']} (an undecided model may reach: "
              f"{report['promotion']['undecided']}; never stable by default)", highlight=False)
    for g in report["gates"]:
        if g["outcome"] != "pass":
            err.print(escape(GateResult.from_dict(g).line()), highlight=False)


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    row: Annotated[int, typer.Option(help="Row index (0-based) in the run's benchmark, or in --csv.")] = 0,
    csv: Annotated[
        Path | None, typer.Option(help="Explain a row of this CSV instead (in the run's schema unless --schema).")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="Declared schema TOML of --csv. [default: the run's]")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON on stdout.")] = False,
) -> None:
    """Why the model decided as it did for one input: attributions and the nearest actionable counterfactual."""
    from fedready.evaluation import explain_run_row

    try:
        out = explain_run_row(run, row=row, csv=csv, schema=schema)
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(out, sort_keys=True))
        return
    from rich.table import Table

    con = Console()
    con.print(f"row {row}: the model decides [bold]{escape(out['decision'])}[/] (p {out['probability']:.3f})",
              highlight=False)  # fmt: skip
    table = Table(title="integrated gradients per feature (towards the decision; + pushes for it)")
    for col in ("feature", "value", "attribution"):
        table.add_column(col, justify="left" if col != "attribution" else "right")
    for name, a in out["attributions"].items():
        table.add_row(name, out["values"][name], f"{a:+.4f}")
    con.print(table)
    cf = out["counterfactual"]
    if cf is None:
        con.print(f"no change of at most two actionable features ({', '.join(out['actionable'])}) flips the decision")
    else:
        con.print(escape(cf["sentence"]) + f" (p {cf['probability']:.3f})", highlight=False)
