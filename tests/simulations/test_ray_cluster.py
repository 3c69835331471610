"""``fedready simulate --ray-address`` on an existing Ray cluster (a head started with ``ray start``).

The head runs on 127.0.0.1 with a private temp dir and is torn down by process id (its whole
process group), never with ``ray stop``, which would also stop every other Ray on the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited early ({proc.returncode})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on port {port} within {timeout} s")


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop the head: SIGTERM its process group (and any descendant that left it), then SIGKILL."""
    try:
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(1.0)  # let the head's children exit before the SIGKILL sweep


@pytest.mark.slow
def test_simulate_runs_on_an_existing_ray_cluster(tmp_path):
    port = _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="frray", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_port(port, head, timeout=40)
        out = subprocess.run(
            [str(BIN / "fedready"), "simulate", "--clients", "3", "--rounds", "2", "--ray-address",
             f"127.0.0.1:{port}", "--out", str(tmp_path), "--name", "cluster", "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["rounds_completed"] == 2
        assert (tmp_path / "cluster" / "ledger.json").exists()
    finally:
        _stop_tree(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
