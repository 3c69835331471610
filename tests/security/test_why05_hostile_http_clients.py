"""Why 5: `edge serve` did not survive hostile clients (starvation, held connections, dropped answers, miscounts)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.registry.test_edge_attacks import ROW


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _read(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response: status, headers, body ((0, {}, b"") if the server closed without answering)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split(" ")[1]), headers, body


def _raw(server, data: bytes, *, timeout: float = 30, source: str | None = None) -> tuple[int, dict, bytes]:
    """Send ``data`` on a new connection (from address ``source``); (0, {}, b"") if closed or reset unanswered."""
    address = (source, 0) if source else None
    try:
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=timeout, source_address=address)
    except ConnectionResetError:  # reset at accept (an address cut off by the server)
        return 0, {}, b""
    with sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: the answer is still there
        try:
            return _read(sock)
        except ConnectionResetError:
            return 0, {}, b""


def _post(body: bytes, extra: bytes = b"", *, kind: bytes = b"application/json") -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + kind + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip


def test_oversized_requests_are_refused_and_large_ones_cannot_starve_others(device, serve):
    server = serve(max_batch=8, max_wait_ms=5)
    status, headers, body = _raw(server, _post(json.dumps([ROW] * 10_000).encode()))
    assert status == 413 and "--max-body-bytes" in json.loads(body)["error"] and headers["connection"] == "close"
    status, _, body = _raw(server, _post(json.dumps([{"age": "1"}] * 1001).encode()))
    assert status == 413 and "1001 rows in one request; the limit is 1000" in json.loads(body)["error"]
    # a request within the limits runs in slices of at most max_batch rows, beside everyone else's
    big = [{**ROW, "age": str(20 + i % 50)} for i in range(1000)]
    with ThreadPoolExecutor(21) as pool:
        bulk = pool.submit(_raw, server, _post(json.dumps(big).encode()))
        small = list(pool.map(lambda _: _raw(server, _post(json.dumps(ROW).encode())), range(20)))
        status, _, body = bulk.result()
    assert status == 200 and len(json.loads(body)["results"]) == 1000
    assert [s for s, _, _ in small] == [200] * 20
    assert max(server.batch_sizes) <= 8 and sum(k * v for k, v in server.batch_sizes.items()) == 1020


def test_inference_runs_off_the_event_loop(device, serve):
    server = serve()
    slow = server.predictor.predict_checked

    def sleepy(rows, cols):
        time.sleep(1.5)  # a model call that takes long: the loop must keep answering
        return slow(rows, cols)

    server.predictor.predict_checked = sleepy
    pending = threading.Thread(target=_raw, args=(server, _post(json.dumps(ROW).encode())))
    pending.start()
    time.sleep(0.2)
    t = time.perf_counter()
    status, _, body = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")
    assert status == 200 and time.perf_counter() - t < 0.5
    pending.join()


def test_slowloris_connections_are_answered_408_and_closed(device, serve):
    server = serve(idle_timeout=0.5, header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nX-Slow: a")  # ... and never finishes the header
        t = time.perf_counter()
        status, _, body = _read(sock)
        assert status == 408 and "--header-timeout" in json.loads(body)["error"] and time.perf_counter() - t < 5
        assert sock.recv(1) == b""  # closed
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        assert _read(sock)[0] == 200
        assert _read(sock)[0] == 408  # an idle keep-alive connection is not held for ever either


def test_connection_flood_is_capped_with_503(device, serve):
    server = serve(max_connections=5)
    held = [socket.create_connection(("127.0.0.1", _port(server)), timeout=10) for _ in range(5)]
    try:
        time.sleep(0.2)
        status, _, body = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")
        assert status == 503 and "the limit is 5 (--max-connections)" in json.loads(body)["error"]
        held[0].sendall(b"GET /health HTTP/1.1\r\n\r\n")  # the connections already open keep working
        assert _read(held[0])[0] == 200
    finally:
        for s in held:
            s.close()


MALFORMED = {
    "5000-digit integer": (_post(b"9" * 5000), 400, "more than 4300 digits"),
    "JSON nested 100,000 deep": (_post(b"[" * 100_000), 400, "nested too deeply"),
    "non-UTF-8 body": (_post(b"\xff\xfe\x00{}"), 400, "not UTF-8"),
    "bad Content-Length": (b"POST /predict HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n{}", 400, "Content-Length must"),
    "70 KB header": (b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n", 431, "--max-header-bytes"),
    "chunked body": (b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "Content-Length"),
    "garbage request line": (b"\x16\x03\x01 garbage\r\n\r\n", 400, "malformed request line"),
    "not JSON": (_post(b"{'age': 39}"), 400, "is not JSON"),
    "empty list": (_post(b"[]"), 400, "non-empty list"),
    "a row that is not an object": (_post(b"[1, 2]"), 400, "JSON object"),
    "unknown path": (b"GET /admin HTTP/1.1\r\n\r\n", 404, "no route"),
    "wrong method": (b"DELETE /predict HTTP/1.1\r\n\r\n", 405, "not served"),
    "a list in a cell": (_post(json.dumps({**ROW, "age": [1]}).encode()), 422, "column 'age' is a JSON array"),
    "an infinite number": (_post(json.dumps({**ROW, "age": "1e999"}).encode()), 422, "not a finite number"),
}


@pytest.mark.parametrize("attack", list(MALFORMED))
def test_malformed_request_gets_a_4xx_json_error_not_a_dropped_connection(device, serve, attack):
    server = serve()
    data, expected, words = MALFORMED[attack]
    status, headers, body = _raw(server, data)
    assert status == expected, (status, body)
    assert headers["content-type"] == "application/json" and words in json.loads(body)["error"]
    assert _raw(server, _post(json.dumps(ROW).encode()))[0] == 200  # and the server carries on


def test_one_bad_row_refuses_only_its_request_and_counts_stay_exact(device, serve):
    server = serve(max_batch=64, max_wait_ms=200)  # a long wait: good and bad requests meet in one batch
    bad = [ROW, {**ROW, "age": "abc"}]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: _raw(server, _post(json.dumps(p).encode())), [bad] + [[ROW, ROW]] * 7))
    status, _, body = answers[0]
    assert status == 422 and json.loads(body)["error"] == "row 2: column 'age' holds 'abc', not a number"
    assert [a[0] for a in answers[1:]] == [200] * 7
    health = json.loads(_raw(server, b"GET /health HTTP/1.1\r\n\r\n")[2])
    assert health["rows"] == 14 and health["refused"] == {"422": 1}  # the bad request's good row is not counted
    lines = (device.home / "monitoring" / "summaries.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["rows"] for x in lines) == 14
