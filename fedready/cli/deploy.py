"""Deployment on Flower's real engine: ``certs``, ``server``, ``client``, ``contract check``, ``audit verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fedready.cli._common import _echo_json, _errors, app, err

audit_app = typer.Typer(no_args_is_help=True, help="Signed, hash-chained audit logs (runs, clients, registries).")
app.add_typer(audit_app, name="audit")
contract_app = typer.Typer(no_args_is_help=True, help="Data contracts: check a local CSV before it trains.")
app.add_typer(contract_app, name="contract")


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder for ca.crt, server.crt/.key and node-<i>.key/.pub.")],
    host: Annotated[list[str], typer.Option(help="Host name or IP the SuperLink is reached at (repeat).")],
    nodes: Annotated[int, typer.Option(help="SuperNode key pairs to create.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace a CA, server or node key already in OUT.")] = False,
) -> None:
    """Create a CA, the SuperLink's TLS certificate (SANs = --host) and SuperNode key pairs (private keys 0600).

    Refuses to replace keys already in OUT unless --force is given.
    """
    from fedready.deploy.certs import generate_certificates

    with _errors():
        made = generate_certificates(out, hosts=host, nodes=nodes, force=force)
    for note in made.notes:
        err.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
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
    from fedready.registry import verify_anchored_log

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
    anchor: Annotated[
        list[Path] | None,
        typer.Option(help="A checkpoint kept outside the registry (`fedready audit checkpoint`); repeat."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Check an audit log: hash chain, the signature of every entry, and the heads anchored in signed documents.

    A registry's log is checked against its TUF metadata automatically (root chain from 1.root.json, expiry,
    versions), and against every --anchor checkpoint: it must still hold the head the checkpoint saw, under the
    same root, with metadata no older. Exit 1 naming each finding.
    """
    with _errors():
        report = verify_audit_log(log, key=audit_key, metadata=metadata, artifact=artifact, public_key=public_key,
                                  checkpoints=tuple(anchor or ()))  # fmt: skip
    if json_out:
        _echo_json(report.to_dict())
    anchored = ", ".join(f"{a.lines} line(s) in {a.source}" for a in report.anchors) or "none"
    err.print(f"{log}: {report.lines} entries, chain and signatures intact (key {report.key_source}); "
              f"anchored: {anchored}", highlight=False, soft_wrap=True)  # fmt: skip
    for note in report.notes:
        err.print(f"note: {note}", highlight=False, soft_wrap=True)


@audit_app.command("checkpoint")
def audit_checkpoint(
    source: Annotated[Path, typer.Argument(help="A registry folder, or a device folder (--home) that has updated.")],
    out: Annotated[Path, typer.Option(help="Where to keep it: outside the registry folder (another machine).")],
) -> None:
    """Save a signed checkpoint of a registry's audit-log head (its root and timestamp metadata as seen now).

    Keep checkpoints where the registry's writers cannot reach them; `fedready audit verify REGISTRY/audit.jsonl
    --anchor FILE` then shows a log cut back with older metadata put back, or a registry re-created under new keys.
    """
    from fedready.registry import write_checkpoint

    with _errors():
        made = write_checkpoint(source, out)
    _echo_json(made)
    err.print(f"checkpoint {out}: {made['lines']} audit entries, timestamp version {made['timestamp_version']}, "
              f"root version {made['root_version']}", highlight=False, soft_wrap=True)  # fmt: skip


@contract_app.command("check")
def contract_check(
    data: Annotated[Path, typer.Option(help="The local CSV (with a header row).")],
    schema: Annotated[Path, typer.Option(help="The schema TOML with its [contract].")],
) -> None:
    """Check a CSV against its schema's data contract; print the readable report (exit 1 on a violation)."""
    from fedready.contract import validate_contract
    from fedready.data import read_csv
    from fedready.errors import IntegrityError
    from fedready.schema import load_schema

    with _errors():
        sch = load_schema(schema)
        report = validate_contract(read_csv(data, sch), sch)
        for line in report.lines():
            typer.echo(line)
        if not report.ok:
            raise IntegrityError(f"{data} violates the contract of {schema} ({len(report.violations)} violation(s))")


def _run_foreground(cmd: list[str], env: dict[str, str] | None = None) -> None:
    import subprocess

    from fedready.deploy.launch import describe, flower_env

    err.print(f"starting: {describe(cmd)}", highlight=False, soft_wrap=True)
    raise typer.Exit(subprocess.call(cmd, env=env or flower_env()))


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
    wire_log: Annotated[
        Path | None, typer.Option(help="Append the keys of every message this client sends to this file.")
    ] = None,
) -> None:
    """Check the local data against its contract, then start a SuperNode for it (foreground).

    Every ClientApp runs behind the bundle guard: only the installed fedready's code runs.
    """
    from fedready.client.limits import load_limits
    from fedready.contract import validate_contract
    from fedready.data import read_csv
    from fedready.deploy.launch import client_environment, supernode_command
    from fedready.schema import load_schema

    with _errors():
        sch = load_schema(schema)
        load_limits(limits)
        report = validate_contract(read_csv(data, sch), sch)
        cmd = supernode_command(superlink=superlink, root_cert=root_cert, key=key, data=data, schema=schema,
                                limits=limits, client_id=client_id, port=port, wire_log=wire_log)  # fmt: skip
        env = client_environment(limits)
    for line in report.lines():
        err.print(f"data contract: {line}", highlight=False)
    if not report.ok:
        err.print("the client joins but declines every round (reason contract-violation) until the data is fixed")
    _run_foreground(cmd, env)
