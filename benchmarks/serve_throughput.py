"""``edge serve`` requests per second with micro-batching vs batch size 1, same load, one run.

    python benchmarks/serve_throughput.py [--connections 64] [--seconds 8] [--max-batch 64] [--max-wait-ms 2]

Installs a signed demo artifact on a temporary device, then for each mode starts
``fedready edge serve`` in its own process and drives it from this process with
``--connections`` concurrent keep-alive connections, each sending one raw Adult row per
request, back to back. Prints JSON with requests/s for both modes and their ratio
(target: micro-batching >= 3x batch size 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fedready.registry import EdgeAgent, generate_keys, package_run
from fedready.registry._demo import write_demo_run

ROW = {"age": "39", "workclass": "State-gov", "fnlwgt": "77516", "education": "Bachelors", "education-num": "13",
       "marital-status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family",
       "race": "White", "sex": "Male", "capital-gain": "2174", "capital-loss": "0", "hours-per-week": "40",
       "native-country": "United-States"}  # fmt: skip


async def _load(port: int, connections: int, seconds: float) -> tuple[int, int]:
    body = json.dumps(ROW).encode()
    request = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                errors += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return done, errors


def demo_device(tmp: Path) -> Path:
    """A device folder running a signed demo artifact (an untrained Adult MLP)."""
    priv, pub = generate_keys(tmp / "keys")
    art, _ = package_run(write_demo_run(tmp / "run"), key=priv, version="1.0.0", out=tmp / "artifacts")
    EdgeAgent(tmp / "device").install(art, public_key=pub)
    return tmp / "device"


def start_server(home: Path, port: int, *options: str) -> subprocess.Popen:
    """``fedready edge serve`` in its own process, once it answers ``GET /health``."""
    proc = subprocess.Popen([sys.executable, "-m", "fedready.cli", "edge", "serve", "--home", str(home), "--port",
                             str(port), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    return proc


def _run_mode(home: Path, port: int, *, max_batch: int, max_wait_ms: float, connections: int, seconds: float) -> dict:
    proc = start_server(home, port, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms))
    try:
        asyncio.run(_load(port, connections, 1.0))  # warm-up
        t = time.perf_counter()
        done, errors = asyncio.run(_load(port, connections, seconds))
        elapsed = time.perf_counter() - t
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())
    finally:
        proc.terminate()
        proc.wait(10)
    return {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "requests": done, "errors": errors,
            "requests_per_s": round(done / elapsed, 1),
            "mean_rows_per_model_call": round(health["rows"] / max(health["model_calls"], 1), 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--port", type=int, default=18931)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fr-serve-"))
    try:
        demo_device(tmp)
        common = {"connections": args.connections, "seconds": args.seconds}
        single = _run_mode(tmp / "device", args.port, max_batch=1, max_wait_ms=0, **common)
        batched = _run_mode(tmp / "device", args.port + 1, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                            **common)  # fmt: skip
        ratio = round(batched["requests_per_s"] / single["requests_per_s"], 2)
        print(json.dumps({"connections": args.connections, "seconds": args.seconds, "batch_size_1": single,
                          "micro_batching": batched, "ratio": ratio}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
