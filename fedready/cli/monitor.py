"""``fedready monitor`` and ``fedready shadow``: drift on a device, a candidate beside the active model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedready.cli._common import Home, _echo_json, _errors, _read_input, app, err
from fedready.errors import ConfigError

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
    from fedready.registry import monitor as run_monitor

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
        spread = worst[1].get("psi_interval")
        noise = f" [{spread[0]:.3f}, {spread[1]:.3f} over the reference's DP noise]" if spread else ""
        typer.echo(f"{report['version']} ({report['channel']}): {report['rows']:g} rows; highest PSI {worst[0]} "
                   f"{worst[1]['psi']:.3f}{noise}; prediction PSI {report['prediction']['psi']:.3f}")  # fmt: skip
        for b in report["breaches"]:
            typer.echo(f"BREACH {b['kind']} {b['feature'] or ''} {b['metric']} {b['value']:.4f} > {b['threshold']}")
        for u in report.get("undecided", []):
            typer.echo(f"undecided {u['kind']} {u['feature'] or ''} {u['metric']} {u['value']:.4f} > {u['threshold']}, "
                       f"but the reference's DP noise alone gives [{u['interval'][0]:.4f}, {u['interval'][1]:.4f}]: "
                       "not alerted")  # fmt: skip
        if not report["enough_rows"]:
            typer.echo(f"window below min_rows ({policy.min_rows}): reported, not alerted")
    if report["breaches"]:
        err.print(f"{len(report['breaches'])} breach(es) appended to {report['alerts_file']}")
        raise typer.Exit(BREACH_EXIT)


def _labelled_rows(home: Path, path: Path) -> tuple[list[dict[str, Any]], Any]:
    """Rows of ``path`` with their label (class index) from the schema's target column."""
    import numpy as np

    from fedready.registry import EdgeAgent, read_rows

    schema = EdgeAgent(home).predictor().schema
    rows = read_rows(_read_input(path))
    target = schema.target
    y = target.encode(np.array([str(r.get(target.column, "")) for r in rows]))
    if (y < 0).any():
        n = int(np.argmax(y < 0))
        v = str(rows[n].get(target.column, "")).strip()
        raise ConfigError("labels", f"row {n + 1}: '{target.column}' is {v!r}; expected one of "
                                    f"{target.declared_values()}")  # fmt: skip
    return rows, y


@app.command()
def shadow(
    active: Annotated[Path, typer.Option(help="The active model's artifact folder.")],
    candidate: Annotated[Path, typer.Option(help="The candidate's artifact folder.")],
    data: Annotated[Path, typer.Option(help="Rows to score (CSV with a header, or JSON lines), e.g. recorded inputs.")],
    public_key: Annotated[Path | None, typer.Option(help="Verify both artifacts with this key first.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the report (JSON) here, for `registry promote`.")] = None,
) -> None:
    """Run a candidate beside the active model on the same rows: agreement overall and per group, score deltas."""
    from fedready.registry import read_rows, shadow_compare, verify_artifact, write_json

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
