"""``fedready edge serve``: HTTP predictions with dynamic micro-batching and a human review queue.

A small asyncio HTTP/1.1 server (keep-alive, JSON bodies). Requests are queued; one batcher
takes the first waiting request, then keeps collecting until ``max_batch`` rows are waiting or
``max_wait_ms`` has passed, and runs the encoder and ONNX Runtime once for all of them.

Routes: ``POST /predict`` with one row (a JSON object; answered with one result) or a list of
rows (answered with ``{"results": [...]}``), ``GET /health``, and ``GET /metrics`` (Prometheus:
prediction count, latency histogram, drift scores of the newest ``monitor_window`` rows against
the active model's reference profile). Every batch is summarised into the device's monitoring
folder (:class:`fedready.monitoring.Recorder`): histograms only, raw rows only with ``record_inputs``.

A prediction whose probability falls inside the uncertainty band ``[defer_low, defer_high]``
is answered ``"decision": "deferred"`` and the row is appended to the review queue (JSON lines)
for a person to decide, instead of the model deciding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedready.errors import ConfigError, FedreadyError
from fedready.monitoring import PROFILE_FILE, Metrics, Recorder, load_monitoring_policy
from fedready.registry._canonical import read_json
from fedready.registry._edge import EdgeAgent

__all__ = ["EdgeServer", "ServeConfig"]

_MAX_BODY = 1 << 20
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


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


class EdgeServer:
    """Serve the active model of a device folder.

    Parameters
    ----------
    home : Path
        The device folder; the model is reloaded when ``edge update`` or ``edge rollback``
        switches the active version.
    config : ServeConfig
        Batching, uncertainty band and address.
    """

    def __init__(self, home: Path, config: ServeConfig) -> None:
        self.agent = EdgeAgent(home)
        self.config = config
        self.review_queue = config.review_queue or self.agent.home / "review-queue.jsonl"
        self._state_file = self.agent.home / "device.json"
        self.recorder = Recorder(self.agent.home, record_inputs=config.record_inputs,
                                 window_rows=config.monitor_window)  # fmt: skip
        self.metrics = Metrics()
        self.policy = load_monitoring_policy(config.gate)
        self._load()
        self._queue: asyncio.Queue[tuple[list[Mapping[str, Any]], asyncio.Future]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.batch_sizes: Counter[int] = Counter()  # rows per model call -> calls (see GET /health)

    def _load(self) -> None:
        self.predictor = self.agent.predictor()
        profile = self.predictor.artifact / PROFILE_FILE
        self.profile = read_json(profile, what="reference profile") if profile.exists() else None
        self._stamp = self._state_file.stat().st_mtime_ns

    def _maybe_reload(self) -> None:
        if self._state_file.stat().st_mtime_ns != self._stamp:
            self._load()  # device.json only changes after a verified swap

    # -- batching -------------------------------------------------------------------------
    def _decide(self, rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        results = self.predictor.predict(rows)
        low, high = self.config.defer_low, self.config.defer_high
        deferred = []
        for row, res in zip(rows, results, strict=True):
            if low is not None and low <= res["probability"] <= high:  # type: ignore[operator]
                res["decision"] = "deferred"
                deferred.append({"time": time.time(), "version": res["version"], "probability": res["probability"],
                                 "row": dict(row)})  # fmt: skip
            else:
                res["decision"] = res["label"]
        if deferred:
            with self.review_queue.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(d, sort_keys=True, default=str) + "\n" for d in deferred))
        return results

    async def _batcher(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        wait = self.config.max_wait_ms / 1000
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + wait
            while n < self.config.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                items.append(item)
                n += len(item[0])
            self._run_batch(items)

    def _run_batch(self, items: list[tuple[list[Mapping[str, Any]], asyncio.Future]]) -> None:
        self._maybe_reload()
        rows = [r for rs, _ in items for r in rs]
        self.batch_sizes[len(rows)] += 1
        t0 = time.perf_counter()
        try:
            results = self._decide(rows)
            latency = time.perf_counter() - t0
            self.metrics.observe(version=self.predictor.version, rows=len(rows), latency=latency)
            self.recorder.record(self.predictor.schema, rows, results, version=self.predictor.version, latency=latency)
        except FedreadyError:
            if len(items) == 1:
                return items[0][1].set_exception(self._error(items[0][0]))
            for rs, fut in items:  # one malformed request must not fail its neighbours
                self._run_batch([(rs, fut)])
            return
        i = 0
        for rs, fut in items:
            if not fut.done():
                fut.set_result(results[i : i + len(rs)])
            i += len(rs)

    def _error(self, rows: list[Mapping[str, Any]]) -> FedreadyError:
        try:
            self.predictor.predict(rows)
        except FedreadyError as e:
            return e
        return FedreadyError("prediction failed")

    # -- HTTP -----------------------------------------------------------------------------
    async def _route(self, method: str, path: str, body: bytes) -> tuple[str, Any]:
        if method == "GET" and path == "/health":
            calls = sum(self.batch_sizes.values())
            rows = sum(k * v for k, v in self.batch_sizes.items())
            return "200 OK", {"status": "ok", "version": self.predictor.version, "model_calls": calls, "rows": rows}
        if method == "GET" and path == "/metrics":
            window = self.recorder.window(self.predictor.version)
            return "200 OK", self.metrics.render(self.profile, window, self.policy)
        if method != "POST" or path != "/predict":
            return "404 Not Found", {"error": "use POST /predict, GET /health or GET /metrics"}
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as e:
            return "400 Bad Request", {"error": f"body is not JSON ({e})"}
        single = isinstance(payload, dict)
        rows = [payload] if single else payload
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return "400 Bad Request", {"error": "send one row (a JSON object) or a non-empty list of rows"}
        assert self._queue is not None
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((rows, fut))
        try:
            results = await fut
        except FedreadyError as e:
            return "422 Unprocessable Entity", {"error": str(e)}
        return "200 OK", results[0] if single else {"results": results}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                length = int(headers.get("content-length", "0") or 0)
                if len(parts) != 3 or length > _MAX_BODY:
                    status, payload = "400 Bad Request", {"error": "malformed request or body over 1 MB"}
                    body, keep = b"", False
                else:
                    body = await reader.readexactly(length) if length else b""
                    status, payload = await self._route(parts[0], parts[1], body)
                    keep = headers.get("connection", "").lower() != "close" and parts[2] == "HTTP/1.1"
                if isinstance(payload, bytes):
                    data, kind = payload, _PROMETHEUS_TEXT
                else:
                    data, kind = json.dumps(payload, sort_keys=True).encode(), "application/json"
                close = "" if keep else "Connection: close\r\n"
                head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
                writer.write(f"{head}{close}\r\n".encode() + data)
                await writer.drain()
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _start(self) -> None:
        self._queue = asyncio.Queue()
        self._batch_task = asyncio.create_task(self._batcher())
        self._server = await asyncio.start_server(self._handle, self.config.host, self.config.port, backlog=512)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"

    def serve_forever(self, *, on_ready: Any = None) -> None:
        """Serve until interrupted (Ctrl-C)."""

        async def main() -> None:
            await self._start()
            if on_ready is not None:
                on_ready(self.url)
            assert self._server is not None
            await self._server.serve_forever()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def start(self) -> str:
        """Serve from a background thread; return the base URL (for tests and benchmarks)."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("edge server did not start within 30 s")
        return self.url

    def stop(self) -> None:
        """Stop a server started with :meth:`start`."""
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            self._batch_task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
