"""Issue 23, Why 6: the device server answered web pages.

A POST with ``Content-Type: text/plain``, a foreign ``Origin`` and ``Host: attacker.example`` got 200: a
page open in a browser on the device could feed the monitor (the poisoning path of Why 4), and since
``Host`` was never checked, DNS rebinding could read the answers. Each is now refused before the body is
read, and nothing reaches the monitor.
"""

from __future__ import annotations

import json

import pytest

from tests.registry.test_edge_attacks import ROW
from tests.security.test_why05_hostile_http_clients import _post, _raw

BODY = json.dumps(ROW).encode()
PAGE = {  # what a page can send without a CORS preflight, and the rebinding request
    "text/plain from another origin": (_post(BODY, b"Origin: http://attacker.example\r\n", kind=b"text/plain"), 403),
    "text/plain": (_post(BODY, kind=b"text/plain;charset=UTF-8"), 415),
    "form": (_post(BODY, kind=b"application/x-www-form-urlencoded"), 415),
    "multipart form": (_post(BODY, kind=b"multipart/form-data; boundary=x"), 415),
    "no Content-Type": (b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, 415),
    "JSON with a foreign Origin": (_post(BODY, b"Origin: http://attacker.example\r\n"), 403),
    "JSON with Origin null": (_post(BODY, b"Origin: null\r\n"), 403),
    "DNS rebinding, POST": (_post(BODY).replace(b"Host: 127.0.0.1", b"Host: attacker.example:8080"), 421),
    "DNS rebinding, GET /metrics": (b"GET /metrics HTTP/1.1\r\nHost: attacker.example\r\n\r\n", 421),
    "DNS rebinding, GET /health": (b"GET /health HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n", 421),
}


@pytest.mark.parametrize("attack", list(PAGE))
def test_why23_06_requests_a_web_page_can_make_are_refused_and_feed_nothing(device, serve, attack):
    server = serve()
    data, expected = PAGE[attack]
    status, headers, body = _raw(server, data)
    assert status == expected, body
    assert headers["content-type"] == "application/json" and json.loads(body)["error"]
    assert not (device.home / "monitoring" / "summaries.jsonl").exists()  # the monitor was not fed
    assert json.loads(_raw(server, b"GET /health HTTP/1.1\r\n\r\n")[2])["rows"] == 0


def test_why23_06_programs_on_addresses_localhost_and_allowed_names_are_served(device, serve):
    server = serve(allow_hosts=("device7.example.org",))
    for host in (b"127.0.0.1:8080", b"localhost", b"[::1]:8080", b"10.1.2.3", b"device7.example.org:8080"):
        request = _post(BODY).replace(b"Host: 127.0.0.1", b"Host: " + host)
        assert _raw(server, request)[0] == 200, host
    assert _raw(server, _post(BODY, kind=b"application/json; charset=utf-8"))[0] == 200
    assert _raw(server, _post(BODY, kind=b"application/vnd.fedready+json"))[0] == 200
