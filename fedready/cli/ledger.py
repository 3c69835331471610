"""``fedready ledger``: show a run's privacy ledger and recompute it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedready.cli._common import _fail, app, err
from fedready.constants import LEDGER_FILE
from fedready.errors import ConfigError, FedreadyError


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
        for col in ("client", "rounds", "noise", "sample rate", "steps", "other releases", "epsilon", "recomputed"):
            table.add_column(col, justify="right")
        for c in report["clients"]:
            other = ", ".join(f"{k} {v}" for k, v in c["other_releases"].items()) or "-"
            table.add_row(c["client"], str(c["rounds"]), f"{c['noise_multiplier']:.3f}", f"{c['sample_rate']:.4f}",
                          str(c["steps"]), other, f"{c['epsilon']:.4f}", f"{c['recomputed']:.4f}")  # fmt: skip
        Console().print(table)
        verdict = "[green]matches[/]" if report["ok"] else "[red]DIFFERS[/]"
        err.print(f"run epsilon {report['epsilon']:.4f} (every release about a client's rows, composed; delta "
                  f"{report['delta']:g}, {report['accountant']}); recomputed with Opacus: {verdict}")  # fmt: skip
        cross = report["dp_accounting"]
        if cross is not None:
            pld = "-" if cross["pld"] is None else f"{cross['pld']:.4f}"
            err.print(f"cross-check with Google's dp-accounting (client {cross['client']}, the worst): RDP "
                      f"{cross['rdp']:.4f}, PLD {pld} (tighter)")  # fmt: skip
        for caveat in report["caveats"]:
            err.print(f"[bold red]{caveat}[/]")
    if not report["ok"]:
        raise typer.Exit(1)


def check_ledger(run: Path, *, rel_tol: float = 0.01) -> dict[str, Any]:
    """Recompute a ledger with Opacus alone; ``ok`` is False if any entry differs by more than ``rel_tol``."""
    from fedready.privacy.ledger import Ledger, recompute

    path = run / LEDGER_FILE if run.is_dir() else run
    if not path.exists():
        raise ConfigError("run", f"{path} does not exist; pass a run folder written by fedready simulate")
    try:
        led = Ledger.load(path)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("run", f"{path} is not a readable fedready ledger ({e})") from e
    again = recompute(led)
    clients, ok = [], True
    for client in sorted(again, key=lambda c: (len(c), c)):
        mine = [e for e in led.entries if e.client == client]  # in the order charged, as recompute() reads them
        for e, (_, eps) in zip(mine, again[client], strict=True):
            ok &= abs(eps - e.epsilon) <= rel_tol * max(e.epsilon, 1e-12)
        main = [e for e in mine if e.level in ("sample", "client")] or mine
        other: dict[str, int] = {}
        for e in mine:
            if e.level not in ("sample", "client"):
                other[e.level] = other.get(e.level, 0) + 1
        clients.append({"client": client, "rounds": len(main), "noise_multiplier": main[-1].noise_multiplier,
                        "sample_rate": main[-1].sample_rate, "steps": sum(e.steps for e in main),
                        "other_releases": other, "epsilon": mine[-1].epsilon,
                        "recomputed": again[client][-1][1]})  # fmt: skip
    return {"path": str(path), "epsilon": led.epsilon, "delta": led.delta, "accountant": led.accountant,
            "declines": len(led.declines), "clients": clients, "caveats": led.caveats(), "ok": ok,
            "dp_accounting": _cross_check(led)}  # fmt: skip


def _cross_check(led: Any) -> dict[str, Any] | None:
    """The worst client's releases through Google's dp-accounting (independent code): RDP and PLD epsilon."""
    from fedready.privacy.accounting import dp_accounting_epsilon

    eps = led.client_epsilon()
    if not led.dp or not eps:
        return None
    worst = max(eps, key=lambda c: eps[c])
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in led.entries if e.client == worst]
    return {"client": worst, **dp_accounting_epsilon(history, delta=led.delta)}
