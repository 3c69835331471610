"""The ``fedready`` command line. Each command maps onto one Python function.

Errors are caught only here, at the top: a :class:`ConfigError` becomes one line
on stderr and exit code 2, an :class:`IntegrityError` one line and exit code 1.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedready.errors import ConfigError, FedreadyError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy-preserving federated training.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Privacy-preserving federated training: simulate, account, evaluate, ship."""


def _fail(e: FedreadyError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(e, ConfigError) else 1)


_TRAINING_STACK = {"torch", "flwr", "opacus", "onnx", "ray"}


@contextmanager
def _errors() -> Iterator[None]:
    """Turn a :class:`FedreadyError` raised inside into its one-line message and exit code."""
    try:
        yield
    except FedreadyError as e:
        raise _fail(e) from None
    except ModuleNotFoundError as e:  # a lean edge install running an operator command
        if (e.name or "").split(".")[0] not in _TRAINING_STACK:
            raise
        raise _fail(ConfigError("install", f"this command needs the training stack ({e.name} is not installed); "
                                           "pip install -c constraints.txt 'fedready[train]'")) from None  # fmt: skip


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
        float | None,
        typer.Option(help="Local learning rate at round 1. [default: 6.0 with DP, 1.0 without or for mlp-large]"),
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
        "min_client_rows": min_client_rows, "fraction_evaluate": fraction_evaluate,
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
def pipeline(
    out: Annotated[Path, typer.Option(help="Folder for the run, keys, artifacts, registry and device.")] = Path(
        "fedready-demo"
    ),
    model: Annotated[str, typer.Option(help="Global model; mlp-large is the teacher worth compressing.")] = "mlp-large",
    rounds: Annotated[int | None, typer.Option(help="Server rounds. [default: 50]")] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Per-client epsilon for the whole training. [default: 1.0]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed. [default: 0]")] = None,
    version: Annotated[str, typer.Option(help="Artifact version to package and publish.")] = "1.0.0",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary of every step as JSON on stdout.")
    ] = False,
) -> None:
    """The whole job on the embedded data: train, evaluate, compress, sign, publish, update a device and predict.

    Run it again after a failure: it resumes the training and redoes or re-checks the later steps.
    """
    from fedready.pipeline import run_pipeline

    given = {
        k: v for k, v in {"model": model, "rounds": rounds, "epsilon": epsilon, "seed": seed}.items() if v is not None
    }
    with _errors():
        result = run_pipeline(out, given=given, version=version, say=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True),
                              simulate=run_simulate)  # fmt: skip
    if json_out:
        _echo_json(result)


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


keys_app = typer.Typer(no_args_is_help=True, help="Operator signing keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Folder for signing.key (private, mode 0600) and signing.pub.")],
    name: Annotated[str, typer.Option(help="File stem of the key pair.")] = "signing",
) -> None:
    """Create an ECDSA P-256 key pair for signing artifacts."""
    from fedready.registry import generate_keys

    with _errors():
        priv, pub = generate_keys(out, name=name)
    err.print(f"private key {priv} (keep it offline), public key {pub} (give it to devices)")


@app.command()
def package(
    run: Annotated[Path, typer.Argument(help="A run folder written by fedready simulate.")],
    key: Annotated[Path, typer.Option(help="Operator private key (PEM) that signs the artifact.")],
    version: Annotated[str, typer.Option(help="Artifact version, e.g. 1.0.0; immutable once written.")],
    out: Annotated[Path, typer.Option(help="Folder of artifacts; the artifact goes to OUT/VERSION.")] = Path(
        "artifacts"
    ),
    parent_version: Annotated[
        str | None, typer.Option(help="Version this model replaces (recorded in provenance).")
    ] = None,
    unknown_group: Annotated[
        str | None,
        typer.Option(
            help="Rows whose sensitive value the fairness rule does not know: refuse (default), "
            "no-post-processing or group:NAME (signed into thresholds.json)."
        ),
    ] = None,
) -> None:
    """Write a signed, versioned artifact (ONNX model, schema, provenance, reports) for a run."""
    from fedready.registry import package_run

    with _errors():
        path, new = package_run(run, key=key, version=version, out=out, parent_version=parent_version,
                                unknown_group=unknown_group)  # fmt: skip
    err.print(f"{'packaged' if new else 'already packaged, unchanged'}: {path}")
    typer.echo(str(path))


