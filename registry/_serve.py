"""``fedready edge serve``: HTTP predictions with dynamic micro-batching, hardened for a hostile network.

A small asyncio HTTP/1.1 server (keep-alive, JSON bodies). The event loop only moves bytes:
parsing and validating a body runs on one worker thread, the model on another. Each request's
rows are checked before they join a batch, so a bad row refuses its own request (422) and
nothing else. A batcher collects rows from the waiting requests until ``max_batch`` rows are
waiting or ``max_wait_ms`` has passed, giving every waiting request an equal share of the batch
first (a request larger than its share continues in the next batch), and runs the encoder and
ONNX Runtime once for all of them.

Routes: ``POST /predict`` with one row (a JSON object; answered with one result) or a list of
rows (answered with ``{"results": [...]}``), ``GET /health`` (200 while a model is loaded, 503
otherwise), and ``GET /metrics`` (Prometheus: prediction count, latency histogram, drift scores
of the newest ``monitor_window`` rows against the active model's reference profile, from a
snapshot recomputed at most once per ``metrics_interval``). Every batch is summarised into the
device's monitoring folder (:class:`fedready.monitoring.Recorder`): histograms only, raw rows
only with ``record_inputs``, every file rotated at a size limit.

A prediction whose probability falls inside the uncertainty band ``[defer_low, defer_high]``
is answered ``"decision": "deferred"`` and the row is appended to the review queue (JSON lines)
for a person to decide, instead of the model deciding it.

Notes
-----
Limits against hostile clients, each answered with a JSON error naming it (never a device path):

* connections: at most ``max_connections_per_peer`` open from one address, at most
  ``max_connections`` in all; once all but the last eighth are taken, an address that already holds
  a quarter of its share is refused, so the rest is kept for new peers; when every slot is taken a
  new peer takes the oldest idle connection of the address holding the most (503 when none can
  be freed);
* time: ``idle_timeout`` between requests on a keep-alive connection, ``header_timeout`` for a
  whole request once its first byte arrived (slowloris; 408 and closed);
* size: a body over ``max_body_bytes`` or more than ``max_request_rows`` rows (413), a header
  block over ``max_header_bytes`` (431);
* browsers: a ``Host`` that is a name other than ``localhost``, the ``--host`` it listens on or an
  ``--allow-host`` is refused (421: DNS rebinding), so is any request carrying ``Origin`` (403: a
  web page), and ``/predict`` takes ``application/json`` only (415: ``text/plain`` and form types
  are what a page can send without a CORS preflight);
* every malformed request (400: bad request line, Content-Length, JSON, UTF-8, integers beyond
  Python's digit limit, nesting beyond its recursion limit; 411 for chunked bodies; 404/405 for
  other routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, FedreadyError, IntegrityError
from fedready.monitoring import PROFILE_FILE, Metrics, Recorder, StorageLimits, load_monitoring_policy
from fedready.monitoring.edge import append_bounded, recorded_row
from fedready.registry._canonical import read_json
from fedready.registry._edge import EdgeAgent
from fedready.registry._predict import Predictor, parse_json

__all__ = ["EdgeServer", "ServeConfig"]

_log = logging.getLogger(__name__)
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 415: "Unsupported Media Type",
            421: "Misdirected Request", 422: "Unprocessable Content", 429: "Too Many Requests",
            431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_INLINE_BODY = 4096  # smaller bodies are parsed on the event loop (a thread hop costs more than the parse)
_ACTIVE_S = 0.05  # a client that sent a request this recently still takes part in the fair share
_RELOAD_RETRY_S = 1.0  # a model that failed to load is tried again at most this often
_DIGITS = frozenset("0123456789")  # str.isdigit() also accepts '²' and other digits int() refuses
_CUT_OFF_S = 2.0  # an address over its error budget has its connections reset for this long
_TARPIT_MAX = 4096  # connections of cut-off addresses held unanswered until their cut-off ends (then reset)
_METRICS_PER_PEER = 10  # GET /metrics answered per second to one address (a scraper needs one per interval)


@dataclass(frozen=True)
class ServeConfig:
    """Serving options (validated on construction)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 64  # rows per model call; 1 disables micro-batching
    max_wait_ms: float = 2.0  # longest a request waits for others to join its batch
    defer_low: float | None = None  # uncertainty band: probabilities in [low, high] are deferred
    defer_high: float | None = None
    review_queue: Path | None = None  # JSON lines of deferred rows (default: HOME/review-queue.jsonl)
    record_inputs: bool = False  # also keep raw rows (HOME/monitoring/inputs.jsonl); summaries are always kept
    monitor_window: int = 1000  # rows behind the drift gauges of GET /metrics
    gate: Path | None = None  # policy TOML whose [monitoring] table sets the thresholds
    max_request_rows: int = 1000  # rows in one request; more is answered 413
    max_body_bytes: int = 1 << 20  # bytes of one request body; more is answered 413
    max_header_bytes: int = 16 << 10  # request line and headers; more is answered 431
    idle_timeout: float = 15.0  # seconds a keep-alive connection may wait for its next request
    header_timeout: float = 10.0  # seconds a request (line, headers, body) may take once its first byte arrived
    max_connections: int = 512  # open connections in all (the last eighth kept for new peers)
    max_connections_per_peer: int = 128  # open connections from one address (an application's pool fits)
    max_errors_per_peer: int = 50  # refused requests per second from one address before it is cut off for 2 s
    metrics_interval: float = 5.0  # GET /metrics recomputes its snapshot at most this often (seconds)
    allow_hosts: tuple[str, ...] = ()  # Host names accepted besides localhost, IP literals and `host`
    limits: StorageLimits = field(default_factory=StorageLimits)  # monitoring files and recorded inputs

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("max-batch", f"must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ConfigError("max-wait-ms", f"must be >= 0, got {self.max_wait_ms}")
        if (self.defer_low is None) != (self.defer_high is None):
            raise ConfigError("defer-low", "give both --defer-low and --defer-high, or neither")
        if self.defer_low is not None and not 0 <= self.defer_low <= self.defer_high <= 1:  # type: ignore[operator]
            raise ConfigError("defer-low", f"need 0 <= low <= high <= 1, got [{self.defer_low}, {self.defer_high}]")
        if self.monitor_window < 1:
            raise ConfigError("monitor-window", f"must be >= 1 row, got {self.monitor_window}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535, got {self.port}")
        for name, value, least in (("max-request-rows", self.max_request_rows, 1),
                                   ("max-body-bytes", self.max_body_bytes, 64),
                                   ("max-header-bytes", self.max_header_bytes, 256),
                                   ("max-connections", self.max_connections, 1),
                                   ("max-connections-per-peer", self.max_connections_per_peer, 1),
                                   ("max-errors-per-peer", self.max_errors_per_peer, 1)):  # fmt: skip
            if value < least:
                raise ConfigError(name, f"must be >= {least}, got {value}")
        for name, value in (("idle-timeout", self.idle_timeout), ("header-timeout", self.header_timeout)):
            if not value > 0:
                raise ConfigError(name, f"must be > 0 seconds, got {value}")
        if not self.metrics_interval >= 0:
            raise ConfigError("metrics-interval", f"must be >= 0 seconds, got {self.metrics_interval}")
        for h in self.allow_hosts:
            if not h.strip() or any(c in h for c in "/ :@"):
                raise ConfigError("allow-host", f"{h!r} is not a host name; pass the name clients use, e.g. "
                                                "--allow-host device7.example.org")  # fmt: skip


class _Refused(Exception):
    """A request answered with an error status (and closed when ``close``)."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


@dataclass(eq=False)
class _Conn:
    """One open connection: its peer address, whether it waits for a request, and how to close it."""

    peer: str
    transport: asyncio.BaseTransport
    opened: float
    idle: bool = True


def _response(status: int, payload: Any, *, keep: bool) -> bytes:
    """The bytes of one response: JSON, or Prometheus text for ``bytes`` payloads."""
    if isinstance(payload, bytes):
        data, kind = payload, _PROMETHEUS_TEXT
    else:
        data, kind = json.dumps(payload, sort_keys=True).encode(), "application/json"
    close = "" if keep else "Connection: close\r\n"
    return (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(data)}\r\n{close}\r\n").encode() + data  # fmt: skip


def _tarpit_size(max_connections: int) -> int:
    """How many cut-off connections may be held: what the file-descriptor limit leaves (raised to its hard cap)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    room = (soft if soft != resource.RLIM_INFINITY else 65536) - max_connections - 256  # 256: files, pools, logs
    return max(0, min(_TARPIT_MAX, room))


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset: nothing lingers in the kernel for an address that was cut off."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on the first address ``host`` resolves to."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]  # fmt: skip
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Gate(asyncio.Protocol):
    """Admission before anything else: a refused connection costs one write and a close.

    ``asyncio.start_server`` builds a reader, a writer and a task for every connection before
    the handler can look at the peer; under a connection flood that work, repeated for every
    refused socket, is what starves the clients already served. The gate decides in
    ``connection_made`` and only then hands the connection to a stream protocol and its handler
    (an address already cut off is reset even earlier, at accept: :meth:`EdgeServer._accept`).
    """

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.inner: asyncio.StreamReaderProtocol | None = None
        self.conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self.server
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "local"
        if srv._cut_off(peer):
            srv.reset += 1
            transport.abort()  # type: ignore[attr-defined]  # no answer: it asked for too many refusals already
            return
        why = srv._admit(peer)
        if why is not None:
            srv.refused[503] += 1
            srv._strike(peer)
            transport.write(_response(503, {"error": why}, keep=False))  # type: ignore[attr-defined]
            transport.close()
            return
        loop = asyncio.get_running_loop()
        self.conn = _Conn(peer, transport, loop.time())
        srv._conns.setdefault(peer, set()).add(self.conn)
        reader = asyncio.StreamReader(limit=srv.config.max_header_bytes, loop=loop)
        self.inner = asyncio.StreamReaderProtocol(reader, srv._handle, loop=loop)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server._forget(self.conn)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else False

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


