"""``fedready simulate`` and ``fedready pipeline``: federated training runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedready.cli._common import _echo_json, _errors, _fail, app, err
from fedready.errors import FedreadyError


@app.command()
def simulate(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Training CSV (header row) the clients split. [default: the embedded data set]",
            rich_help_panel="Data and model",
        ),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            help="Schema TOML of --data (draft one: fedready schema draft DATA).", rich_help_panel="Data and model"
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            help="Benchmark CSV in the same format: the server's holdout, used to evaluate.",
            rich_help_panel="Data and model",
        ),
    ] = None,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            help="Without --test: share of --data held out as the benchmark. [default: 0.2]",
            rich_help_panel="Data and model",
        ),
    ] = None,
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients. [default: 10]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Server rounds. [default: 50]")] = None,
    partitioner: Annotated[
        str | None, typer.Option(help="iid | dirichlet | sensitive | quantity. [default: dirichlet]")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet skew (smaller = more skewed). [default: 0.5]")] = None,
    skew_attribute: Annotated[
        str | None,
        typer.Option(help="Sensitive attribute for --partitioner sensitive. [default: the schema's first]"),
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Per-client epsilon for the whole training. [default: 1.0]")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="Per-client delta, below 1/n. [default: 1e-5]")] = None,
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="Sample-level DP-SGD (on by default).")] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for partitioning, initialisation and scenarios (never DP noise). [default: 0]"),
    ] = None,
    count_noise: Annotated[
        float | None, typer.Option(help="Std (rows) of the noise on each client's row count. [default: 20]")
    ] = None,
    query_noise: Annotated[
        float | None,
        typer.Option(help="Noise multiplier of the counts clients answer after training. [default: 12]"),
    ] = None,
    query_accuracy_share: Annotated[
        float | None,
        typer.Option(help="Share of that answer's privacy cost spent on each client's own accuracy counts. "
                          "[default: 0.8]"),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help="Share of each client's rows kept aside for its own validation. [default: 0.2]"),
    ] = None,
    insecure_seeded_noise: Annotated[
        bool | None,
        typer.Option("--insecure-seeded-noise", help="Derive DP noise from --seed (bit-exact reruns): NOT private."),
    ] = None,
    exact_evaluation: Annotated[
        bool | None,
        typer.Option("--exact-evaluation", help="Clients send exact group counts (outside the DP guarantee)."),
    ] = None,
    release_train_loss: Annotated[
        bool | None,
        typer.Option("--release-train-loss", help="Clients send their training loss (outside the DP guarantee)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="logreg | mlp | mlp-wide | mlp-large | package.module:factory. [default: mlp; under DP logreg when "
            "clients hold under 2,000 training rows each]",
            rich_help_panel="Data and model",
        ),
    ] = None,
    local_steps: Annotated[int | None, typer.Option(help="SGD steps per round; 0 = whole epochs. [default: 3]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round when --local-steps 0.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Expected Poisson batch size. [default: 1024]")] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Local learning rate at round 1. [default: 6.0 with DP, 1.0 without or for mlp-large; below "
                          "2,000 training rows per client, logreg's is lowered until the final model's DP noise norm is "
                          "at most 6]"),
    ] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="constant | cosine. [default: cosine]")] = None,
    max_grad_norm: Annotated[float | None, typer.Option(help="Per-sample clipping bound. [default: 1.0]")] = None,
    accountant: Annotated[str | None, typer.Option(help="rdp | prv. [default: rdp]")] = None,
    fraction_train: Annotated[
        float | None, typer.Option(help="Share of clients sampled per round. [default: 1.0]")
    ] = None,
    fraction_evaluate: Annotated[
        float | None,
        typer.Option(help="Share of clients asked for group counts and profile after training. [default: 1.0]"),
    ] = None,
    min_client_rows: Annotated[
        int | None, typer.Option(help="Fewest rows a client may get (lower it for thousands of clients). [default: 20]")
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
    clip_count_stddev: Annotated[
        float | None,
        typer.Option(
            help="Adaptive clipping: noise std of the unclipped count. [default: expected clients / 20]",
            rich_help_panel="Client-level DP and SecAgg+",
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
    query_distributed_noise: Annotated[
        bool | None,
        typer.Option(
            "--query-distributed-noise/--query-local-noise",
            help="Under --secagg, each client adds a 1/t share of the noise on the summed counts (the secure sum "
            "carries it whole), or its whole noise. A deployed client shares only if its limits opt in. [default: "
            "distributed]",
            rich_help_panel="Client-level DP and SecAgg+",
        ),
    ] = None,
    query_secagg_threshold: Annotated[
        int | None,
        typer.Option(
            help="t of the query's SecAgg+ round: least clients in its sum (each adds 1/t of the noise). "
            "[default: 90% of the clients asked, at most all but one]",
            rich_help_panel="Client-level DP and SecAgg+",
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
    wire_log: Annotated[
        Path | None, typer.Option(help="Every client appends the keys of each message it sends to this file.")
    ] = None,
) -> None:
    """Run a private federated training on your CSV (--data, --schema) or the embedded data set."""
    given = {
        "data": data, "schema": schema, "test": test, "test_fraction": test_fraction,
        "num_clients": clients, "rounds": rounds, "partitioner": partitioner, "alpha": alpha,
        "skew_attribute": skew_attribute, "epsilon": epsilon, "delta": delta, "dp": dp, "seed": seed,
        "model": model, "local_epochs": local_epochs, "local_steps": local_steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": lr_schedule,
        "max_grad_norm": max_grad_norm, "accountant": accountant, "fraction_train": fraction_train,
        "min_client_rows": min_client_rows, "fraction_evaluate": fraction_evaluate,
        "budget_rounds": budget_rounds, "client_dp": client_dp, "client_epsilon": client_epsilon,
        "client_noise_multiplier": client_noise_multiplier, "client_delta": client_delta, "client_clip": client_clip,
        "clip_quantile": clip_quantile, "clip_count_stddev": clip_count_stddev, "secagg": secagg,
        "count_noise": count_noise, "query_noise": query_noise,
        "query_accuracy_share": query_accuracy_share, "val_fraction": val_fraction, "insecure_seeded_noise": insecure_seeded_noise,
        "exact_evaluation": exact_evaluation, "release_train_loss": release_train_loss, "secagg_shares": secagg_shares,
        "secagg_threshold": secagg_threshold, "secagg_clip_range": secagg_clip_range,
        "secagg_quantization": secagg_quantization, "query_distributed_noise": query_distributed_noise,
        "query_secagg_threshold": query_secagg_threshold, "aggregator": aggregator, "trim_beta": trim_beta,
        "num_malicious": num_malicious, "qffl_q": qffl_q, "validate_updates": validate, "median_factor": median_factor,
        "min_clients": min_clients, "round_timeout": round_timeout, "attack": attack,
        "attack_fraction": attack_fraction, "attack_scale": attack_scale, "dropout": dropout,
        "slow_fraction": slow_fraction,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    try:
        summary = run_simulate(
            given, out=out, name=name, resume=resume, ray_address=ray_address, quiet=json_out, wire_log=wire_log
        )
    except FedreadyError as e:
        raise _fail(e) from None
    if json_out:
        typer.echo(json.dumps(summary, sort_keys=True))
        if summary.get("status") == "failed":
            raise typer.Exit(1)
    elif summary.get("status") == "failed":
        err.print(f"error: the run {_failure(summary, summary['run_dir'])}", highlight=False)
        raise typer.Exit(1)
    else:
        eps = (
            f"epsilon {summary['epsilon']:.3f} (delta {summary['delta']:g})" if summary["dp"] else "no sample-level DP"
        )
        if summary["client_epsilon"] is not None:
            eps += f", client-level epsilon {summary['client_epsilon']:.3f} (delta {summary['client_delta']:g})"
        err.print(f"accuracy {summary['accuracy']:.4f}, {eps}, {summary['seconds']:.0f} s -> {summary['run_dir']}")
        _say_reference(summary)
        _say_rejections(summary)
        if summary["dp"] and summary.get("epsilon_parts"):
            parts = summary["epsilon_parts"]
            err.print(
                f"epsilon composes every release about a client's rows: training {parts['sample']:.3f}, "
                f"row count {parts['count']:.3f}, post-training counts {parts['query']:.3f} (each alone)"
            )
        for caveat in summary.get("caveats", []):
            err.print(f"[bold red]{caveat}[/]")
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


def _say_reference(summary: dict[str, Any]) -> None:
    """The benchmark's majority-class rate and the balanced accuracy beside the accuracy; a warning at or below it."""
    from fedready.metrics import below_majority

    if summary.get("majority_rate") is None:  # a run from before these numbers were recorded
        return
    err.print(f"benchmark: majority class {summary['majority_rate']:.4f}, balanced accuracy "
              f"{summary['balanced_accuracy']:.4f} (chance {summary['chance']:.4f})", highlight=False)  # fmt: skip
    warning = below_majority(summary)
    if warning:
        err.print(warning, markup=False, highlight=False, soft_wrap=True)