@app.command()
def verify(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder.")],
    public_key: Annotated[Path, typer.Option(help="Operator public key (PEM).")],
) -> None:
    """Check every file of an artifact against its signature (exit 1 naming what differs)."""
    from fedready.registry import verify_artifact

    with _errors():
        prov = verify_artifact(artifact, public_key=public_key)
    err.print(f"verified {artifact}: version {prov.version}, run {prov.run_id}, model {prov.model_digest}")


registry_app = typer.Typer(no_args_is_help=True, help="The model registry: a TUF repository with release channels.")
app.add_typer(registry_app, name="registry")
edge_app = typer.Typer(no_args_is_help=True, help="The edge agent: update, predict, serve, roll back on a device.")
app.add_typer(edge_app, name="edge")
RegistryPath = Annotated[Path, typer.Argument(help="The registry folder (its repository/ is what you serve).")]
Home = Annotated[Path, typer.Option(help="The device folder.")]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, sort_keys=True, default=str))


@registry_app.command("init")
def registry_init(
    path: RegistryPath,
    channel: Annotated[list[str] | None, typer.Option(help="Channel names (repeat). [default: canary, stable]")] = None,
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Create a registry: role keys, version-1 TUF metadata, an audit log."""
    from fedready.registry import CHANNELS, Registry

    with _errors():
        reg = Registry.init(path, channels=tuple(channel or CHANNELS), actor=actor)
    err.print(f"registry {reg.path}: serve {reg.repo}; give devices {reg.metadata_dir / '1.root.json'}; "
              f"keep {reg.keys_dir} offline")  # fmt: skip


@registry_app.command("publish")
def registry_publish(
    path: RegistryPath,
    artifact: Annotated[Path, typer.Argument(help="A signed artifact folder (fedready package).")],
    public_key: Annotated[Path, typer.Option(help="Operator public key the artifact must verify with.")],
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Verify an artifact and add it to the registry (immutable once published)."""
    from fedready.registry import Registry

    with _errors():
        version = Registry(path).publish(artifact, public_key=public_key, actor=actor)
    err.print(f"published {version}")


@registry_app.command("promote")
def registry_promote(
    path: RegistryPath,
    version: Annotated[str, typer.Argument(help="A published version.")],
    channel: Annotated[str, typer.Option(help="canary | stable (or a configured channel).")],
    approver: Annotated[str, typer.Option(help="Who approved this promotion (recorded).")],
    rollout: Annotated[
        float, typer.Option(help="Percent of devices that take a canary (by hash of their id).")
    ] = 100.0,
    review_by: Annotated[
        str | None, typer.Option(help="ISO date the model must be reviewed by. [default: +90 days]")
    ] = None,
    force: Annotated[bool, typer.Option(help="Promote although gates failed or never ran (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why --force is justified (recorded).")] = None,
    min_agreement: Annotated[
        float | None, typer.Option(help="Refuse unless the shadow report shows at least this agreement (0-1).")
    ] = None,
    shadow_report: Annotated[Path | None, typer.Option(help="JSON written by `fedready shadow --out`.")] = None,
) -> None:
    """Point a channel at a version; refuses failed or unrun gates without --force --reason."""
    import datetime as dt

    from fedready.registry import Registry
    from fedready.registry._canonical import read_json

    with _errors():
        try:
            review = dt.date.fromisoformat(review_by) if review_by else None
        except ValueError as e:
            raise ConfigError("review-by", f"'{review_by}' is not an ISO date like 2027-03-01") from e
        if shadow_report is not None and not shadow_report.is_file():
            raise ConfigError(
                "shadow-report", f"{shadow_report} does not exist; write one with `fedready shadow --out`"
            )
        report = read_json(shadow_report, what="shadow report") if shadow_report is not None else None
        doc = Registry(path).promote(version, channel=channel, approver=approver, rollout_percent=rollout,
                                     review_by=review, force=force, reason=reason, min_agreement=min_agreement,
                                     shadow_report=report)  # fmt: skip
    forced = f" FORCED ({doc.reason})" if doc.forced else ""
    err.print(f"{channel} -> {doc.version} ({doc.rollout_percent:g}%), approved by {doc.approver}, "
              f"review by {doc.review_by}{forced}")  # fmt: skip


@registry_app.command("rollback")
def registry_rollback(
    path: RegistryPath,
    channel: Annotated[str, typer.Option(help="The channel to point back at its previous version.")],
    approver: Annotated[str, typer.Option(help="Who approved the rollback (recorded).")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
) -> None:
    """Point a channel back at the version it held before its last promotion."""
    from fedready.registry import Registry

    with _errors():
        doc = Registry(path).rollback(channel=channel, approver=approver, reason=reason)
    err.print(f"{channel} -> {doc.version}")


@registry_app.command("auto-rollback")
def registry_auto_rollback(
    path: RegistryPath,
    channel: Annotated[str, typer.Option(help="The channel whose devices' alerts are read (e.g. canary).")],
    alerts: Annotated[
        Path, typer.Option(help="Alert JSON lines from `fedready monitor` (devices' files concatenated).")
    ],
    min_devices: Annotated[
        int, typer.Option(help="Distinct devices that must report a breach of the current version.")
    ] = 3,
    min_share: Annotated[
        float, typer.Option(help="... or this share of the channel's devices (needs --fleet-size), if larger.")
    ] = 0.1,
    fleet_size: Annotated[
        int | None, typer.Option(help="Devices following this registry (the canary's share of them is its cohort).")
    ] = None,
    approver: Annotated[str, typer.Option(help="Recorded as the rollback's approver.")] = "fedready auto-rollback",
) -> None:
    """Roll a channel back when enough distinct devices report a breach of the version it serves (for cron or CI).

    Each device counts once however many alerts it raised. Prints one JSON object with the decision;
    exit code 0 whether or not it rolled back.
    """
    from fedready.registry import Registry

    with _errors():
        result = Registry(path).auto_rollback(channel=channel, alerts=alerts, min_devices=min_devices,
                                              min_share=min_share, fleet_size=fleet_size, approver=approver)  # fmt: skip
    _echo_json(result)
    if result["rolled_back"]:
        err.print(f"{channel}: {result['replaced']} -> {result['version']} ({result['devices']} device(s), "
                  f"{result['breaches']} breach(es))")  # fmt: skip
    elif result.get("breaches"):
        err.print(f"{channel}: {result['devices']} device(s) reported breaches, {result['needed']} needed; no rollback")


@registry_app.command("rollout")
def registry_rollout(
    path: RegistryPath,
    percent: Annotated[float, typer.Argument(help="Share of devices (0-100] that take the canary.")],
    approver: Annotated[str, typer.Option(help="Who approved the change (recorded).")],
    channel: Annotated[str, typer.Option(help="The channel whose rollout changes.")] = "canary",
) -> None:
    """Widen or narrow a canary's rollout, keeping its version (refused while the canary is paused)."""
    from fedready.registry import Registry

    with _errors():
        doc = Registry(path).set_rollout(channel=channel, rollout_percent=percent, approver=approver)
    err.print(f"{channel} {doc.version}: rollout {doc.rollout_percent:g}%")


@registry_app.command("refresh")
def registry_refresh(path: RegistryPath) -> None:
    """Re-sign the timestamp metadata (it expires after one day: run this daily)."""
    from fedready.registry import Registry

    with _errors():
        version = Registry(path).refresh()
    err.print(f"timestamp version {version}")


@registry_app.command("rotate-key")
def registry_rotate_key(
    path: RegistryPath,
    role: Annotated[str, typer.Argument(help="root | targets | snapshot | timestamp")],
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Replace one TUF role key; devices follow through the new signed root."""
    from fedready.registry import Registry

    with _errors():
        keyid = Registry(path).rotate_key(role, actor=actor)
    err.print(f"{role} key rotated, new key id {keyid}")


@registry_app.command("status")
def registry_status(
    path: RegistryPath,
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON on stdout.")] = False,
) -> None:
    """Channels, published versions, metadata expiry; flags models past their review date."""
    from fedready.registry import Registry

    with _errors():
        status = Registry(path).status()
    if json_out:
        _echo_json(status)
        return
    for name, ch in status["channels"].items():
        if ch is None:
            typer.echo(f"{name}: (nothing promoted)")
            continue
        flag = "  PAST REVIEW DATE" if ch["past_review"] else ""
        forced = f"  forced: {ch['reason']}" if ch["forced"] else ""
        forced += f"  PAUSED: {ch['paused_reason']}" if ch.get("paused") else ""
        typer.echo(f"{name}: {ch['version']} rollout {ch['rollout_percent']:g}% approved by {ch['approver']} "
                   f"review by {ch['review_by']}{flag}{forced}")  # fmt: skip
    devices = status.get("devices")
    if devices is not None:
        state = {"live": "live", "paused": "PAUSED", "behind-stable": "behind stable: a later stable change wins",
                 "none": "none"}[devices["canary_state"]]  # fmt: skip
        outside, inside = devices["stable_outside_cohort"], devices["stable_inside_cohort"]
        groups = [f"stable outside the cohort -> {outside}"] if outside else []
        if inside:
            groups.append(f"stable inside the {devices['cohort_percent']:g}% cohort -> {inside}")
        groups.append(f"canary devices -> {devices['canary_devices']}")
        typer.echo(f"devices: {'; '.join(groups)} (canary {state})")
    typer.echo(f"published: {', '.join(status['versions']) or 'none'}")
    for role, md in status["metadata"].items():
        typer.echo(f"{role}.json v{md['version']} expires {md['expires']}{'  EXPIRED' if md['expired'] else ''}")


@edge_app.command("update")
def edge_update(
    repo: Annotated[str, typer.Option(help="Base URL of the served repository/ folder.")],
    device_id: Annotated[str, typer.Option(help="This device's id (decides canary membership).")],
    home: Home,
    channel: Annotated[str, typer.Option(help="Channel to follow.")] = "stable",
    root: Annotated[Path | None, typer.Option(help="Trusted TUF root.json (first update only).")] = None,
    public_key: Annotated[Path | None, typer.Option(help="Operator signing public key (first update only).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the registry may stall between bytes.")] = 30.0,
) -> None:
    """Fetch, verify (TUF, then model signature) and atomically activate the channel's model."""
    from fedready.registry import EdgeAgent

    with _errors():
        res = EdgeAgent(home).update(repo=repo, channel=channel, device_id=device_id, root=root,
                                     public_key=public_key, timeout=timeout)  # fmt: skip
    if res.changed:
        err.print(f"updated {res.previous or '(none)'} -> {res.version} from {res.channel}")
    else:
        err.print(f"up to date: {res.version} ({res.channel})")


@edge_app.command("predict")
def edge_predict(
    home: Home,
    input: Annotated[
        Path | None, typer.Argument(help="CSV with a header row, or JSON lines; - or none: stdin.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto | csv | jsonl")] = "auto",
    record_inputs: Annotated[
        bool, typer.Option(help="Also keep the raw rows in HOME/monitoring/inputs.jsonl (summaries are always kept).")
    ] = False,
) -> None:
    """Predict with the active model: raw rows in, one JSON line per row out (summaries kept for `fedready monitor`)."""
    from fedready.monitoring import Recorder
    from fedready.registry import EdgeAgent, read_rows

    with _errors():
        rows = read_rows(_read_input(input), fmt=fmt)
        predictor = EdgeAgent(home).predictor()
        t0 = time.perf_counter()
        results = predictor.predict(rows)
        latency = time.perf_counter() - t0
        if rows:
            Recorder(home, record_inputs=record_inputs).record(predictor.schema, rows, results,
                                                               version=predictor.version, latency=latency)  # fmt: skip
    typer.echo("\n".join(json.dumps(r, sort_keys=True) for r in results))


def _read_input(input: Path | None) -> str:
    """The text of a CSV / JSON lines file, or of stdin for None or ``-``."""
    import sys

    if input is None or str(input) == "-":
        data = sys.stdin.buffer.read()
    elif not input.is_file():
        raise ConfigError("input", f"{input} does not exist")
    else:
        data = input.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError("input", f"{input or 'stdin'} is not UTF-8 text ({e.reason} at byte {e.start})") from None


@edge_app.command("status")
def edge_status(home: Home) -> None:
    """The device's active and previous model and where the active one came from."""
    from fedready.registry import EdgeAgent

    with _errors():
        _echo_json(EdgeAgent(home).status())


@edge_app.command("rollback")
def edge_rollback(home: Home) -> None:
    """Make the previous model active again, after checking its files and signature as an update would."""
    from fedready.registry import EdgeAgent

    with _errors():
        version = EdgeAgent(home).rollback()
    err.print(f"rolled back to {version}")


@edge_app.command("install")
def edge_install(
    artifact: Annotated[Path, typer.Argument(help="A signed artifact folder.")],
    home: Home,
    public_key: Annotated[Path | None, typer.Option(help="Operator signing public key (first use only).")] = None,
) -> None:
    """Verify a local artifact and make it active (offline provisioning, no registry)."""
    from fedready.registry import EdgeAgent

    with _errors():
        version = EdgeAgent(home).install(artifact, public_key=public_key)
    err.print(f"installed {version}")


@edge_app.command("serve")
def edge_serve(
    home: Home,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8080,
    max_batch: Annotated[int, typer.Option(help="Rows per model call; 1 turns micro-batching off.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits for others to join its batch.")] = 2.0,
    defer_low: Annotated[float | None, typer.Option(help="Uncertainty band low end: answer 'deferred'.")] = None,
    defer_high: Annotated[float | None, typer.Option(help="Uncertainty band high end.")] = None,
    review_queue: Annotated[
        Path | None, typer.Option(help="JSON lines of deferred rows. [default: HOME/review-queue.jsonl]")
    ] = None,
    record_inputs: Annotated[bool, typer.Option(help="Also keep raw rows in HOME/monitoring/inputs.jsonl.")] = False,
    monitor_window: Annotated[int, typer.Option(help="Newest rows behind the drift gauges of GET /metrics.")] = 1000,
    gate: Annotated[Path | None, typer.Option(help="Policy TOML whose [monitoring] table sets the thresholds.")] = None,
    max_request_rows: Annotated[int, typer.Option(help="Rows in one request; more is answered 413.")] = 1000,
    max_body_bytes: Annotated[int, typer.Option(help="Bytes of one request body; more is answered 413.")] = 1 << 20,
    max_header_bytes: Annotated[int, typer.Option(help="Bytes of request line and headers; more: 431.")] = 16 << 10,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds a request may take to arrive and an idle connection may stay open.")
    ] = 15.0,
    max_connections: Annotated[int, typer.Option(help="Open connections; the next one is answered 503.")] = 512,
) -> None:
    """Serve the active model over HTTP (POST /predict, GET /metrics) with dynamic micro-batching.

    Hardened for untrusted clients: per-request row and byte limits (413), header limit (431), idle timeout (408),
    connection cap (503), a JSON error naming the problem for every malformed request.
    """
    from fedready.registry import EdgeServer, ServeConfig

    with _errors():
        cfg = ServeConfig(host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, defer_low=defer_low,
                          defer_high=defer_high, review_queue=review_queue, record_inputs=record_inputs,
                          monitor_window=monitor_window, gate=gate, max_request_rows=max_request_rows,
                          max_body_bytes=max_body_bytes, max_header_bytes=max_header_bytes, idle_timeout=idle_timeout,
                          max_connections=max_connections)  # fmt: skip
        server = EdgeServer(home, cfg)
    server.serve_forever(on_ready=lambda url: err.print(f"serving {server.predictor.version} on {url}/predict"))


@app.command()
def reproduce(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder of a simulation-trained model.")],
    public_key: Annotated[Path | None, typer.Option(help="Verify the artifact with this key first.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the re-run in OUT/reproduce-VERSION (default: discarded).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Re-run an artifact's recorded configuration and check the model digest matches (exit 1 if not)."""
    from fedready.registry import reproduce_artifact

    with _errors():
        report = reproduce_artifact(artifact, public_key=public_key, out=out)
    if json_out:
        _echo_json(report)
    ok = report["match"] and report["config_matches"]
    verdict = "[green]matches[/]" if ok else "[red]MISMATCH[/]"
    if report["config_matches"]:
        err.print(f"{report['version']}: recorded {report['recorded_digest']}, reproduced "
                  f"{report['reproduced_digest']}: {verdict}")  # fmt: skip
    else:
        err.print(f"{report['version']}: {verdict}: the recorded config.json is not the one the model was trained "
                  "with (its digest differs from provenance.json); nothing was re-run")  # fmt: skip
    if not ok:
        raise typer.Exit(1)


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

    Writes RUN/compression/ (every variant's ONNX, compression.json, compression.md, size_vs_accuracy.png,
    selected.onnx and its thresholds.json). Exit code 0 when a variant is selected, 1 when none passes.
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
    if report["selected"] is None:
        err.print(f"[bold red]no variant selected:[/] {report['reason']}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    err.print(f"selected {report['selected']} -> {run / 'compression' / 'selected.onnx'}")


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


# --- deployment on Flower's real engine (fedready.deploy) -----------------------------------------------------------

audit_app = typer.Typer(no_args_is_help=True, help="Hash-chained audit logs (server and clients).")
app.add_typer(audit_app, name="audit")
contract_app = typer.Typer(no_args_is_help=True, help="Data contracts: check a local CSV before it trains.")
app.add_typer(contract_app, name="contract")


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder for ca.crt, server.crt/.key and node-<i>.key/.pub.")],
    host: Annotated[list[str], typer.Option(help="Host name or IP the SuperLink is reached at (repeat).")],
    nodes: Annotated[int, typer.Option(help="SuperNode key pairs to create.")] = 0,
) -> None:
    """Create a CA, the SuperLink's TLS certificate (SANs = --host) and SuperNode key pairs (private keys 0600)."""
    from fedready.deploy.certs import generate_certificates

    with _errors():
        made = generate_certificates(out, hosts=host, nodes=nodes)
    err.print(f"CA {made.ca_cert} (give to clients), SuperLink {made.server_cert}, {len(made.node_keys)} node key(s)")
    for priv, pub in made.node_keys:
        typer.echo(f"{priv} {pub}")


def verify_audit_log(log: Path, **anchors: Any) -> Any:
    """Check an audit log's chain, signatures and anchors (see :func:`fedready.registry.verify_anchored_log`).

    Returns the :class:`fedready.audit.AuditReport`.

    Raises
    ------
    IntegrityError
        Naming every finding (edited, removed, forged or re-signed lines, a log cut short or emptied).
    """
    from fedready.errors import IntegrityError
    from fedready.registry._registry import verify_anchored_log

    report = verify_anchored_log(log, **anchors)
    if not report.ok:
        for f in report.findings:
            err.print(f"FOUND {f.kind}" + (f" at line {f.line}" if f.line else "") + f": {escape(f.message)}",
                      highlight=False, soft_wrap=True)  # fmt: skip
        kinds = ", ".join(dict.fromkeys(f.kind for f in report.findings))
        raise IntegrityError(f"{log}: {len(report.findings)} finding(s) ({kinds}); the log was changed after it "
                             "was written")  # fmt: skip
    return report


@audit_app.command("verify")
def audit_verify(
    log: Annotated[Path, typer.Argument(help="An audit.jsonl file (a run's, a client's or a registry's).")],
    artifact: Annotated[
        Path | None, typer.Option(help="An artifact of this run: its provenance anchors the run's log.")
    ] = None,
    public_key: Annotated[Path | None, typer.Option(help="Operator public key that signed --artifact.")] = None,
    metadata: Annotated[
        Path | None, typer.Option(help="Another copy of the registry's TUF metadata (e.g. a device's HOME/tuf).")
    ] = None,
    audit_key: Annotated[
        str | None, typer.Option(help="The log's Ed25519 public key (base64), if kept elsewhere.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check an audit log: hash chain, the signature of every entry, and the heads anchored in signed documents.

    A registry's log is checked against its TUF metadata automatically. Exit 1 naming each finding.
    """
    with _errors():
        report = verify_audit_log(log, key=audit_key, metadata=metadata, artifact=artifact, public_key=public_key)
    if json_out:
        _echo_json(report.to_dict())
    anchored = ", ".join(f"{a.lines} line(s) in {a.source}" for a in report.anchors) or "none"
    err.print(f"{log}: {report.lines} entries, chain and signatures intact (key {report.key_source}); "
              f"anchored: {anchored}", highlight=False, soft_wrap=True)  # fmt: skip
    for note in report.notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


@contract_app.command("check")
def contract_check(
    data: Annotated[Path, typer.Option(help="The local CSV (with a header row).")],
    schema: Annotated[Path, typer.Option(help="The schema TOML with its [contract].")],
) -> None:
    """Check a CSV against its schema's data contract; print the readable report (exit 1 on a violation)."""
    from fedready.data import read_csv
    from fedready.deploy.contract import validate_contract
    from fedready.errors import IntegrityError
    from fedready.schema import load_schema

    with _errors():
        sch = load_schema(schema)
        report = validate_contract(read_csv(data, sch), sch)
        for line in report.lines():
            typer.echo(line)
        if not report.ok:
            raise IntegrityError(f"{data} violates the contract of {schema} ({len(report.violations)} violation(s))")


def _run_foreground(cmd: list[str]) -> None:
    import subprocess

    from fedready.deploy.launch import describe, flower_env

    err.print(f"starting: {describe(cmd)}", highlight=False, soft_wrap=True)
    raise typer.Exit(subprocess.call(cmd, env=flower_env()))


@app.command()
def server(
    certs: Annotated[Path, typer.Option(help="Folder from fedready certs (ca.crt, server.crt, server.key).")],
    database: Annotated[Path, typer.Option(help="SuperLink state file (nodes, runs); survives restarts.")] = Path(
        "superlink.db"
    ),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port of the SuperLink (SuperNodes and flwr connect here).")] = 9093,
) -> None:
    """Start a SuperLink with TLS, SuperNode authentication and a database (foreground)."""
    from fedready.deploy.launch import superlink_command

    with _errors():
        cmd = superlink_command(certs=certs, database=database, host=host, port=port)
    _run_foreground(cmd)


@app.command()
def client(
    superlink: Annotated[str, typer.Option(help="HOST:PORT of the coordinator's SuperLink.")],
    data: Annotated[Path, typer.Option(help="This organisation's CSV (never leaves this machine).")],
    schema: Annotated[Path, typer.Option(help="Schema TOML with the data contract.")],
    limits: Annotated[Path, typer.Option(help="Local privacy limits TOML (max_epsilon, max_delta, ledger, ...).")],
    key: Annotated[Path, typer.Option(help="This SuperNode's private key (node-<i>.key).")],
    root_cert: Annotated[Path, typer.Option(help="The federation CA certificate (ca.crt).")],
    client_id: Annotated[int, typer.Option(help="This client's number in the federation.")] = 0,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's own API.")] = 9094,
) -> None:
    """Check the local data against its contract, then start a SuperNode for it (foreground)."""
    from fedready.data import read_csv
    from fedready.deploy.contract import validate_contract
    from fedready.deploy.launch import supernode_command
    from fedready.deploy.limits import load_limits
    from fedready.schema import load_schema

    with _errors():
        sch = load_schema(schema)
        load_limits(limits)
        report = validate_contract(read_csv(data, sch), sch)
        cmd = supernode_command(superlink=superlink, root_cert=root_cert, key=key, data=data, schema=schema,
                                limits=limits, client_id=client_id, port=port)  # fmt: skip
    for line in report.lines():
        err.print(f"data contract: {line}", highlight=False)
    if not report.ok:
        err.print("the client joins but declines every round (reason contract-violation) until the data is fixed")
    _run_foreground(cmd)


BREACH_EXIT = 3  # `fedready monitor` found a breach: distinct from errors (1, 2) so cron and CI can act on it


@app.command()
def monitor(
    home: Home,
    window: Annotated[int | None, typer.Option(help="Newest rows to compare. [default: all recorded rows]")] = None,
    gate: Annotated[Path | None, typer.Option(help="Policy TOML whose [monitoring] table sets the thresholds.")] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Rows with their outcome (the target column): adds calibration drift.")
    ] = None,
    alerts: Annotated[
        Path | None, typer.Option(help="Alert JSON lines. [default: HOME/monitoring/alerts.jsonl]")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the drift report as JSON on stdout.")] = False,
) -> None:
    """Compare the device's recent predictions with the model's reference profile; append alerts on a breach.

    Exit code 3 when a threshold is breached (alerts written), 0 otherwise.
    """
    from fedready.monitoring import load_monitoring_policy
    from fedready.monitoring import monitor as run_monitor

    with _errors():
        if window is not None and window < 1:
            raise ConfigError("window", f"must be >= 1 row, got {window}")
        policy = load_monitoring_policy(gate)
        labelled = _labelled_rows(home, labels) if labels is not None else None
        report = run_monitor(home, window=window, policy=policy, labelled=labelled, alerts=alerts)
    if json_out:
        _echo_json(report)
    else:
        worst = max(report["features"].items(), key=lambda kv: kv[1]["psi"])
        typer.echo(f"{report['version']} ({report['channel']}): {report['rows']:g} rows; highest PSI {worst[0]} "
                   f"{worst[1]['psi']:.3f}; prediction PSI {report['prediction']['psi']:.3f}")  # fmt: skip
        for b in report["breaches"]:
            typer.echo(f"BREACH {b['kind']} {b['feature'] or ''} {b['metric']} {b['value']:.4f} > {b['threshold']}")
        if not report["enough_rows"]:
            typer.echo(f"window below min_rows ({policy.min_rows}): reported, not alerted")
    if report["breaches"]:
        err.print(f"{len(report['breaches'])} breach(es) appended to {report['alerts_file']}")
        raise typer.Exit(BREACH_EXIT)


def _labelled_rows(home: Path, path: Path) -> tuple[list[dict[str, Any]], Any]:
    """Rows of ``path`` with their 0/1 label from the schema's target column."""
    import numpy as np

    from fedready.registry import EdgeAgent, read_rows

    schema = EdgeAgent(home).predictor().schema
    rows = read_rows(_read_input(path))
    target = schema.target
    pos, neg = set(target.positive), set(target.negative)
    y = []
    for n, r in enumerate(rows, start=1):
        v = str(r.get(target.column, "")).strip().rstrip(".")
        if v not in pos and v not in neg:
            raise ConfigError("labels", f"row {n}: '{target.column}' is {v!r}; expected one of {sorted(pos | neg)}")
        y.append(int(v in pos))
    return rows, np.array(y, dtype=np.int64)


@app.command()
def shadow(
    active: Annotated[Path, typer.Option(help="The active model's artifact folder.")],
    candidate: Annotated[Path, typer.Option(help="The candidate's artifact folder.")],
    data: Annotated[Path, typer.Option(help="Rows to score (CSV with a header, or JSON lines), e.g. recorded inputs.")],
    public_key: Annotated[Path | None, typer.Option(help="Verify both artifacts with this key first.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report (JSON) here, for `registry promote`.")] = None,
) -> None:
    """Run a candidate beside the active model on the same rows: agreement overall and per group, score deltas."""
    from fedready.monitoring import shadow_compare
    from fedready.registry import read_rows, verify_artifact
    from fedready.registry._canonical import write_json

    with _errors():
        for name, folder in (("active", active), ("candidate", candidate)):
            if not folder.is_dir():
                raise ConfigError(name, f"{folder} is not an artifact folder")
            if public_key is not None:
                verify_artifact(folder, public_key=public_key)
        rows = read_rows(_read_input(data))
        if rows and "row" in rows[0] and isinstance(rows[0]["row"], dict):
            rows = [r["row"] for r in rows]  # HOME/monitoring/inputs.jsonl written by --record-inputs
        report = shadow_compare(active, candidate, rows)
        if out is not None:
            write_json(out, report)
    _echo_json(report)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
