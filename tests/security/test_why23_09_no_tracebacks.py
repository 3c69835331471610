"""Issue 23, Why 9: tracebacks instead of one line; and a fuzz test over every file a command reads.

The red team's list: ``Content-Length: ²`` (passes ``isdigit()``, then ``int()`` raised and the connection
dropped), ``verify`` with an RSA or Ed25519 key (``'curve'``), ``edge serve --port`` on a port in use,
``device.json`` holding ``[1]`` or ``"active": 5``, a summaries line ``[1]``, a corrupt ``targets.json``
for ``registry status``, ``registry init`` and ``keys generate --out`` on a file. Each is one line now.

The fuzz test corrupts each file a command reads (device state, monitoring summaries, TUF metadata,
channel documents, keys, enrolled devices, ``limits.toml``) in several ways, runs every command that
reads it, and asserts exactly one ``error:`` line on stderr, exit code 1 or 2, and no exception escaping.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.registry import EdgeAgent, Registry
from tests.registry.conftest import StaticServer
from tests.registry.test_edge_attacks import ROW
from tests.security.conftest import assert_one_line_error, cli, write_fake_run
from tests.security.test_why05_hostile_http_clients import _post, _raw


def run(*args: object) -> tuple[int, str, BaseException | None]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stderr, res.exception


def _other_keys() -> dict[str, bytes]:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    priv = (ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub = (ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    return {"rsa.pub": rsa_key.public_key().public_bytes(*pub), "ed25519.pub": ed.public_key().public_bytes(*pub),
            "rsa.key": rsa_key.private_bytes(*priv), "ed25519.key": ed.private_bytes(*priv)}  # fmt: skip


# -- the red team's list ------------------------------------------------------------------------------
def test_why23_09_content_length_with_a_unicode_digit_is_a_400_not_a_dropped_connection(device, serve):
    server = serve()
    request = _post(b"{}").replace(b"Content-Length: 2", "Content-Length: ²".encode())
    status, _, body = _raw(server, request)
    assert status == 400 and "Content-Length must be a non-negative integer" in json.loads(body)["error"]
    assert _raw(server, _post(json.dumps(ROW).encode()))[0] == 200


@pytest.mark.parametrize("kind", ["rsa.pub", "ed25519.pub"])
def test_why23_09_verify_with_an_rsa_or_ed25519_key_is_one_line(artifact, tmp_path, kind):
    key = tmp_path / kind
    key.write_bytes(_other_keys()[kind])
    code, out = cli("verify", artifact, "--public-key", key)
    assert_one_line_error(code, out, expect="artifacts are signed with ECDSA (P-256)")
    assert code == 2


def test_why23_09_edge_serve_on_a_port_in_use_is_one_line(device):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        code, out = cli("edge", "serve", "--home", device.home, "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert_one_line_error(code, out, expect="is in use by another program; pick another --port")


@pytest.mark.parametrize("state", ["[1]", '{"active": 5}', '{"active": "1.0.0\\n"}', '{"digests": [1]}'])
@pytest.mark.parametrize("command", ["status", "rollback", "predict"])
def test_why23_09_edge_commands_on_a_malformed_device_json_are_one_line(device, tmp_path, state, command):
    (device.home / "device.json").write_text(state)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    code, out = cli("edge", command, "--home", device.home, *([rows] if command == "predict" else []))
    assert_one_line_error(code, out, expect="device.json")
    assert code == 1


def test_why23_09_monitor_on_a_summaries_line_that_is_a_list_is_one_line(device):
    (device.home / "monitoring").mkdir()
    (device.home / "monitoring" / "summaries.jsonl").write_text("[1]\n")
    code, out = cli("monitor", "--home", device.home)
    assert_one_line_error(code, out, expect="line 1 from the end is not a summary")


def test_why23_09_registry_status_on_a_corrupt_targets_json_is_one_line(tmp_path):
    reg = Registry.init(tmp_path / "registry")
    (reg.metadata_dir / "targets.json").write_text('{"signed": {"_type": "targets"')
    code, out = cli("registry", "status", reg.path)
    assert_one_line_error(code, out, expect="targets.json is not valid TUF metadata")


def test_why23_09_registry_init_and_keys_generate_on_a_file_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, out = cli("registry", "init", afile)
    assert_one_line_error(code, out, expect="is a file; pass a new or empty folder")
    code, out = cli("keys", "generate", "--out", afile)
    assert_one_line_error(code, out, expect="is a file; pass a folder")


# -- the fuzz test ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory, artifact, artifact_v2, keys):
    """Everything the commands read: operator keys, a run, artifacts, a served registry, a device, limits."""
    base = tmp_path_factory.mktemp("fuzz-world")
    (base / "keys").mkdir()
    for src in keys["operator"]:
        shutil.copy(src, base / "keys" / Path(src).name.replace("operator", "signing"))
    shutil.copytree(artifact, base / "artifacts" / "1.0.0")
    shutil.copytree(artifact_v2, base / "artifacts" / "2.0.0")
    write_fake_run(base / "run", seed=3)
    pub = base / "keys" / "signing.pub"
    reg = Registry.init(base / "registry")
    for art in (base / "artifacts" / "1.0.0", base / "artifacts" / "2.0.0"):
        reg.publish(art, public_key=pub)
    reg.promote("1.0.0", channel="stable", approver="ops", force=True, reason="baseline")
    reg.promote("2.0.0", channel="stable", approver="ops")
    server = StaticServer(reg.repo)
    device = EdgeAgent(base / "device")
    device.update(repo=server.url, channel="stable", device_id="device-0", root=reg.metadata_dir / "1.root.json",
                  public_key=pub)  # fmt: skip
    device.install(base / "artifacts" / "1.0.0")  # active 1.0.0, previous 2.0.0
    reg.enrol(**device.enrolment(), approver="ops")
    rows = base / "rows.jsonl"
    rows.write_text("".join(json.dumps({**ROW, "age": str(20 + i)}) + "\n" for i in range(30)))
    assert run("edge", "predict", "--home", device.home, rows)[0] == 0  # summaries.jsonl
    (base / "alerts.jsonl").write_text(json.dumps({"channel": "stable", "version": "2.0.0"}) + "\n")
    (base / "limits.toml").write_text("max_epsilon = 1.0\nmax_delta = 1e-5\n")
    for name, data in _other_keys().items():
        (base / "other" / name).parent.mkdir(exist_ok=True)
        (base / "other" / name).write_bytes(data)
    yield base, server.url
    server.stop()


def commands(b: Path, url: str) -> dict[str, list[object]]:
    """Every command under test, as arguments, for a copy ``b`` of the world."""
    d, r, k = b / "device", b / "registry", b / "keys"
    schema = Path(__file__).parents[2] / "fedready" / "datasets" / "adult" / "schema.toml"
    return {
        "edge status": ["edge", "status", "--home", d],
        "edge rollback": ["edge", "rollback", "--home", d],
        "edge predict": ["edge", "predict", "--home", d, b / "rows.jsonl"],
        "edge enrol": ["edge", "enrol", "--home", d],
        "edge serve": ["edge", "serve", "--home", d, "--port", "0"],  # only where the corruption must stop it
        "edge update": ["edge", "update", "--home", d, "--repo", url, "--device-id", "device-0", "--timeout", "5"],
        "edge install": ["edge", "install", b / "artifacts" / "2.0.0", "--home", d],
        "monitor": ["monitor", "--home", d],
        "audit checkpoint (device)": ["audit", "checkpoint", d, "--out", b / "cp.json"],
        "registry status": ["registry", "status", r],
        "registry refresh": ["registry", "refresh", r],
        "registry promote": ["registry", "promote", r, "1.0.0", "--channel", "canary", "--approver", "ops", "--force",
                             "--reason", "fuzz"],
        "registry rollback": ["registry", "rollback", r, "--channel", "stable", "--approver", "ops"],
        "registry publish": ["registry", "publish", r, b / "artifacts" / "2.0.0", "--public-key", k / "signing.pub"],
        "registry auto-rollback": ["registry", "auto-rollback", r, "--channel", "stable", "--alerts",
                                   b / "alerts.jsonl"],
        "registry enrol": ["registry", "enrol", r, "--device-id", "d2", "--public-key",
                           "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=", "--approver", "ops"],
        "registry rotate-key": ["registry", "rotate-key", r, "timestamp"],
        "audit verify": ["audit", "verify", r / "audit.jsonl"],
        "audit checkpoint (registry)": ["audit", "checkpoint", r, "--out", b / "cp.json"],
        "verify": ["verify", b / "artifacts" / "1.0.0", "--public-key", k / "signing.pub"],
        "package": ["package", b / "run", "--key", k / "signing.key", "--version", "9.9.9", "--out", b / "out"],
        "client": ["client", "--superlink", "127.0.0.1:1", "--data", b / "none.csv", "--schema", schema, "--limits",
                   b / "limits.toml", "--key", k / "signing.key", "--root-cert", b / "none.crt"],
    }  # fmt: skip


META = "registry/repository/metadata"
READERS = {  # file (relative to the world) -> the commands that read it
    "device/device.json": ["edge status", "edge rollback", "edge predict", "edge enrol", "edge serve", "edge update",
                           "edge install", "monitor"],
    "device/models/1.0.0/schema.json": ["edge predict", "edge serve"],
    "device/models/1.0.0/provenance.json": ["edge status", "edge predict", "edge serve"],
    "device/monitoring/summaries.jsonl": ["monitor"],
    "device/device.key": ["edge enrol"],
    "device/trust/signing.pub": ["edge rollback", "edge install"],
    "device/trust/root.json": ["audit checkpoint (device)"],
    "device/tuf/root.json": ["edge update", "audit checkpoint (device)"],
    "device/tuf/timestamp.json": ["audit checkpoint (device)"],  # edge update fetches a new one (TUF 5.4)
    f"{META}/root.json": ["registry status", "registry promote", "registry rollback", "registry auto-rollback",
                          "registry rotate-key", "audit verify", "audit checkpoint (registry)"],
    f"{META}/1.root.json": ["audit verify", "audit checkpoint (registry)"],
    f"{META}/targets.json": ["registry status", "registry promote", "registry rollback", "registry publish",
                             "audit verify"],
    f"{META}/snapshot.json": ["registry status", "registry refresh", "registry promote", "audit verify"],
    f"{META}/timestamp.json": ["registry status", "registry refresh", "registry enrol", "audit verify",
                               "audit checkpoint (registry)"],
    "registry/repository/targets/channels/stable.json": ["registry status", "registry promote", "registry rollback",
                                                          "registry auto-rollback"],
    "registry/devices.json": ["registry status", "registry auto-rollback", "registry enrol"],
    "registry/audit.jsonl": ["audit verify"],
    "registry/keys/timestamp.key": ["registry refresh", "registry enrol", "registry promote"],
    "registry/keys/snapshot.key": ["registry promote"],
    "registry/keys/targets.key": ["registry promote", "registry rollback"],
    "registry/keys/root.key": ["registry rotate-key"],
    "registry/keys/audit.key": ["registry status", "registry refresh", "registry promote"],
    "keys/signing.pub": ["verify", "registry publish"],
    "keys/signing.key": ["package"],
    "limits.toml": ["client"],
}  # fmt: skip
WRONG_TYPES = {  # a well-formed file of the wrong shape, per kind
    "device.json": '{"active": 5}',
    "summaries.jsonl": '{"version": "1.0.0", "counts": {"features": 5}}\n',
    "schema.json": '{"columns": 5}',
    "provenance.json": "[1]",
    "stable.json": '{"channel": "stable", "version": 5, "files": [1], "previous": 7}',
    "devices.json": '{"d": 5}',
    "audit.jsonl": "[1]\n",
    "limits.toml": 'max_epsilon = "lots"\nmax_delta = 1e-5\n',
}
TUF = '{"signed": {"_type": "%s", "version": "one", "spec_version": "1.0.31"}, "signatures": []}'


def _corruptions(rel: str, world: Path) -> dict[str, bytes]:
    original = (world / rel).read_bytes()
    name = Path(rel).name
    out = {"empty": b"", "binary": b"\xff\xfe\x00\x80garbage\xc3" * 8, "truncated": original[: len(original) // 2]}
    if name.endswith((".key", ".pub")):
        kind = "ed25519" if name in ("audit.key", "device.key") else "rsa"  # a key of another type
        other = "ed25519" if kind == "rsa" else "rsa"
        out["other key type"] = (world / "other" / f"{other}.{'pub' if name.endswith('.pub') else 'key'}").read_bytes()
        return out
    if name.endswith(".toml"):
        return {**out, "not TOML": b"[1]\n= =", "wrong types": WRONG_TYPES[name].encode()}
    if "metadata" in rel or "/tuf/" in rel or "trust/root" in rel:
        role = name.split(".")[-2]
        return {**out, "JSON list": b"[1]", "wrong types": (TUF % role).encode()}
    return {**out, "JSON list": b"[1]", "wrong types": WRONG_TYPES.get(name, "[1]").encode()}


def _cases() -> list[tuple[str, str]]:
    return [(rel, cmd) for rel, cmds in READERS.items() for cmd in cmds]


@pytest.mark.parametrize(("rel", "command"), _cases(), ids=[f"{c}<-{r}" for r, c in _cases()])
def test_why23_09_every_corrupt_file_a_command_reads_is_one_line(world, tmp_path, rel, command):
    base, url = world
    failures = []
    for name, data in _corruptions(rel, base).items():
        b = tmp_path / name.replace(" ", "-")
        shutil.copytree(base, b, symlinks=True)
        (b / rel).write_bytes(data)
        code, stderr, exc = run(*commands(b, url)[command])
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        lines = stderr.strip().splitlines()
        findings = command == "audit verify" and all(x.startswith(("FOUND ", "error:")) for x in lines)
        ok = (code in (1, 2) and isinstance(exc, SystemExit) and len(errors) == 1 and "Traceback" not in stderr
              and (len(lines) == 1 or findings))  # fmt: skip
        if not ok:
            failures.append(f"{name}: exit {code}, {type(exc).__name__}: {exc!r:.300}; stderr {stderr[-400:]!r}")
    assert not failures, "\n".join(failures)
