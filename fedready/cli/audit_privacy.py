"""``fedready audit-privacy``: an empirical epsilon lower bound, measured with canaries in a second run."""

from __future__ import annotations

import inspect
import json
from copy import copy
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.markup import escape
from rich.table import Table

from fedready.cli import simulate as _simulate
from fedready.cli._common import _errors, app, err

__all__ = ["audit_privacy", "print_audit"]

# `fedready simulate`'s options, offered as they are (a few are spelled differently from the config fields)
_NOT_COPIED = {"out", "name", "resume", "json_out", "wire_log", "ray_address"}
_RENAMED = {"clients": "num_clients", "validate": "validate_updates"}
_PANEL = "Simulation options (without --run; as for fedready simulate)"


def _simulate_parameters() -> list[inspect.Parameter]:
    params = []
    for p in inspect.signature(_simulate.simulate, eval_str=True).parameters.values():
        if p.name in _NOT_COPIED:
            continue
        kind, info = get_args(p.annotation)
        info = copy(info)
        info.rich_help_panel = info.rich_help_panel or _PANEL
        params.append(p.replace(annotation=Annotated[kind, info]))
    return params


def audit_privacy(
    run: Annotated[
        Path | None,
        typer.Option(help="Audit this run's configuration (its config.json); audit_privacy.json is written into it."),
    ] = None,
    level: Annotated[
        str,
        typer.Option(
            help="client (canary clients in the aggregation) | sample (gradient canaries in the clients' "
            "DP-SGD steps) | both (one run, both kinds of canaries) | scale (canary rows in simulated clients, "
            "membership guessed from the updates' norms; about 0.5 s per canary)."
        ),  # fmt: skip
    ] = "client",
    canaries: Annotated[
        int,
        typer.Option(
            help="Canaries per level, each inserted with probability 1/2 (1000: the bound cannot exceed ~4.4)."
        ),
    ] = 1000,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    out: Annotated[
        Path | None, typer.Option(help="Parent folder of the audit's own run. [default: beside --run, or runs]")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The audit run's folder name.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Existing Ray cluster address (ray start --head).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the audit as JSON on stdout.")] = False,
    **options: Any,
) -> None:
    """Re-run a configuration with canaries; print an empirical epsilon lower bound beside the accounted one.

    A lower bound, not a guarantee; one above the accounted epsilon is a bug (exit 1). Canaries only ever enter
    a local simulation, never a deployment's clients.
    """
    import fedready

    given = {_RENAMED.get(k, k): v for k, v in options.items() if v is not None}
    task = {k: given.pop(k) for k in ("data", "schema", "test", "test_fraction", "model") if k in given}

    def on_note(note: str) -> None:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)

    status = err.status("", spinner="dots")
    what = "both levels" if level == "both" else f"{level} level"
    rounds: dict[str, int] = {}

    def on_start(cfg: Any) -> None:
        rounds["total"] = cfg.rounds
        if not json_out:
            status.update(f"audit ({what}, {canaries} canaries): a simulation of {cfg.rounds} rounds, "
                          f"{cfg.num_clients} clients; starting clients ...")  # fmt: skip
            status.start()

    def on_round(r: Any) -> None:
        status.update(f"audit ({what}, {canaries} canaries): round {r.round}/{rounds['total']}")

    try:
        with _errors():
            result = fedready.audit_privacy(run, level=level, canaries=canaries, confidence=confidence, out=out,
                                            name=name, ray_address=ray_address, on_note=on_note, on_start=on_start,
                                            on_round=on_round, **task, **given)  # fmt: skip
    finally:
        status.stop()
    results = result if isinstance(result, dict) else {result.level: result}
    if json_out:  # one level: its report; both: the reports by level
        doc = {lv: r.report for lv, r in results.items()} if isinstance(result, dict) else result.report
        typer.echo(json.dumps(doc, sort_keys=True))
    else:
        for r in results.values():
            print_audit(r.report)
    exceeded = [r for r in results.values() if r.exceeded]
    for r in exceeded:
        err.print(f"[bold red]error:[/] the {r.level}-level empirical lower bound {r.epsilon_lower_bound:.3f} exceeds "
                  f"the accounted epsilon {r.accounted_epsilon:.3f}: the implementation leaks more than its ledger "
                  f"charges (a bug); see {escape(str(r.written_to))}/audit_privacy.json", highlight=False,
                  soft_wrap=True)  # fmt: skip
    if exceeded:
        raise typer.Exit(1)


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(float(v), fmt)


def print_audit(report: dict[str, Any]) -> None:
    """The audit as a table on stderr (what ``fedready audit-privacy`` prints)."""
    b, acc, cost = report["bound"], report["accounted"], report["cost"]
    t = Table(title=f"empirical privacy audit ({report['level']} level, one run)", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("empirical epsilon lower bound", f"{report['epsilon_lower_bound']:.3f} at delta {report['delta']:g}, "
                                               f"{report['confidence']:.0%} confidence")  # fmt: skip
    t.add_row("accounted epsilon", f"{_num(acc['epsilon'])} ({acc['what']})")
    if acc.get("claimed") is not None and acc["claimed"] != acc["epsilon"]:
        t.add_row("claimed epsilon (headline)", _num(acc["claimed"]))
    t.add_row("canaries", f"{report['canaries']} ({report['inserted']} inserted): {report['canary']}")
    t.add_row("guesses", f"{b['guesses']} 'in' (top scores), {b['correct']} right; {b['hypotheses']} guess counts "
                         "tried (union bound)")  # fmt: skip
    t.add_row("Gaussian-fit estimate", f"{_num(report['estimate']['epsilon'])} (information only, not a bound: "
                                       f"{report['estimate']['method']})")  # fmt: skip
    plain = cost.get("plain_run_seconds")
    shared = " (shared by both levels)" if len(cost.get("levels_in_the_run", [])) > 1 else ""
    second = (f"a second run{shared}: {cost['audit_run_seconds']:.0f} s of rounds"
              + (f" (the audited run's: {plain:.0f} s)" if plain else "")
              + f", {cost['audit_seconds']:.0f} s in all")  # fmt: skip
    t.add_row("cost", f"{cost['extra']}; {second}")
    for caveat in report.get("caveats", []):
        t.add_row("caveat", caveat)
    for note in report.get("notes", []):
        t.add_row("note", note)
    err.print(t)
    err.print("A lower bound: the model leaks at least this much (with the stated confidence); it proves no "
              "guarantee, and one far below the accounted epsilon is expected.", highlight=False)  # fmt: skip


# The command takes `fedready simulate`'s options too: one signature, built from both.
_own = list(inspect.signature(audit_privacy, eval_str=True).parameters.values())[:-1]
audit_privacy.__signature__ = inspect.Signature([*_own, *_simulate_parameters()])  # type: ignore[attr-defined]
audit_privacy.__annotations__ = {p.name: p.annotation for p in audit_privacy.__signature__.parameters.values()}  # type: ignore[attr-defined]
app.command("audit-privacy")(audit_privacy)
