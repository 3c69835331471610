"""``edge serve`` under attack: well-behaved clients alone, then beside one hostile client, for each attack.

    python benchmarks/hostile_clients.py [--connections 64] [--new-connection-clients 8] [--seconds 6] [--repeat 2]

Installs a signed demo artifact on a temporary device and starts ``fedready edge serve`` (default
limits) in its own process. The well-behaved load is ``--connections`` keep-alive clients and
``--new-connection-clients`` clients that open a new connection for every request (from
127.0.0.1), each sending one raw Adult row per request, back to back. For each attack, alternating,
it measures the well-behaved load alone (the baseline) and beside a hostile client running in
another process, from another address (127.0.0.2):

* ``mixed``: 10,000-row requests back to back (over the row and body limits), the largest request
  the limits allow (1,000 rows) back to back, 200 slowloris connections dribbling one header byte
  per second, and garbage (bad request line and Content-Length, 70 KB header, non-UTF-8 body,
  5,000-digit integer, JSON nested 100,000 deep, chunked body, a bad row);
* ``flood``: 700 idle sockets held open, each reopened as soon as the server closes it;
* ``metrics``: 8 keep-alive connections sending ``GET /metrics`` back to back;
* ``cross-origin``: 8 connections sending what a web page can, back to back: ``text/plain`` and form
  POSTs with a foreign ``Origin``, and the DNS-rebinding request (``Host: attacker.example``).

Prints JSON: for the baseline and each attack the well-behaved requests/s (keep-alive and
new-connection), latency and server CPU time per request (medians over the repetitions), the ratios
(target >= 0.5 each), well-behaved requests lost (sent but not answered 200; target 0), how the
server answered the hostile client (status -> count; "dropped" = closed without an answer,
"refused" = connection refused or reset before a request) and the share of one core the attacker's
own process used (it runs on the same machine, so its CPU is taken from the server and the
well-behaved clients too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROW = {"age": "39", "workclass": "State-gov", "fnlwgt": "77516", "education": "Bachelors", "education-num": "13",
       "marital-status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family",
       "race": "White", "sex": "Male", "capital-gain": "2174", "capital-loss": "0", "hours-per-week": "40",
       "native-country": "United-States"}  # fmt: skip


def _request(body: bytes, extra: str = "") -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return status, await reader.readexactly(length)


HOSTILE = "127.0.0.2"  # the attacker's address (any 127.0.0.0/8 address reaches the loopback server)


def _stats(ok: int, lost: int, latencies: list[float], elapsed: float) -> dict:
    latencies.sort()
    pick = (lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)) if latencies \
        else (lambda q: None)  # fmt: skip
    return {"requests": ok, "lost": lost, "requests_per_s": round(ok / elapsed, 1), "p50_ms": pick(0.5),
            "p99_ms": pick(0.99)}  # fmt: skip


async def _well_behaved(port: int, connections: int, seconds: float, fresh: int = 0) -> dict:
    """``connections`` keep-alive clients and ``fresh`` clients opening a new connection per request."""
    request = _request(json.dumps(ROW).encode())
    once = _request(json.dumps(ROW).encode(), "Connection: close\r\n")
    counts = {"keepalive": [0, 0, []], "new_connection": [0, 0, []]}
    stop = time.perf_counter() + seconds

    def count(kind: str, status: int | None, t: float) -> None:
        if status == 200:
            counts[kind][0] += 1
            counts[kind][2].append(time.perf_counter() - t)
        else:
            counts[kind][1] += 1

    async def keepalive() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                writer.write(request)
                status, _ = await asyncio.wait_for(_read_response(reader), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                count("keepalive", None, t)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            count("keepalive", status, t)
        writer.close()

    async def new_connection() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                writer.write(once)
                status, _ = await asyncio.wait_for(_read_response(reader), 30)
                writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                status = None
            count("new_connection", status, t)

    t0 = time.perf_counter()
    await asyncio.gather(*(keepalive() for _ in range(connections)), *(new_connection() for _ in range(fresh)))
    elapsed = time.perf_counter() - t0
    return {kind: _stats(ok, lost, lat, elapsed) for kind, (ok, lost, lat) in counts.items()
            if kind == "keepalive" or fresh}  # fmt: skip


def _garbage() -> list[bytes]:
    deep = b"[" * 100_000
    return [
        b"GARBAGE\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
        _request(b"\xff\xfe\x00{}"),
        _request(b"9" * 5000),
        _request(deep),
        b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        _request(json.dumps([ROW, {**ROW, "age": "1e999"}]).encode()),
    ]


def _open(port: int):  # noqa: ANN202 -- asyncio's own return type
    return asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE, 0))


async def _hostile(port: int, seconds: float, kind: str = "mixed") -> dict:
    return await {"mixed": _mixed, "flood": _flood, "metrics": _metrics_hammer,
                  "cross-origin": _cross_origin}[kind](port, seconds)  # fmt: skip


async def _flood(port: int, seconds: float, sockets: int = 700) -> dict:
    """Hold ``sockets`` idle connections, reopening each as soon as the server closes it."""
    answers: Counter[str] = Counter()
    stop = time.perf_counter() + seconds

    async def hold() -> None:
        while time.perf_counter() < stop:
            try:
                reader, writer = await _open(port)
            except OSError:
                answers["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                data = await asyncio.wait_for(reader.read(65536), max(0.01, stop - time.perf_counter()))
                answers[data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "dropped"] += 1
            except TimeoutError:
                answers["held"] += 1  # still open and unanswered when the attack ended
            except OSError:
                answers["reset"] += 1
            writer.close()

    await asyncio.gather(*(hold() for _ in range(sockets)))
    return dict(answers)


async def _metrics_hammer(port: int, seconds: float, connections: int = 8) -> dict:
    answers: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def hammer() -> None:
        writer = None
        while time.perf_counter() < stop:
            try:
                if writer is None:
                    reader, writer = await _open(port)
                writer.write(request)
                status, _ = await asyncio.wait_for(_read_response(reader), 20)
                answers[str(status)] += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
                answers["reset" if isinstance(e, ConnectionResetError) else "dropped"] += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(hammer() for _ in range(connections)))
    return dict(answers)


async def _cross_origin(port: int, seconds: float, connections: int = 8) -> dict:
    """What a web page can send without a CORS preflight, and the DNS-rebinding request."""
    answers: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    body = json.dumps(ROW).encode()
    page = [(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://attacker.example\r\n"
             f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            for kind in ("text/plain", "application/x-www-form-urlencoded")]  # fmt: skip
    page.append((f"POST /predict HTTP/1.1\r\nHost: attacker.example:{port}\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body)  # fmt: skip

    async def browse(i: int) -> None:
        while time.perf_counter() < stop:
            try:
                reader, writer = await _open(port)
                writer.write(page[i % len(page)])
                status, _ = await asyncio.wait_for(_read_response(reader), 20)
                answers[str(status)] += 1
                writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
                answers["reset" if isinstance(e, ConnectionResetError) else "dropped"] += 1
            i += 1

    await asyncio.gather(*(browse(i) for i in range(connections)))
    return dict(answers)


async def _mixed(port: int, seconds: float) -> dict:
    answers: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    huge = _request(json.dumps([ROW] * 10_000).encode())
    bulk = _request(json.dumps([{**ROW, "age": str(20 + i % 50)} for i in range(1000)]).encode())

    async def one_shot(data: bytes) -> None:
        try:
            reader, writer = await _open(port)
            writer.write(data)
            status, _ = await asyncio.wait_for(_read_response(reader), 20)
            answers[str(status)] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
            answers["reset" if isinstance(e, ConnectionResetError) else "dropped"] += 1

    async def big() -> None:
        # the server answers 413 on the headers and never reads the body: sending its first 64 KB
        # costs the server what the whole body would (a socket buffer), without burning this
        # machine's CPU on megabytes nobody reads
        while time.perf_counter() < stop:
            await one_shot(huge[: huge.index(b"\r\n\r\n") + 4 + 65536])

    async def garbage() -> None:
        items = _garbage()
        i = 0
        while time.perf_counter() < stop:
            await one_shot(items[i % len(items)])
            i += 1

    async def in_limits() -> None:
        writer = None
        while time.perf_counter() < stop:
            try:
                if writer is None:
                    reader, writer = await _open(port)
                writer.write(bulk)
                status, _ = await asyncio.wait_for(_read_response(reader), 30)
                answers[f"{status} (1,000-row request)"] += 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                answers["reset (1,000-row request)"] += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    async def slowloris() -> None:
        try:
            reader, writer = await _open(port)
            writer.write(b"POST /predict HTTP/1.1\r\nX-Slow: ")
            while time.perf_counter() < stop:
                await asyncio.sleep(1.0)
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(b"a")
                await writer.drain()
            if not reader.at_eof():
                writer.close()
        except (OSError, ConnectionError):
            pass

    only = os.environ.get("HOSTILE_ONLY", "big,garbage,bulk,slow").split(",")  # to look at one behaviour alone
    tasks = [t for name, t in (("big", big), ("garbage", garbage), ("bulk", in_limits)) if name in only]
    await asyncio.gather(*(t() for t in tasks), *(slowloris() for _ in range(200 if "slow" in only else 0)))
    return dict(answers)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ATTACKS = ("mixed", "flood", "metrics", "cross-origin")


def _measured(server_pid: int, args: argparse.Namespace) -> dict:
    """One measurement of the well-behaved clients, with the server's CPU time per answered request."""
    cpu = _cpu_seconds(server_pid)
    result = asyncio.run(_well_behaved(args.port, args.connections, args.seconds, args.new_connection_clients))
    spent = _cpu_seconds(server_pid) - cpu
    answered = sum(r["requests"] for r in result.values())
    return {**result, "server_cpu_ms_per_request": 1000 * spent / max(answered, 1)}


