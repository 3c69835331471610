"""The ``fedready`` command line. Each command maps onto one Python function.

Errors are caught only here, at the top: a :class:`ConfigError` becomes one line
on stderr and exit code 2, an :class:`IntegrityError` one line and exit code 1.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedready.errors import ConfigError, FedreadyError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy-preserving federated training.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Privacy-preserving federated training: simulate, account, evaluate, ship."""


def _fail(e: FedreadyError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(e, ConfigError) else 1)


def _new_run_dir(out: Path) -> Path:
    return out / f"sim-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@app.command()
def simulate(
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients. [default: 10]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Server rounds. [default: 50]")] = None,
    partitioner: Annotated[
        str | None, typer.Option(help="iid | dirichlet | sensitive | quantity. [default: dirichlet]")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet skew (smaller = more skewed). [default: 0.5]")] = None,
    skew_attribute: Annotated[
        str | None, typer.Option(help="Sensitive attribute for --partitioner sensitive. [default: sex]")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Per-client epsilon for the whole training. [default: 1.0]")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Per-client delta, below 1/n. [default: 1e-5]")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Sample-level DP-SGD (on by default).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for partitioning, initialisation and sampling. [default: 0]")
    ] = None,
    model: Annotated[str | None, typer.Option(help="logreg | mlp | mlp-wide | mlp-large. [default: mlp]")] = None,
    local_steps: Annotated[int | None, typer.Option(help="SGD steps per round; 0 = whole epochs. [default: 3]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round when --local-steps 0.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Expected Poisson batch size. [default: 1024]")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Local learning rate at round 1. [default: 6.0 with DP, 1.0 without]")
    ] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="constant | cosine. [default: cosine]")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Per-sample clipping bound. [default: 1.0]")] = None,
    accountant: Annotated[str | None, typer.Option(help="rdp | prv. [default: rdp]")] = None,
    fraction_train: Annotated[
        float | None, typer.Option(help="Share of clients sampled per round. [default: 1.0]")
    ] = None,
    budget_rounds: Annotated[
        int | None, typer.Option(help="Rounds the budget is spread over. [default: --rounds]")
    ] = None,
    client_dp: Annotated[
        str | None,
        typer.Option(
            help="Client-level DP: off | server-fixed | server-adaptive | client-fixed | client-adaptive.",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    client_epsilon: Annotated[
        float | None,
        typer.Option(
            help="Target client-level epsilon (calibrates the noise; run budget).",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    client_noise_multiplier: Annotated[
        float | None,
        typer.Option(
            help="Client-level noise multiplier z (instead of --client-epsilon).",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    client_delta: Annotated[
        float | None,
        typer.Option(
            help="Client-level delta, below 1/clients. [default: 1e-5]", rich_help_panel="Client-level DP and SecAgg+"
        ),
    ] = None,
    client_clip: Annotated[
        float | None,
        typer.Option(
            help="L2 bound on each update (initial bound if adaptive). [default: 1.0]",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    clip_quantile: Annotated[
        float | None,
        typer.Option(
            help="Adaptive clipping target quantile. [default: 0.5]", rich_help_panel="Client-level DP and SecAgg+"
        ),
    ] = None,
    secagg: Annotated[
        bool | None,
        typer.Option(
            "--secagg/--no-secagg",
            help="Secure aggregation with SecAgg+.",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    secagg_shares: Annotated[
        int | None,
        typer.Option(help="SecAgg+ shares per secret. [default: 3]", rich_help_panel="Client-level DP and SecAgg+"),
    ] = None,
    secagg_threshold: Annotated[
        int | None,
        typer.Option(
            help="SecAgg+ reconstruction threshold. [default: 2]", rich_help_panel="Client-level DP and SecAgg+"
        ),
    ] = None,
    secagg_clip_range: Annotated[
        float | None,
        typer.Option(
            help="SecAgg+ value range before quantisation. [default: 8.0]",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    secagg_quantization: Annotated[
        int | None,
        typer.Option(
            help="SecAgg+ quantisation levels. [default: 4194304]", rich_help_panel="Client-level DP and SecAgg+"
        ),
    ] = None,
    aggregator: Annotated[
        str | None,
        typer.Option(
            help="fedavg | median | trimmed-mean | krum | multikrum | bulyan | qfedavg.",
            rich_help_panel="Robustness and scenarios",
        ),
    ] = None,
    qffl_q: Annotated[
        float | None,
        typer.Option(
            help="q-FFL fairness exponent for --aggregator qfedavg. [default: 0.1]",
            rich_help_panel="Robustness and scenarios",
        ),
    ] = None,
    trim_beta: Annotated[
        float | None,
        typer.Option(
            help="Trimmed mean: share cut at each end. [default: 0.2]", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    num_malicious: Annotated[
        int | None,
        typer.Option(
            help="Krum/Bulyan: assumed attackers per round. [default: 0]", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    validate: Annotated[
        bool | None,
        typer.Option(
            "--validate/--no-validate",
            help="Reject malformed or outsized updates (on).",
            rich_help_panel="Robustness and scenarios",
        ),
    ] = None,
    median_factor: Annotated[
        float | None,
        typer.Option(
            help="Reject norms above this x the round median. [default: 10]", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    min_clients: Annotated[
        int | None,
        typer.Option(
            help="Skip a round with fewer accepted updates. [default: 1]", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    round_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for replies. [default: 600]", rich_help_panel="Robustness and scenarios"),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(
            help="none | sign-flip | scale | nan | zero | label-flip.", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    attack_fraction: Annotated[
        float | None, typer.Option(help="Share of attacking clients.", rich_help_panel="Robustness and scenarios")
    ] = None,
    attack_scale: Annotated[
        float | None,
        typer.Option(help="Factor for --attack scale. [default: 100]", rich_help_panel="Robustness and scenarios"),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(help="Per-round probability a client drops out.", rich_help_panel="Robustness and scenarios"),
    ] = None,
    slow_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of clients slower than the round timeout.", rich_help_panel="Robustness and scenarios"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Parent folder for new runs.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run folder name (default: sim-<time>-<id>).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this folder from its last checkpoint.")
    ] = None,
    ray_address: Annotated[str | None, typer.Option(help="Existing Ray cluster address (ray start --head).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout.")] = False,
) -> None:
    """Run a private federated training on the embedded UCI Adult data."""
    given = {
        "num_clients": clients, "rounds": rounds, "partitioner": partitioner, "alpha": alpha,
        "skew_attribute": skew_attribute, "epsilon": epsilon, "delta": delta, "dp": dp, "seed": seed,
        "model": model, "local_epochs": local_epochs, "local_steps": local_steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": lr_schedule,
        "max_grad_norm": max_grad_norm, "accountant": accountant, "fraction_train": fraction_train,
        "budget_rounds": budget_rounds, "client_dp": client_dp, "client_epsilon": client_epsilon,
        "client_noise_multiplier": client_noise_multiplier, "client_delta": client_delta, "client_clip": client_clip,
        "clip_quantile": clip_quantile, "secagg": secagg, "secagg_shares": secagg_shares,
        "secagg_threshold": secagg_threshold, "secagg_clip_range": secagg_clip_range,
        "secagg_quantization": secagg_quantization, "aggregator": aggregator, "trim_beta": trim_beta,
        "num_malicious": num_malicious, "qffl_q": qffl_q, "validate_updates": validate, "median_factor": median_factor,
        "min_clients": min_clients, "round_timeout": round_timeout, "attack": attack,
        "attack_fraction": attack_fraction, "attack_scale": attack_scale, "dropout": dropout,
        "slow_fraction": slow_fraction,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("local_steps") == 0:
        given["local_steps"] = None  # whole epochs
    try:
        summary = run_simulate(given, out=out, name=name, resume=resume, ray_address=ray_address, quiet=json_out)
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(summary, sort_keys=True))
    else:
        eps = (
            f"epsilon {summary['epsilon']:.3f} (delta {summary['delta']:g})" if summary["dp"] else "no sample-level DP"
        )
        if summary["client_epsilon"] is not None:
            eps += f", client-level epsilon {summary['client_epsilon']:.3f} (delta {summary['client_delta']:g})"
        err.print(f"accuracy {summary['accuracy']:.4f}, {eps}, {summary['seconds']:.0f} s -> {summary['run_dir']}")
        extra = [f"{k.replace('_', ' ')} {summary[k]}" for k in ("rejected_updates", "failed_clients", "declined")
                 if summary[k]]  # fmt: skip
        if summary["undefended_accuracy"] is not None:
            extra.append(f"plain FedAvg on the same updates would reach {summary['undefended_accuracy']:.4f}")
        if summary["skipped_rounds"]:
            extra.append(f"skipped rounds {summary['skipped_rounds']}")
        if summary["stopped"]:
            extra.append(f"stopped early: {summary['stopped']}")
        if extra:
            err.print("; ".join(extra))


def run_simulate(
    given: dict[str, Any],
    *,
    out: Path,
    name: str | None,
    resume: Path | None,
    ray_address: str | None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Validate options, then start or resume a simulation (the body of ``fedready simulate``)."""
    from fedready.config import make_config
    from fedready.simulations.engine import check_config, load_run_config, simulate

    if resume is not None:
        base = load_run_config(resume).model_dump()
        changed = sorted(k for k in given if k != "rounds" and given[k] != base.get(k))
        if changed:
            raise ConfigError(changed[0].replace("_", "-"), "cannot change when resuming; only --rounds may change")
        if "rounds" in given and base["budget_rounds"] is None:
            base["budget_rounds"] = base["rounds"]  # the budget stays planned over the original rounds
        cfg = make_config(**{**base, **given})
        run_dir = resume
    else:
        cfg = make_config(**given)
        run_dir = out / name if name else _new_run_dir(out)
        if (run_dir / "config.json").exists():
            raise ConfigError("name", f"{run_dir} already holds a run; pick another --name or use --resume")
    check_config(cfg)  # fail fast (exit 2) before Ray starts or anything is written

    progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=err, disable=quiet)  # fmt: skip
    with progress:
        task = progress.add_task("starting clients...", total=cfg.rounds)

        def on_round(r: Any) -> None:
            extra = f" declined {len(r.declined)}" if r.declined else ""
            extra += f" rejected {len(r.rejected)}" if r.rejected else ""
            extra += f" failed {len(r.failed)}" if r.failed else ""
            extra += " skipped" if r.skipped else ""
            eps = f" epsilon {r.epsilon:.3f}" if cfg.dp else ""
            progress.update(task, completed=r.round, description=f"accuracy {r.accuracy:.4f}{eps}{extra}")

        return simulate(cfg, run_dir, on_round=on_round, ray_address=ray_address)


@app.command()
def ledger(
    run: Annotated[Path, typer.Argument(help="A run folder (or its ledger.json).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the check as JSON on stdout.")] = False,
) -> None:
    """Show a run's privacy ledger and recompute every epsilon from its recorded parameters."""
    try:
        report = check_ledger(run)
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(report, sort_keys=True))
    else:
        from rich.table import Table

        table = Table(title=f"privacy ledger: {report['path']}")
        for col in ("client", "rounds", "noise", "sample rate", "steps", "epsilon", "recomputed"):
            table.add_column(col, justify="right")
        for c in report["clients"]:
            table.add_row(c["client"], str(c["rounds"]), f"{c['noise_multiplier']:.3f}", f"{c['sample_rate']:.4f}",
                          str(c["steps"]), f"{c['epsilon']:.4f}", f"{c['recomputed']:.4f}")  # fmt: skip
        Console().print(table)
        verdict = "[green]matches[/]" if report["ok"] else "[red]DIFFERS[/]"
        err.print(f"run epsilon {report['epsilon']:.4f} (delta {report['delta']:g}, {report['accountant']}); "
                  f"recomputed with Opacus: {verdict}")  # fmt: skip
    if not report["ok"]:
        raise typer.Exit(1)


def check_ledger(run: Path, *, rel_tol: float = 0.01) -> dict[str, Any]:
    """Recompute a ledger with Opacus alone; ``ok`` is False if any entry differs by more than ``rel_tol``."""
    from fedready.privacy.ledger import Ledger, recompute

    path = run / "ledger.json" if run.is_dir() else run
    if not path.exists():
        raise ConfigError("run", f"{path} does not exist; pass a run folder written by fedready simulate")
    try:
        led = Ledger.load(path)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("run", f"{path} is not a readable fedready ledger ({e})") from e
    again = recompute(led)
    clients, ok = [], True
    for client in sorted(again, key=lambda c: (len(c), c)):
        mine = sorted((e for e in led.entries if e.client == client), key=lambda e: e.round)
        for e, (_, eps) in zip(mine, again[client], strict=True):
            ok &= abs(eps - e.epsilon) <= rel_tol * max(e.epsilon, 1e-12)
        last = mine[-1]
        clients.append({"client": client, "rounds": len(mine), "noise_multiplier": last.noise_multiplier,
                        "sample_rate": last.sample_rate, "steps": sum(e.steps for e in mine),
                        "epsilon": last.epsilon, "recomputed": again[client][-1][1]})  # fmt: skip
    return {"path": str(path), "epsilon": led.epsilon, "delta": led.delta, "accountant": led.accountant,
            "declines": len(led.declines), "clients": clients, "ok": ok}  # fmt: skip


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
    federated: Annotated[
        bool, typer.Option("--federated/--no-federated", help="Ask the run's clients for group counts (on).")
    ] = True,
    data: Annotated[
        Path | None, typer.Option(help="Evaluate on this CSV instead of Adult's test split (needs --schema).")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="Declared schema TOML of --data.")] = None,
    mitigate: Annotated[
        str | None,
        typer.Option(help="Sensitive attribute for threshold post-processing. [default: the schema's first]"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Fairness, stability, calibration, mitigation and explanations for a run; check the gates; write the model card.

    Exit code 0 when every gate passes, 1 when any fails, 2 for a bad policy or option.
    """
    from fedready.evaluation import evaluate_run

    try:
        report = evaluate_run(run, policy=gate, baseline=baseline, seeds=seeds, federated=federated, data=data,
                              schema=schema, mitigate=mitigate)  # fmt: skip
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(report, sort_keys=True))
    else:
        _print_gates(report)
    if not report["passed"]:
        raise typer.Exit(1)


def _num(v: Any) -> str:
    return "undefined" if v is None else f"{v:.4f}"


def _print_gates(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"release gates: {report['policy']['name']} on {report['run_id']}"))
    table.add_column("gate", overflow="fold")
    for col in ("measured", "limit", "result"):
        table.add_column(col, justify="right", no_wrap=True)
    for g in report["gates"]:
        verdict = "[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]"
        table.add_row(escape(g["gate"]), _num(g["measured"]), _num(g["limit"]), verdict)
    Console().print(table)
    m = report.get("mitigation")
    lines = [f"accuracy {report['metrics']['accuracy']:.4f}, ECE {report['calibration']['ece']:.4f}"]
    if m:
        lines.append(
            f"post-processing ({m['attribute']}): EOD {m['eod_before']:.4f} -> {m['eod_after']:.4f}, "
            f"accuracy {m['accuracy_before']:.4f} -> {m['accuracy_after']:.4f} on the held-out half"
        )
    run = Path(report["run"])
    lines.append(f"wrote {run / 'evaluation.json'}, {run / 'model_card.html'}, {run / 'model_card.md'}")
    for line in lines:
        err.print(line, highlight=False)
    for g in report["gates"]:
        if not g["passed"]:
            err.print(f"[bold red]gate failed:[/] {escape(g['gate'])}: measured {_num(g['measured'])}, "
                      f"limit {_num(g['limit'])}" + (f" ({g['note']})" if g["note"] else ""), highlight=False)  # fmt: skip


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    row: Annotated[int, typer.Option(help="Row index (0-based) in Adult's test split, or in --csv.")] = 0,
    csv: Annotated[
        Path | None, typer.Option(help="Explain a row of this CSV instead (needs --schema unless it is Adult-shaped).")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="Declared schema TOML of --csv. [default: Adult's]")] = None,
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
    con.print(f"row {row}: the model decides [bold]{out['decision']}[/] (p(positive) {out['probability_positive']:.3f})",
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
        con.print(cf["sentence"] + f" (p(positive) {cf['probability_positive']:.3f})", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
