"""Shared registry fixtures: operator keys, a run folder, and one signed artifact per session.

``fake_run`` writes a run folder without Ray (a freshly initialised model, a real config and
ledger layout) so unit tests stay fast; ``sim_run`` is a real 3-round simulation, used only by
the slow end-to-end tests (parity with the torch model, ``fedready reproduce``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SMALL = ["--clients", "4", "--partitioner", "iid", "--local-steps", "2", "--batch-size", "256", "--lr", "1.0"]


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """Two operator key pairs: ``operator`` signs, ``other`` is an attacker's key."""
    from fedready.registry import generate_keys

    base = tmp_path_factory.mktemp("keys")
    return {name: generate_keys(base, name=name) for name in ("operator", "other")}


def write_fake_run(run: Path, *, seed: int = 0) -> Path:
    """A run folder as ``fedready simulate`` leaves it, with an untrained model (no Ray)."""
    from fedready.registry._demo import write_demo_run

    return write_demo_run(run, seed=seed)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    return write_fake_run(tmp_path_factory.mktemp("runs") / "fake")


@pytest.fixture(scope="session")
def artifact(fake_run, keys, tmp_path_factory):
    """``fake_run`` packaged as version 1.0.0 and signed by the operator key (treat as read-only)."""
    from fedready.registry import package_run

    path, _ = package_run(fake_run, key=keys["operator"][0], version="1.0.0", out=tmp_path_factory.mktemp("art"))
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``fedready ARGS`` in a subprocess with a private Ray temp dir, cleaned up afterwards."""
    tmp = tempfile.mkdtemp(prefix="frr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp}
    try:
        return subprocess.run([sys.executable, "-m", "fedready.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=env)  # fmt: skip
    finally:
        subprocess.run(["pkill", "-9", "-f", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory):
    """A real 3-round private simulation (30 to 50 s on 2 cores)."""
    out = tmp_path_factory.mktemp("simruns")
    proc = run_cli("simulate", *SMALL, "--rounds", "3", "--out", out, "--name", "sim", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "sim"


@pytest.fixture(scope="session")
def artifact_v2(fake_run, keys, tmp_path_factory):
    """A second model (other weights) whose evaluation passed its gates, signed by the operator."""
    run = tmp_path_factory.mktemp("runs2") / "fake2"
    write_fake_run(run, seed=1)
    (run / "evaluation.json").write_text(json.dumps({"passed": True}))
    (run / "thresholds.json").write_text(json.dumps({"attribute": "sex", "thresholds": {"Female": 0.3, "Male": 0.6},
                                                     "default": 0.5}))  # fmt: skip
    from fedready.registry import package_run

    path, _ = package_run(run, key=keys["operator"][0], version="2.0.0", out=tmp_path_factory.mktemp("art2"))
    return path


@pytest.fixture(scope="session")
def artifact_evil(keys, tmp_path_factory):
    """Version 2.0.0 with other weights, signed by the attacker's key."""
    from fedready.registry import package_run

    run = write_fake_run(tmp_path_factory.mktemp("runs3") / "evil", seed=2)
    path, _ = package_run(run, key=keys["other"][0], version="2.0.0", out=tmp_path_factory.mktemp("art3"))
    return path


class StaticServer:
    """A real HTTP server on 127.0.0.1 serving one folder, in a thread; ``stop()`` ends it."""

    def __init__(self, folder: Path) -> None:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output readable
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fleet(tmp_path, artifact, artifact_v2, keys):
    """A registry with 1.0.0 on stable (2.0.0 published), served over HTTP, one device running 1.0.0."""
    from fedready.registry import EdgeAgent, Registry

    reg = Registry.init(tmp_path / "registry")
    reg.publish(artifact, public_key=keys["operator"][1])
    reg.publish(artifact_v2, public_key=keys["operator"][1])
    reg.promote("1.0.0", channel="stable", approver="alice", force=True, reason="baseline without evaluation")
    server = StaticServer(reg.repo)
    device = EdgeAgent(tmp_path / "device")
    device.update(repo=server.url, channel="stable", device_id="device-0",
                  root=reg.metadata_dir / "1.root.json", public_key=keys["operator"][1])  # fmt: skip
    assert device.state()["active"] == "1.0.0"
    yield reg, server, device
    server.stop()


@pytest.fixture
def serve(device):
    """Start ``edge serve`` (in a thread) on the test's ``device`` with the given options; stopped afterwards."""
    from fedready.registry import EdgeServer, ServeConfig

    servers = []

    def start(**kw):
        server = EdgeServer(device.home, ServeConfig(port=0, **kw))
        server.start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
