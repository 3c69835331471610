"""Issue 23, Why 5: one client could starve ``edge serve``.

One process holding 700 idle sockets took all 512 slots (new connections got 0 req/s, 336 answered 503),
and eight connections hammering ``GET /metrics``, which recomputed drift on every call, cut honest
throughput to about 10%. Now connections are capped per address, the last slots are kept for new peers
(who may take an idle connection of the heaviest address), and ``/metrics`` serves a cached snapshot.
The throughput side is measured by ``benchmarks/hostile_clients.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.registry.test_edge_attacks import ROW
from tests.security.test_why05_hostile_http_clients import _port, _post, _raw, _read


def _connect(server, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(server)), timeout=10, source_address=(source, 0))


def _hold(server, source: str, n: int) -> tuple[list[socket.socket], list[int]]:
    """Open ``n`` idle connections from ``source``; return them and the statuses of those answered at once."""
    socks = [_connect(server, source) for _ in range(n)]
    last, deadline = None, time.monotonic() + 10
    while time.monotonic() < deadline:  # until the server has admitted or refused every one of them
        time.sleep(0.3)
        state = (server.connections, server.refused[503], server.evicted)
        if state == last:
            break
        last = state
    refused = []
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue  # held open, unanswered: admitted
        finally:
            s.setblocking(True)
        refused.append(int(data.split(b" ")[1]) if data else 0)
    return socks, refused


def _predict_from(server, source: str) -> int:
    with _connect(server, source) as s:
        s.sendall(_post(json.dumps(ROW).encode()))
        return _read(s)[0]


def test_why23_05_one_address_holding_idle_sockets_cannot_take_every_slot(device, serve):
    server = serve(max_connections=32, max_connections_per_peer=6)
    socks, refused = _hold(server, "127.0.0.2", 20)  # the flood, from one address
    try:
        assert len(refused) == 14 and set(refused) == {503}, refused
        assert server.connections == 6
        status, _, body = _raw(server, b"GET /health HTTP/1.1\r\n\r\n")  # another client: served at once
        assert status == 200 and json.loads(body)["connections"] == 7
        assert [_predict_from(server, "127.0.0.1") for _ in range(5)] == [200] * 5
    finally:
        for s in socks:
            s.close()


def test_why23_05_a_flood_from_many_addresses_leaves_slots_for_new_peers(device, serve):
    server = serve(max_connections=16, max_connections_per_peer=16)  # the last 2 slots are kept for new peers
    socks, refused = _hold(server, "127.0.0.2", 20)
    more, refused_more = _hold(server, "127.0.0.3", 20)
    try:
        assert server.connections <= 16 and 503 in refused and 503 in refused_more
        # new peers still get in: first the kept slots, then an idle connection of the heaviest address is closed
        assert [_predict_from(server, f"127.0.0.{i}") for i in range(10, 16)] == [200] * 6
        assert server.evicted >= 1
        health = json.loads(_raw(server, b"GET /health HTTP/1.1\r\n\r\n")[2])
        assert health["evicted_idle_connections"] == server.evicted
    finally:
        for s in socks + more:
            s.close()


def test_why23_05_metrics_hammer_recomputes_drift_at_most_once_per_interval(device, serve):
    server = serve(metrics_interval=60)
    assert _raw(server, _post(json.dumps([ROW] * 50).encode()))[0] == 200
    calls = []
    render = server.metrics.render

    def counted(*args):
        calls.append(threading.get_ident())
        time.sleep(0.2)  # a slow drift computation: concurrent scrapes wait for the one under way
        return render(*args)

    server.metrics.render = counted
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _raw(server, b"GET /metrics HTTP/1.1\r\n\r\n"), range(64)))
    served = [body for status, _, body in answers if status == 200]
    assert len(calls) == 1 and len(set(served)) == 1 and b'fedready_drift_psi{feature="age"}' in served[0]
    # one address gets at most 10 answers a second (a scraper needs one per interval); the rest are 429, and
    # an address that keeps collecting refusals is cut off: its connections are reset unanswered
    assert 1 <= len(served) <= 20 and {status for status, _, _ in answers} <= {200, 429, 0}
    assert json.loads(_raw(server, b"GET /health HTTP/1.1\r\n\r\n", source="127.0.0.9")[2])["status"] == "ok"


def test_why23_05_an_address_collecting_refusals_is_cut_off_and_others_are_served(device, serve):
    server = serve(max_errors_per_peer=20)
    garbage = b"GARBAGE\r\n\r\n"
    statuses = [_raw(server, garbage, source="127.0.0.2")[0] for _ in range(21)]
    assert statuses == [400] * 21  # the 21st refusal in a second puts the address over its budget
    for _ in range(3):  # cut off: held unanswered (so it stops reconnecting), then reset
        with contextlib.suppress(ConnectionResetError, TimeoutError), _connect(server, "127.0.0.2") as s:
            s.settimeout(0.5)
            s.sendall(garbage)
            assert s.recv(100) == b""
    assert server.reset >= 3
    assert _predict_from(server, "127.0.0.1") == 200  # another address is served as before
    time.sleep(2.2)  # the cut-off lasts two seconds
    assert _raw(server, garbage, source="127.0.0.2")[0] == 400