def _say_rejections(summary: dict[str, Any]) -> None:
    from fedready.server.app import rejection_lines

    if summary.get("mostly_rejected_clients"):
        for line in rejection_lines(Path(summary["run_dir"])):
            err.print(line, markup=False, highlight=False, soft_wrap=True)


def run_simulate(
    given: dict[str, Any],
    *,
    out: Path,
    name: str | None,
    resume: Path | None,
    ray_address: str | None,
    quiet: bool = False,
    wire_log: Path | None = None,
) -> dict[str, Any]:
    """Validate options, then start or resume a simulation with a progress bar (the body of ``fedready simulate``)."""
    import fedready

    options = dict(given)
    task = {k: options.pop(k) for k in ("data", "schema", "test", "test_fraction", "model") if k in options}
    progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=err, disable=quiet)  # fmt: skip
    bar: dict[str, Any] = {}

    def on_start(cfg: Any) -> None:
        progress.start()
        bar["id"], bar["dp"] = progress.add_task("starting clients...", total=cfg.rounds), cfg.dp

    def on_round(r: Any) -> None:
        extra = f" declined {len(r.declined)}" if r.declined else ""
        extra += f" rejected {len(r.rejected)}" if r.rejected else ""
        extra += f" failed {len(r.failed)}" if r.failed else ""
        extra += " skipped" if r.skipped else ""
        eps = f" epsilon {r.epsilon:.3f}" if bar["dp"] else ""
        progress.update(bar["id"], completed=r.round, description=f"accuracy {r.accuracy:.4f}{eps}{extra}")

    def on_note(note: str) -> None:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)

    try:
        result = fedready.simulate(**task, out=out, name=name, resume=resume, ray_address=ray_address,
                                   on_round=on_round, on_note=on_note, on_start=on_start, wire_log=wire_log,
                                   **options)  # fmt: skip
    finally:
        if "id" in bar:  # started (a refused configuration never draws the bar)
            progress.stop()
    return result.summary


