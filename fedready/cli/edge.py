"""``fedready edge ...``: the agent that updates, predicts, serves and rolls back on a device."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from fedready.cli._common import Home, _echo_json, _errors, _read_input, app, err

MaxBytes = Annotated[int, typer.Option(help="Monitoring files (summaries, inputs, review queue) rotate at this size.")]
KeepFiles = Annotated[int, typer.Option(help="Rotated monitoring files kept per kind (NAME.1 ... NAME.N).")]
MaxValue = Annotated[int, typer.Option(help="Recorded text values are cut to this many characters.")]

edge_app = typer.Typer(no_args_is_help=True, help="The edge agent: update, predict, serve, roll back on a device.")
app.add_typer(edge_app, name="edge")


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
    monitor_max_bytes: MaxBytes = 16 << 20,
    monitor_keep_files: KeepFiles = 3,
    record_max_value_chars: MaxValue = 1024,
) -> None:
    """Predict with the active model: raw rows in, one JSON line per row out (summaries kept for `fedready monitor`)."""
    from fedready.monitoring import Recorder, StorageLimits
    from fedready.registry import EdgeAgent, read_rows

    with _errors():
        limits = StorageLimits(max_file_bytes=monitor_max_bytes, keep_files=monitor_keep_files,
                               max_value_chars=record_max_value_chars)  # fmt: skip
        rows = read_rows(_read_input(input), fmt=fmt)
        predictor = EdgeAgent(home).predictor()
        t0 = time.perf_counter()
        results = predictor.predict(rows)
        latency = time.perf_counter() - t0
        if rows:
            Recorder(home, record_inputs=record_inputs, limits=limits).record(
                predictor.schema, rows, results, version=predictor.version, latency=latency
            )
    typer.echo("\n".join(json.dumps(r, sort_keys=True) for r in results))


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


@edge_app.command("enrol")
def edge_enrol(
    home: Home,
    device_id: Annotated[str | None, typer.Option(help="This device's id. [default: the id it updates with]")] = None,
) -> None:
    """Print this device's enrolment (id and alert-signing public key) for `fedready registry enrol`.

    Creates HOME/device.key (Ed25519, mode 0600) on first use; it signs the alerts `fedready monitor` writes.
    """
    from fedready.registry import EdgeAgent

    with _errors():
        _echo_json(EdgeAgent(home).enrolment(device_id))


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
        float, typer.Option(help="Seconds a keep-alive connection may wait for its next request.")
    ] = 15.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a whole request may take once its first byte arrived (slowloris).")
    ] = 10.0,
    max_connections: Annotated[
        int, typer.Option(help="Open connections in all; the last eighth is kept for new clients.")
    ] = 512,
    max_connections_per_peer: Annotated[int, typer.Option(help="Open connections from one address.")] = 128,
    metrics_interval: Annotated[
        float, typer.Option(help="GET /metrics recomputes drift at most this often (seconds).")
    ] = 5.0,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="A Host name clients use besides IPs and localhost (repeat).")
    ] = None,
    monitor_max_bytes: MaxBytes = 16 << 20,
    monitor_keep_files: KeepFiles = 3,
    record_max_value_chars: MaxValue = 1024,
) -> None:
    """Serve the active model over HTTP (POST /predict, GET /health, GET /metrics) with dynamic micro-batching.

    Hardened for a hostile network: per-address and total connection caps with slots kept for new clients (503),
    idle and header timeouts (408), row, byte and header limits (413, 431), JSON only (415), no web pages (a
    foreign Host 421, any Origin 403), a JSON error naming the problem for every malformed request.
    """
    from fedready.monitoring import StorageLimits
    from fedready.registry import EdgeServer, ServeConfig

    with _errors():
        limits = StorageLimits(max_file_bytes=monitor_max_bytes, keep_files=monitor_keep_files,
                               max_value_chars=record_max_value_chars)  # fmt: skip
        cfg = ServeConfig(host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, defer_low=defer_low,
                          defer_high=defer_high, review_queue=review_queue, record_inputs=record_inputs,
                          monitor_window=monitor_window, gate=gate, max_request_rows=max_request_rows,
                          max_body_bytes=max_body_bytes, max_header_bytes=max_header_bytes, idle_timeout=idle_timeout,
                          header_timeout=header_timeout, max_connections=max_connections,
                          max_connections_per_peer=max_connections_per_peer, metrics_interval=metrics_interval,
                          allow_hosts=tuple(allow_host or ()), limits=limits)  # fmt: skip
        server = EdgeServer(home, cfg)
        server.serve_forever(on_ready=lambda url: err.print(f"serving {server.predictor.version} on {url}/predict"))