def _start_attacker(port: int, seconds: float, kind: str) -> subprocess.Popen:
    """The hostile client in its own process (no fedready import: it starts in milliseconds)."""
    proc = subprocess.Popen([sys.executable, __file__, "--attack", str(port), "--kind", kind, "--seconds",
                             str(seconds)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the hostile client did not start")
    return proc


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None  # None: no request answered at all


def _summary(rs: list[dict]) -> dict:
    """Medians over repetitions, per group of well-behaved clients."""
    out: dict = {"server_cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in rs), 3)}
    for kind in ("keepalive", "new_connection"):
        if kind not in rs[0]:
            continue
        g = [r[kind] for r in rs]
        out[kind] = {"requests_per_s": round(statistics.median(x["requests_per_s"] for x in g), 1),
                     "p50_ms": _median([x["p50_ms"] for x in g]), "p99_ms": _median([x["p99_ms"] for x in g]),
                     "requests": sum(x["requests"] for x in g), "lost": sum(x["lost"] for x in g)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--new-connection-clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--port", type=int, default=18951)
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of: {', '.join(ATTACKS)}")
    ap.add_argument("--attack", type=int, default=None, help=argparse.SUPPRESS)  # internal: be the hostile client
    ap.add_argument("--kind", default="mixed", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack is not None:
        print("ready", flush=True)
        print(json.dumps(asyncio.run(_hostile(args.attack, args.seconds, args.kind))), flush=True)
        return
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise SystemExit(f"unknown attack(s) {unknown}; expected some of: {', '.join(ATTACKS)}")

    from serve_throughput import demo_device, start_server  # imports fedready: not in the attacker's process

    tmp = Path(tempfile.mkdtemp(prefix="fr-hostile-"))
    proc = None
    try:
        proc = start_server(demo_device(tmp), args.port)  # default limits
        asyncio.run(_well_behaved(args.port, args.connections, 1.0, args.new_connection_clients))  # warm-up
        runs: dict[str, list[dict]] = {"baseline": [], **{a: [] for a in attacks}}
        hostile: dict[str, Counter[str]] = {a: Counter() for a in attacks}
        attacker_cpu = dict.fromkeys(attacks, 0.0)
        for _ in range(args.repeat):
            for attack in attacks:  # baseline, attack, baseline, attack, ...: load from others hits both alike
                runs["baseline"].append(_measured(proc.pid, args))
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                attacker = _start_attacker(args.port, args.seconds + 1.5, attack)
                time.sleep(1.0)  # the attack is under way (sockets open) before the measurement starts
                runs[attack].append(_measured(proc.pid, args))
                out, _ = attacker.communicate(timeout=180)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                attacker_cpu[attack] += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                hostile[attack].update(json.loads(out.strip().splitlines()[-1]))
                time.sleep(0.5)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health", timeout=10).read())
        base = _summary(runs["baseline"])
        result: dict = {"connections": args.connections, "new_connection_clients": args.new_connection_clients,
                        "seconds": args.seconds, "repeat": args.repeat, "baseline": base, "attacks": {}}  # fmt: skip
        for attack in attacks:
            hit = _summary(runs[attack])
            ratios = {k: round(hit[k]["requests_per_s"] / base[k]["requests_per_s"], 3)
                      for k in ("keepalive", "new_connection") if k in hit}  # fmt: skip
            result["attacks"][attack] = {
                **hit, "ratio": ratios, "min_ratio": min(ratios.values()),
                "lost_well_behaved": sum(hit[k]["lost"] for k in ratios),
                "hostile_answers": dict(sorted(hostile[attack].items())),
                "attacker_cpu_share": round(attacker_cpu[attack] / (args.repeat * (args.seconds + 1.5)), 2),
            }  # fmt: skip
        result["lost_well_behaved"] = sum(base[k]["lost"] for k in ("keepalive", "new_connection") if k in base) + sum(
            a["lost_well_behaved"] for a in result["attacks"].values())
        result["server_health"] = health
        print(json.dumps(result, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
