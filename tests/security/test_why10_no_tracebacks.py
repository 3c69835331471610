"""Why 10: tracebacks instead of one line (truncated downloads, hostile input files, a stalled registry), and
staging folders left behind by a killed update."""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.security.conftest import assert_one_line_error, cli


class _Truncating(SimpleHTTPRequestHandler):
    """Serves the registry, but cuts every model file short: the declared length, half the bytes."""

    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        if self.path.endswith(".onnx"):
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            outputfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def truncating(fleet):
    reg, _, _ = fleet
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Truncating, directory=str(reg.repo)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_truncated_download_is_one_line_and_keeps_the_model(fleet, truncating):
    reg, _, device = fleet
    reg.promote("2.0.0", channel="stable", approver="ops")
    code, out = cli("edge", "update", "--repo", truncating, "--device-id", "device-0", "--home", device.home)
    assert_one_line_error(code, out, expect="cannot fetch from")
    assert "ProtocolError" in out and "IncompleteRead" in out, out  # urllib3 raised it past python-tuf
    assert device.state()["active"] == "1.0.0"
    assert not [p for p in device.models.iterdir() if p.name.startswith(".staging")]


def test_stalled_registry_is_one_line_naming_slow_retrieval(fleet, tmp_path):
    _, _, device = fleet
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does) and never answers
    try:
        port = listener.getsockname()[1]
        code, out = cli("edge", "update", "--repo", f"http://127.0.0.1:{port}", "--device-id", "device-0", "--home",
                        device.home, "--timeout", "0.5")  # fmt: skip
    finally:
        listener.close()
    assert_one_line_error(code, out, expect="stalled (slow retrieval")
    assert device.state()["active"] == "1.0.0"


INPUTS = {
    "huge-integer.jsonl": (b'{"age": ' + b"9" * 5000 + b"}\n", "more than 4300 digits"),
    "deep-nesting.jsonl": (b'{"age": ' + b"[" * 100_000 + b"}\n", "nested too deeply"),
    "garbage.csv": (os.urandom(10 << 20), "is not UTF-8 text"),
    "one-giant-field.csv": (b"age\n" + b"7" * (10 << 20) + b"\n", "cannot be read"),
    "not-an-object.jsonl": (b'{"age": 1}\n[1, 2]\n', "line 2 is a JSON list"),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_hostile_input_file_to_edge_predict_is_one_line(device, tmp_path, name):
    data, words = INPUTS[name]
    (tmp_path / name).write_bytes(data)
    code, out = cli("edge", "predict", "--home", device.home, tmp_path / name)
    assert_one_line_error(code, out, expect=words)


def test_staging_left_by_a_killed_update_is_cleaned_on_the_next_run(device, artifact_v2, keys):
    stale = device.models / ".staging-killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half a model")
    device.install(artifact_v2)
    assert not stale.exists() and device.state()["active"] == "2.0.0"


def test_killed_packaging_leaves_no_staging_behind_on_the_next_run(fake_run, keys, tmp_path):
    from fedready.registry import package_run

    out = tmp_path / "artifacts"
    (out / ".1.0.0.staging-999999999-dead").mkdir(parents=True)  # a process that no longer exists
    package_run(fake_run, key=keys["operator"][0], version="1.0.0", out=out)
    assert sorted(p.name for p in out.iterdir()) == ["1.0.0"]
    assert json.loads((out / "1.0.0" / "provenance.json").read_text())["version"] == "1.0.0"


def test_an_internal_error_prints_no_data_value(tmp_path):
    """A bug (not a refusal) inside a command still shows no row: the traceback prints no local variables."""
    import subprocess
    import sys

    secret = "Jane-Doe-1970-04-12"  # a value of the user's data, held in the locals of every frame below
    csv = tmp_path / "people.csv"
    csv.write_text("age,name,label\n" + "".join(f"{30 + i},{secret}-{i},{'yes' if i % 2 else 'no'}\n"
                                                for i in range(20)))  # fmt: skip
    bug = (
        "import sys, fedready.schema_draft as d\n"
        "def _categorical_block(name, raw, *args):\n"
        "    rows = list(raw)\n"
        "    raise RuntimeError('an internal bug')\n"
        "d._categorical_block = _categorical_block\n"
        "from fedready.cli import main\n"
        f"sys.argv = ['fedready', 'schema', 'draft', {str(csv)!r}, '--target', 'label']\n"
        "main()\n"
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("_TYPER_STANDARD_TRACEBACK", "TYPER_STANDARD_TRACEBACK")}
    proc = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode != 0
    assert "RuntimeError: an internal bug" in proc.stderr, proc.stderr  # it did fail inside, past the top
    assert secret not in proc.stderr + proc.stdout, proc.stderr