def _failure(summary: dict[str, Any], run: Any) -> str:
    """One line for a failed run: its reason, the first client error, where the details are."""
    return (f"failed: {summary.get('reason')}; first client error: {summary.get('first_client_error')} "
            f"(see {run}/audit.jsonl)")  # fmt: skip


@app.command()
def status(
    run: Annotated[Path, typer.Argument(help="a run folder (simulated, or written by flwr run)")],
    json_out: Annotated[bool, typer.Option("--json", help="print summary.json")] = False,
) -> None:
    """A run's outcome from its summary.json: exit 0 completed, 1 failed (for scripts around `flwr run`)."""
    from fedready.errors import ConfigError

    path = run / "summary.json"
    if not path.is_file():
        raise _fail(ConfigError("run", f"{run} holds no summary.json (still running, or not a run folder); "
                                       "pass the run-dir of a finished run"))  # fmt: skip
    summary = json.loads(path.read_text(encoding="utf-8"))
    failed = summary.get("status") == "failed"
    if json_out:
        _echo_json(summary)
    elif failed:
        err.print(_failure(summary, run), highlight=False, soft_wrap=True)
    else:
        eps = f"epsilon {summary['epsilon']:.3f}" if summary.get("dp") else "no sample-level DP"
        typer.echo(f"completed: {summary.get('rounds_completed')} rounds, accuracy {summary['accuracy']:.4f}, {eps}")
    if failed:
        raise typer.Exit(1)


@app.command()
def pipeline(
    data: Annotated[
        Path | None, typer.Option(help="Training CSV (header row). [default: the embedded data set]")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="Schema TOML of --data.")] = None,
    test: Annotated[Path | None, typer.Option(help="Benchmark CSV in the same format.")] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="Without --test: share of --data held out as the benchmark. [default: 0.2]")
    ] = None,
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients. [default: 10]")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the run, keys, artifacts, registry and device (one data set per folder). "
            "[default: fedready-<schema name> with --data, else fedready-demo]"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Global model (or package.module:factory). [default: mlp; under DP logreg when clients hold "
            "under 2,000 training rows each]"
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Server rounds. [default: 50]")] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Per-client epsilon for the whole training. [default: 1.0]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed. [default: 0]")] = None,
    version: Annotated[str, typer.Option(help="Artifact version to package and publish.")] = "1.0.0",
    force: Annotated[
        bool, typer.Option("--force", help="Promote to stable even with failed or undecided gates (needs --reason).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gates are overridden (recorded).")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary of every step as JSON on stdout.")
    ] = False,
) -> None:
    """The whole job: train, evaluate, compress, sign, publish, update a device and predict raw rows.

    On your CSV (--data, --schema) or the embedded data set. Run it again after a failure: it resumes
    the training and redoes or re-checks the later steps. Only a release whose gates all pass
    reaches stable: exit 0; an undecided gate stops it at canary (exit 3), a failed one promotes it
    nowhere (exit 1), each blocking gate printed in one line.
    """
    import fedready

    options = {k: v for k, v in {"num_clients": clients, "rounds": rounds, "epsilon": epsilon, "seed": seed}.items()
               if v is not None}  # fmt: skip
    with _errors():
        result = fedready.pipeline(data, schema, test=test, test_fraction=test_fraction, model=model, out=out,
                                   version=version, simulate_with=run_simulate, force=force, reason=reason, **options,
                                   say=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True))  # fmt: skip
    if json_out:
        _echo_json(result.steps)
    if "stable" not in result.channels:
        raise typer.Exit(1 if result.decision in ("failed", "not-run") else 3)
