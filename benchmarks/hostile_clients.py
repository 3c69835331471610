"""``edge serve`` under attack: 64 well-behaved keep-alive clients, with and without one hostile client.

    python benchmarks/hostile_clients.py [--connections 64] [--seconds 6] [--repeat 2]

Installs a signed demo artifact on a temporary device and starts ``fedready edge serve`` (default
limits) in its own process. Then, alternating, it measures the well-behaved clients alone (the
baseline) and beside a hostile client running in another process, which at the same time:

* sends 10,000-row requests back to back (over the row and body limits),
* sends the largest request the limits allow (1,000 rows) back to back on a keep-alive connection,
* holds 200 slow connections that dribble one header byte per second (slowloris),
* sends garbage: a bad request line, a bad Content-Length, a 70 KB header, a non-UTF-8 body, a
  5,000-digit integer, JSON nested 100,000 deep, a chunked body, a row with a bad value.

Each well-behaved client sends one raw Adult row per request, back to back. Prints JSON: their
requests/s, latency and the server's CPU time per request in both modes (medians over the
repetitions), the ratio (target >= 0.5), well-behaved requests lost (sent but not answered 200;
target 0), how the server answered the hostile client (status -> count; "dropped" = connection
closed without an answer) and the share of one core the attacker's own process used (it runs on
the same machine, so its CPU is taken from the server and the well-behaved clients too).
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


async def _well_behaved(port: int, connections: int, seconds: float) -> dict:
    request = _request(json.dumps(ROW).encode())
    ok = lost = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal ok, lost
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                writer.write(request)
                status, _ = await asyncio.wait_for(_read_response(reader), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                lost += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status == 200:
                ok += 1
                latencies.append(time.perf_counter() - t)
            else:
                lost += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    pick = (lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)) if latencies \
        else (lambda q: None)  # fmt: skip
    return {"requests": ok, "lost": lost, "requests_per_s": round(ok / elapsed, 1), "p50_ms": pick(0.5),
            "p99_ms": pick(0.99)}  # fmt: skip


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


async def _hostile(port: int, seconds: float) -> dict:
    answers: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    huge = _request(json.dumps([ROW] * 10_000).encode())
    bulk = _request(json.dumps([{**ROW, "age": str(20 + i % 50)} for i in range(1000)]).encode())

    async def one_shot(data: bytes) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            status, _ = await asyncio.wait_for(_read_response(reader), 20)
            answers[str(status)] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            answers["dropped"] += 1

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
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            writer.write(bulk)
            status, _ = await _read_response(reader)
            answers[f"{status} (1,000-row request)"] += 1
        writer.close()

    async def slowloris() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
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


def _measured(server_pid: int, args: argparse.Namespace) -> dict:
    """One measurement of the well-behaved clients, with the server's CPU time per answered request."""
    cpu = _cpu_seconds(server_pid)
    result = asyncio.run(_well_behaved(args.port, args.connections, args.seconds))
    spent = _cpu_seconds(server_pid) - cpu
    return {**result, "server_cpu_ms_per_request": 1000 * spent / max(result["requests"], 1)}


def _start_attacker(port: int, seconds: float) -> subprocess.Popen:
    """The hostile client in its own process (no fedready import: it starts in milliseconds)."""
    proc = subprocess.Popen([sys.executable, __file__, "--attack", str(port), "--seconds", str(seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the hostile client did not start")
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--port", type=int, default=18951)
    ap.add_argument("--attack", type=int, default=None, help=argparse.SUPPRESS)  # internal: be the hostile client
    args = ap.parse_args()
    if args.attack is not None:
        print("ready", flush=True)
        print(json.dumps(asyncio.run(_hostile(args.attack, args.seconds))), flush=True)
        return

    from serve_throughput import demo_device, start_server  # imports fedready: not in the attacker's process

    tmp = Path(tempfile.mkdtemp(prefix="fr-hostile-"))
    proc = None
    try:
        proc = start_server(demo_device(tmp), args.port)  # default limits
        asyncio.run(_well_behaved(args.port, args.connections, 1.0))  # warm-up
        runs: dict[str, list[dict]] = {"baseline": [], "attacked": []}
        hostile: Counter[str] = Counter()
        attacker_cpu = 0.0
        for _ in range(args.repeat):
            runs["baseline"].append(_measured(proc.pid, args))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            attacker = _start_attacker(args.port, args.seconds + 1.5)
            time.sleep(1.0)  # the attack is under way (slow connections open) before the measurement starts
            runs["attacked"].append(_measured(proc.pid, args))
            out, _ = attacker.communicate(timeout=120)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            attacker_cpu += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            hostile.update(json.loads(out.strip().splitlines()[-1]))
            time.sleep(0.5)
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health", timeout=10).read())

        def summary(mode: str) -> dict:
            rs = runs[mode]
            return {"requests_per_s": round(statistics.median(r["requests_per_s"] for r in rs), 1),
                    "server_cpu_ms_per_request": round(statistics.median(r["server_cpu_ms_per_request"] for r in rs),
                                                       3),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in rs if r["p50_ms"] is not None), 1),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in rs if r["p99_ms"] is not None), 1),
                    "requests": sum(r["requests"] for r in rs), "lost": sum(r["lost"] for r in rs)}  # fmt: skip

        base, hit = summary("baseline"), summary("attacked")
        ratio = round(hit["requests_per_s"] / base["requests_per_s"], 3)
        print(json.dumps({"connections": args.connections, "seconds": args.seconds, "repeat": args.repeat,
                          "baseline": base, "attacked": hit, "ratio": ratio,
                          "lost_well_behaved": base["lost"] + hit["lost"], "hostile_answers": dict(hostile),
                          "attacker_cpu_share": round(attacker_cpu / (args.repeat * (args.seconds + 1.5)), 2),
                          "server_health": health}, indent=2))  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