@dataclass(eq=False)
class _Request:
    """One validated /predict request waiting for (part of) a batch."""

    rows: list[Mapping[str, Any]]
    cols: dict[str, list[str]]
    predictor: Predictor
    future: asyncio.Future
    client: int = 0  # the connection it came on
    taken: int = 0  # rows handed to batches so far
    answered: int = 0
    results: list[dict[str, Any] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.rows)


class EdgeServer:
    """Serve the active model of a device folder.

    Parameters
    ----------
    home : Path
        The device folder; the model is reloaded when ``edge update`` or ``edge rollback``
        switches the active version.
    config : ServeConfig
        Batching, limits, uncertainty band and address.

    Raises
    ------
    ConfigError
        If the device holds no model yet.
    IntegrityError
        If the active model does not load.
    """

    def __init__(self, home: Path, config: ServeConfig) -> None:
        self.agent = EdgeAgent(home)
        self.config = config
        self.review_queue = config.review_queue or self.agent.home / "review-queue.jsonl"
        self._state_file = self.agent.home / "device.json"
        self.recorder = Recorder(self.agent.home, record_inputs=config.record_inputs,
                                 window_rows=config.monitor_window, limits=config.limits)  # fmt: skip
        self.metrics = Metrics()
        self.policy = load_monitoring_policy(config.gate)
        self.predictor: Predictor | None = None
        self.load_error: str | None = None  # why no model is loaded (no device path: it is shown to clients)
        self._load()
        self._pending: deque[_Request] = deque()
        self._seen: dict[int, float] = {}  # connection -> loop time of its last request: who is active
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._parse_pool = ThreadPoolExecutor(1, thread_name_prefix="fedready-parse")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="fedready-infer")
        self._conns: dict[str, set[_Conn]] = {}  # peer address -> its open connections
        self._metrics_body: bytes | None = None
        self._metrics_at = float("-inf")
        self._metrics_task: asyncio.Future | None = None
        self._reload_at = 0.0
        self._allowed_hosts = {h.lower().rstrip(".") for h in (*config.allow_hosts, config.host, "localhost")}
        self.url = ""
        self.batch_sizes: Counter[int] = Counter()  # rows per model call -> calls (see GET /health)
        self.refused: Counter[int] = Counter()  # status -> requests answered with that error
        self.evicted = 0  # idle connections closed to make room for new peers
        self.reset = 0  # connections reset unanswered: their address was over its error budget
        self._strikes: dict[str, list[float]] = {}  # peer -> [window start, refusals, /metrics answers]
        self._cut: dict[str, float] = {}  # peer -> loop time until which its new connections are reset
        self._tarpit: deque[tuple[float, socket.socket]] = deque()  # (reset at, connection), oldest first
        self._tarpit_size = 0

    @property
    def connections(self) -> int:
        """Open connections."""
        return sum(len(c) for c in self._conns.values())

    # -- the model ------------------------------------------------------------------------
    def _load(self) -> None:
        self._stamp = self._state_file.stat().st_mtime_ns if self._state_file.exists() else 0
        self._reload_at = time.monotonic()
        self.predictor = self.agent.predictor()
        profile = self.predictor.artifact / PROFILE_FILE
        self.profile = read_json(profile, what="reference profile") if profile.exists() else None
        self.load_error = None

    def _maybe_reload(self) -> None:
        """Load the active model again after ``edge update``/``rollback`` switched it (inference thread).

        A model that fails to load is not served (``/health`` and ``/predict`` answer 503 naming
        the failure without device paths; the log has the detail); it is tried again at most once
        a second, and as soon as ``device.json`` changes.
        """
        stamp = self._state_file.stat().st_mtime_ns if self._state_file.exists() else 0
        retry = self.predictor is None and time.monotonic() - self._reload_at >= _RELOAD_RETRY_S
        if stamp == self._stamp and not retry:
            return
        try:
            self._load()  # device.json only changes after a verified swap
        except (FedreadyError, OSError) as e:
            self._stamp, self._reload_at, self.predictor = stamp, time.monotonic(), None
            version = self._active_version()
            self.load_error = (f"the active model {version} does not load ({type(e).__name__}); check it with "
                               "`fedready edge status` and `fedready edge rollback` or `update`")  # fmt: skip
            _log.error("edge serve: the active model %s does not load: %s", version, e)

    def _active_version(self) -> str:
        try:
            return str(self.agent.state().get("active") or "(none)")
        except FedreadyError:
            return "(device.json unreadable)"

    async def _ensure_model(self) -> Predictor:
        """The loaded model, after a reload if ``device.json`` changed; 503 when none loads."""
        stamp = self._state_file.stat().st_mtime_ns if self._state_file.exists() else 0
        if stamp != self._stamp or self.predictor is None:
            await asyncio.get_running_loop().run_in_executor(self._infer_pool, self._maybe_reload)
        if self.predictor is None:
            raise _Refused(503, f"no model is loaded: {self.load_error}")
        return self.predictor

    # -- parsing (parse thread, or the loop for small bodies) -------------------------------
    def _parse(self, body: bytes, predictor: Predictor
               ) -> tuple[bool, list[Mapping[str, Any]], dict[str, list[str]], Predictor]:  # fmt: skip
        try:
            payload = parse_json(body, what="the body")
        except ConfigError as e:
            raise _Refused(400, str(e).removeprefix("input: ")) from None
        single = isinstance(payload, dict)
        rows = [payload] if single else payload
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise _Refused(400, "send one row (a JSON object) or a non-empty list of rows (JSON objects)")
        if len(rows) > self.config.max_request_rows:
            raise _Refused(413, f"{len(rows)} rows in one request; the limit is {self.config.max_request_rows} "
                                "(--max-request-rows): split it")  # fmt: skip
        try:
            cols = predictor.check_rows(rows)
        except IntegrityError as e:
            raise _Refused(422, str(e)) from None
        return single, rows, cols, predictor

    # -- batching ---------------------------------------------------------------------------
    def _share(self) -> int:
        """Rows one request may put in the next batch: an equal share among the active clients.

        Active: a connection with a request waiting, or that sent one within the last
        ``_ACTIVE_S`` seconds (a keep-alive client between two requests still counts), so a large
        request cannot take the batches the small ones are about to fill.
        """
        now = asyncio.get_running_loop().time()
        for c in [c for c, t in self._seen.items() if now - t > _ACTIVE_S]:
            del self._seen[c]
        active = set(self._seen) | {r.client for r in self._pending}
        return max(1, self.config.max_batch // max(1, len(active)))

    def _take(self) -> list[tuple[_Request, int, int]]:
        """Slices of the waiting requests for one batch: at most an equal share of ``max_batch`` each.

        A request with more rows than its share continues in a later batch, behind the others,
        so one large request cannot crowd the small ones out.
        """
        budget = self.config.max_batch
        share = self._share()
        spans: list[tuple[_Request, int, int]] = []
        for r in list(self._pending):
            n = min(len(r.rows) - r.taken, share, budget)
            if n <= 0:
                continue
            spans.append((r, r.taken, r.taken + n))
            r.taken += n
            budget -= n
            if budget == 0:
                break
        served = {id(r) for r, _, _ in spans}
        rest = [r for r in self._pending if id(r) not in served]
        partial = [r for r, _, _ in spans if r.taken < len(r.rows)]
        self._pending = deque(rest + partial)  # a request that got a share and has rows left goes to the back
        return spans

    def _ready_rows(self) -> int:
        """Rows the next batch would hold now (each request counted up to its share)."""
        share = self._share()
        return sum(min(len(r.rows) - r.taken, share) for r in self._pending)

    async def _batcher(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        wait = self.config.max_wait_ms / 1000
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + wait
            while self._ready_rows() < self.config.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            batch = self._take()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._infer_pool, self._run_batch, batch)
            except Exception as e:  # noqa: BLE001 -- the requests of this batch get a 500; the server carries on
                if isinstance(e, _Refused):
                    refusal = e
                else:  # the message may name device paths: the log has it, the clients do not
                    _log.error("edge serve: a model call failed: %s: %s", type(e).__name__, e)
                    refusal = _Refused(500, f"prediction failed ({type(e).__name__}); the device's log has the detail")
                for r, _, _ in batch:
                    if not r.future.done():
                        r.future.set_exception(refusal)
                    r.taken = len(r.rows)
                self._pending = deque(r for r in self._pending if r.taken < len(r.rows))
                continue
            i = 0
            for r, a, b in batch:
                r.results[a:b] = results[i : i + b - a]
                i += b - a
                r.answered += b - a
                if r.answered == len(r.rows) and not r.future.done():
                    r.future.set_result(r.results)

    def _run_batch(self, batch: list[tuple[_Request, int, int]]) -> list[dict[str, Any]]:
        """One model call for the batch (inference thread): decide, record, count."""
        self._maybe_reload()
        predictor = self.predictor
        if predictor is None:
            raise _Refused(503, f"no model is loaded: {self.load_error}")
        for r, _, _ in batch:
            if r.predictor is not predictor:  # the model was swapped after the request was checked
                r.cols, r.predictor = predictor.check_rows(r.rows), predictor
        rows = [row for r, a, b in batch for row in r.rows[a:b]]
        cols = {k: [v for r, a, b in batch for v in r.cols[k][a:b]] for k in batch[0][0].cols}
        t0 = time.perf_counter()
        results = predictor.predict_checked(rows, cols)
        self._defer(predictor, rows, results)
        latency = time.perf_counter() - t0
        self.metrics.observe(version=predictor.version, rows=len(rows), latency=latency)
        self.recorder.record(predictor.schema, rows, results, version=predictor.version, latency=latency)
        self.batch_sizes[len(rows)] += 1
        return results

    def _defer(self, predictor: Predictor, rows: list[Mapping[str, Any]], results: list[dict[str, Any]]) -> None:
        low, high = self.config.defer_low, self.config.defer_high
        deferred = []
        for row, res in zip(rows, results, strict=True):
            if low is not None and low <= res["probability"] <= high:  # type: ignore[operator]
                res["decision"] = "deferred"
                deferred.append({"time": time.time(), "version": res["version"], "probability": res["probability"],
                                 **recorded_row(predictor.schema, row, self.config.limits)})  # fmt: skip
            else:
                res["decision"] = res["label"]
        if deferred:
            append_bounded(self.review_queue, deferred, self.config.limits)

    # -- HTTP -------------------------------------------------------------------------------
    def _health(self) -> tuple[int, Any]:
        calls = sum(self.batch_sizes.values())
        rows = sum(k * v for k, v in self.batch_sizes.items())
        refused = {str(k): v for k, v in sorted(self.refused.items())}
        out = {"model_calls": calls, "rows": rows, "connections": self.connections, "refused": refused,
               "evicted_idle_connections": self.evicted, "reset_connections": self.reset}  # fmt: skip
        if self.predictor is None:
            return 503, {"status": "no-model", "error": self.load_error, "version": None, **out}
        return 200, {"status": "ok", "version": self.predictor.version, **out}

    async def _metrics_text(self) -> bytes:
        """The Prometheus text, recomputed at most once per ``metrics_interval`` (one computation at a time)."""
        loop = asyncio.get_running_loop()
        if self._metrics_body is not None and loop.time() - self._metrics_at < self.config.metrics_interval:
            return self._metrics_body
        if self._metrics_task is None:
            predictor = await self._ensure_model()
            window = self.recorder.window(predictor.version)
            task = loop.run_in_executor(self._parse_pool, self.metrics.render, self.profile, window, self.policy)
            self._metrics_task = task

            def done(f: asyncio.Future) -> None:
                self._metrics_task = None
                if not f.cancelled() and f.exception() is None:
                    self._metrics_body, self._metrics_at = f.result(), loop.time()

            task.add_done_callback(done)
        return await asyncio.shield(self._metrics_task)

    def _check_browser(self, headers: Mapping[str, str]) -> None:
        """Refuse what only a web page sends: a foreign ``Host`` (DNS rebinding) or any ``Origin``."""
        host = headers.get("host")
        if host is not None and not self._host_ok(host):
            raise _Refused(421, f"Host {host[:80]!r} is not a name this device answers to; clients use an IP address, "
                                "localhost or a name passed with --allow-host (a foreign name is how DNS rebinding "
                                "reaches a device from a web page)", close=True)  # fmt: skip
        if "origin" in headers:
            raise _Refused(403, f"requests from web pages are refused (Origin {headers['origin'][:80]!r}); call "
                                "edge serve from a program, or put an authenticating proxy in front",
                           close=True)  # fmt: skip

    def _host_ok(self, value: str) -> bool:
        name = value.strip()
        if name.startswith("["):  # [::1]:8080
            name = name[1 : name.find("]")] if "]" in name else ""
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        name = name.lower().rstrip(".")
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True  # an address literal: the page would be on that very address, not a rebound name
        except ValueError:
            return name in self._allowed_hosts

    async def _route(self, method: str, path: str, body: bytes, client: int = 0,
                     headers: Mapping[str, str] | None = None, peer: str = "local") -> tuple[int, Any]:  # fmt: skip
        loop = asyncio.get_running_loop()
        headers = headers or {}
        self._check_browser(headers)
        if path == "/health" and method == "GET":
            with contextlib.suppress(_Refused):
                await self._ensure_model()
            return self._health()
        if path == "/metrics" and method == "GET":
            w = self._window(peer)
            w[2] += 1
            if w[2] > _METRICS_PER_PEER:
                every = self.config.metrics_interval
                raise _Refused(429, f"GET /metrics more than {_METRICS_PER_PEER} times a second from one address; "
                                    f"the snapshot changes every {every:g} s, scrape less often")  # fmt: skip
            return 200, await self._metrics_text()
        if path not in ("/predict", "/health", "/metrics"):
            raise _Refused(404, f"no route {path[:100]!r}; use POST /predict, GET /health or GET /metrics")
        if path != "/predict" or method != "POST":
            raise _Refused(405, f"{method[:20]} {path} is not served; use POST /predict, GET /health or GET /metrics")
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
            raise _Refused(415, f"Content-Type {kind[:60] or '(none)'!r} is refused; send the body as "
                                "application/json")  # fmt: skip
        predictor = await self._ensure_model()
        if len(body) <= _INLINE_BODY:
            single, rows, cols, predictor = self._parse(body, predictor)
        else:
            single, rows, cols, predictor = await loop.run_in_executor(self._parse_pool, self._parse, body, predictor)
        assert self._wake is not None
        request = _Request(rows, cols, predictor, loop.create_future(), client)
        self._seen[client] = loop.time()
        self._pending.append(request)
        self._wake.set()
        results = await request.future
        return 200, results[0] if single else {"results": results}

    async def _read_request(self, reader: asyncio.StreamReader, first: bytes = b""
                            ) -> tuple[str, str, dict[str, str], bytes, bool]:  # fmt: skip
        """Read one request: method, path, headers, body, keep-alive; :class:`_Refused` for anything malformed."""
        try:
            head = first + await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _Refused(431, f"request line and headers exceed {self.config.max_header_bytes} bytes "
                                "(--max-header-bytes)", close=True) from None  # fmt: skip
        if len(head) > self.config.max_header_bytes + 4:
            raise _Refused(431, f"request line and headers exceed {self.config.max_header_bytes} bytes "
                                "(--max-header-bytes)", close=True)  # fmt: skip
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            raise _Refused(400, "malformed request line; expected 'METHOD /path HTTP/1.1'", close=True)
        headers: dict[str, str] = {}
        for h in lines[1:]:
            name, sep, value = h.partition(":")
            if not sep or not name.strip() or name != name.strip():
                raise _Refused(400, f"malformed header line {h[:60]!r}", close=True)
            key = name.lower()
            if key in headers and key in ("content-length", "host") and headers[key] != value.strip():
                raise _Refused(400, f"conflicting {name} headers", close=True)
            headers[key] = value.strip()
        if "transfer-encoding" in headers:
            raise _Refused(411, "chunked or encoded bodies are not supported; send Content-Length", close=True)
        raw_length = headers.get("content-length", "0") or "0"
        if not set(raw_length) <= _DIGITS or len(raw_length) > 12:
            raise _Refused(400, f"Content-Length must be a non-negative integer, got {raw_length[:20]!r}", close=True)
        length = int(raw_length)
        if length > self.config.max_body_bytes:
            raise _Refused(413, f"body of {length} bytes; the limit is {self.config.max_body_bytes} "
                                "(--max-body-bytes): send fewer rows per request", close=True)  # fmt: skip
        body = await reader.readexactly(length) if length else b""
        keep = headers.get("connection", "").lower() != "close" and parts[2] == "HTTP/1.1"
        return parts[0], parts[1].split("?", 1)[0], headers, body, keep

    # -- connections ------------------------------------------------------------------------
    def _admit(self, peer: str) -> str | None:
        """Why a new connection from ``peer`` is refused (None: admitted, after freeing a slot if needed)."""
        cfg = self.config
        mine, total = len(self._conns.get(peer, ())), self.connections
        if mine >= cfg.max_connections_per_peer:
            return (f"{mine} connections from your address are open, the limit is {cfg.max_connections_per_peer} "
                    "(--max-connections-per-peer); reuse them (keep-alive) or retry later")  # fmt: skip
        reserve = cfg.max_connections // 8
        if total >= cfg.max_connections - reserve and mine >= max(1, cfg.max_connections_per_peer // 4):
            return (f"{total} connections are open; the last {reserve} of the {cfg.max_connections} "
                    "(--max-connections) are kept for new clients; retry later")  # fmt: skip
        if total < cfg.max_connections:
            return None
        heaviest = max(self._conns.items(), key=lambda kv: len(kv[1]), default=None)
        idle = [c for c in heaviest[1] if c.idle] if heaviest is not None and len(heaviest[1]) > mine + 1 else []
        if not idle:
            return (f"{total} connections are open, the limit is {cfg.max_connections} (--max-connections); "
                    "retry later")  # fmt: skip
        victim = min(idle, key=lambda c: c.opened)  # the oldest idle connection of the address holding the most
        self._forget(victim)
        self.evicted += 1
        victim.transport.close()
        return None

    def _window(self, peer: str) -> list[float]:
        now = asyncio.get_running_loop().time()
        w = self._strikes.get(peer)
        if w is None or now - w[0] >= 1.0:
            if len(self._strikes) > 10_000:  # forget quiet addresses: the table cannot grow without bound
                self._strikes = {p: v for p, v in self._strikes.items() if now - v[0] < 1.0}
                self._cut = {p: t for p, t in self._cut.items() if t > now}
            w = self._strikes[peer] = [now, 0.0, 0.0]
        return w

    def _strike(self, peer: str) -> bool:
        """Count one refusal against ``peer``; True when that puts it over its budget (it is cut off).

        Every refused request (4xx, 503) costs the server a parse and an answer while producing
        nothing: an address that collects more than ``max_errors_per_peer`` of them in a second is
        cut off for two seconds (its new connections are reset unanswered, its open ones closed after
        the current answer), which caps what garbage, floods and web pages can spend of the device.
        """
        w = self._window(peer)
        w[1] += 1
        if w[1] > self.config.max_errors_per_peer:
            self._cut[peer] = w[0] + _CUT_OFF_S
            return True
        return False

    def _cut_off(self, peer: str) -> bool:
        until = self._cut.get(peer)
        return until is not None and asyncio.get_running_loop().time() < until

    def _forget(self, conn: _Conn) -> None:
        peers = self._conns.get(conn.peer)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self._conns[conn.peer]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one admitted connection (:class:`_Gate` admitted it and tracks it)."""
        gate = writer.transport.get_protocol()
        conn = gate.conn if isinstance(gate, _Gate) and gate.conn is not None else _Conn("local", writer.transport, 0.0)
        try:
            while True:
                conn.idle = True
                try:
                    async with asyncio.timeout(self.config.idle_timeout):
                        first = await reader.readexactly(1)
                except TimeoutError:
                    self.refused[408] += 1
                    why = f"no request within {self.config.idle_timeout:g} s (--idle-timeout); connection closed"
                    await self._respond(writer, 408, {"error": why}, keep=False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # closed by the client, or evicted for a new peer
                conn.idle = False
                try:
                    async with asyncio.timeout(self.config.header_timeout):  # cheaper than wait_for: no task
                        method, path, headers, body, keep = await self._read_request(reader, first)
                except _Refused as e:
                    self.refused[e.status] += 1
                    self._strike(conn.peer)
                    await self._respond(writer, e.status, {"error": e.message}, keep=False)
                    return
                except TimeoutError:
                    self.refused[408] += 1
                    self._strike(conn.peer)
                    why = (f"no complete request within {self.config.header_timeout:g} s of its first byte "
                           "(--header-timeout); connection closed")  # fmt: skip
                    await self._respond(writer, 408, {"error": why}, keep=False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client went away mid-request: nobody to answer
                try:
                    status, payload = await self._route(method, path, body, id(writer), headers, conn.peer)
                except _Refused as e:
                    self.refused[e.status] += 1
                    cut = self._strike(conn.peer)
                    status, payload, keep = e.status, {"error": e.message}, keep and not e.close and not cut
                if not await self._respond(writer, status, payload, keep=keep) or not keep:
                    return
        finally:
            self._forget(conn)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, status: int, payload: Any, *, keep: bool) -> bool:
        """Write one response; False if the client cannot take it (then the connection is dropped)."""
        try:
            writer.write(_response(status, payload, keep=keep))
            if writer.transport.get_write_buffer_size():  # the client is not reading: wait, but not for ever
                async with asyncio.timeout(self.config.idle_timeout):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._batch_task = asyncio.create_task(self._batcher())
        try:
            self._sock = _listen(self.config.host, self.config.port)
        except OSError as e:
            self._batch_task.cancel()
            if isinstance(e, socket.gaierror):
                raise ConfigError("host", f"{self.config.host!r} is not an address of this machine ({e.strerror}); "
                                          "pass an IP address, e.g. --host 127.0.0.1") from None  # fmt: skip
            in_use = e.errno == errno.EADDRINUSE
            why = "is in use by another program" if in_use else f"cannot be opened ({e.strerror or e})"
            raise ConfigError("port", f"{self.config.host}:{self.config.port} {why}; pick another --port (0: any "
                                      "free port) or --host") from None  # fmt: skip
        self._tarpit_size = _tarpit_size(self.config.max_connections)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)
        port = self._sock.getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"

    def _accept(self) -> None:
        """Accept what is waiting; reset a cut-off address's connections before asyncio builds anything for them.

        An address over its error budget (:meth:`_strike`) keeps reconnecting as fast as it can; a reset
        at accept costs one system call, where a transport, a protocol and a task would cost the
        well-behaved clients their share of the event loop.
        """
        loop = asyncio.get_running_loop()
        for _ in range(128):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: stop accepting for a second rather than spin
                _log.error("edge serve: cannot accept connections (%s); retrying in 1 s", e.strerror or e)
                loop.remove_reader(self._sock.fileno())
                loop.call_later(1.0, loop.add_reader, self._sock.fileno(), self._accept)
                return
            peer = str(addr[0]) if isinstance(addr, tuple) and addr else "local"
            if self._cut_off(peer):
                self.reset += 1
                if len(self._tarpit) < self._tarpit_size:  # held unanswered: a waiting client is not reconnecting
                    self._tarpit.append((loop.time() + _CUT_OFF_S, conn))
                    if len(self._tarpit) == 1:
                        loop.call_later(_CUT_OFF_S, self._drain_tarpit)
                else:
                    _reset(conn)
                continue
            conn.setblocking(False)
            loop.create_task(self._connect(conn))

    def _drain_tarpit(self) -> None:
        """Reset the held connections whose time is up (and come back for the rest)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._tarpit and self._tarpit[0][0] <= now:
            _reset(self._tarpit.popleft()[1])
        if self._tarpit:
            loop.call_later(max(0.01, self._tarpit[0][0] - now), self._drain_tarpit)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Gate(self), conn)
        except OSError:
            conn.close()

    def serve_forever(self, *, on_ready: Any = None) -> None:
        """Serve until interrupted (Ctrl-C).

        Raises
        ------
        ConfigError
            If the address cannot be listened on (the port is in use).
        """

        async def main() -> None:
            await self._start()
            if on_ready is not None:
                on_ready(self.url)
            await asyncio.Event().wait()  # until interrupted

        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(main())
        finally:
            self._shutdown_pools()

    def start(self) -> str:
        """Serve from a background thread; return the base URL (for tests and benchmarks)."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start())
            except ConfigError as e:
                failed.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("edge server did not start within 30 s")
        if failed:
            self._loop, self._thread = None, None
            self._shutdown_pools()
            raise failed[0]
        return self.url

    def stop(self) -> None:
        """Stop a server started with :meth:`start`."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._batch_task.cancel()
            while self._tarpit:
                _reset(self._tarpit.popleft()[1])

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
