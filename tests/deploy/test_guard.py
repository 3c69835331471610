"""The bundle guard: only the organisation's installed code runs, whatever bundle arrives."""

from __future__ import annotations

import importlib
import io
import zipfile
from pathlib import Path

import pytest

from fedready.deploy import guard

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def _fab(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_the_bundle_fedready_builds_carries_no_code_and_is_accepted():
    report = guard.verify_bundle(_fab({"pyproject.toml": PYPROJECT.encode(), "README.md": b"x",
                                       ".info/CONTENT": b""}))  # fmt: skip
    assert report.ok and report.files == 3


def test_identical_code_is_accepted_edited_code_is_refused_with_both_digests():
    installed = guard.installed_path("fedready/__init__.py")
    assert installed is not None and installed.is_file()
    same = _fab({"pyproject.toml": PYPROJECT.encode(), "fedready/__init__.py": installed.read_bytes()})
    assert guard.verify_bundle(same).ok
    edited = _fab(
        {
            "pyproject.toml": PYPROJECT.encode(),
            "fedready/__init__.py": installed.read_bytes() + b"\nimport os  # coordinator's code\n",
        }
    )
    report = guard.verify_bundle(edited)
    assert not report.ok and report.path == "fedready/__init__.py"
    assert report.bundle_digest != report.installed_digest and report.installed_digest.startswith("sha256:")
    mapped = guard.installed_path("client/app.py")  # a top-level folder maps to its installed subpackage
    assert mapped is not None and mapped.read_bytes() == (ROOT / "client" / "app.py").read_bytes()


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"evil.py": b"print(1)"}, "does not have"),  # code the installed fedready does not have
        ({"fedready/x.so": b"\x7fELF"}, "does not have"),  # any non-document file
        ({}, "not 'fedready.client.app:app'"),  # another ClientApp
    ],
)
def test_anything_else_is_refused(files, reason):
    project = PYPROJECT if files else PYPROJECT.replace("fedready.client.app:app", "evil.app:app")
    report = guard.verify_bundle(_fab({"pyproject.toml": project.encode(), **files}))
    assert not report.ok and reason in report.reason


def test_main_replaces_flowers_install_and_loader_before_anything_runs(monkeypatch):
    cli = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    calls = []
    monkeypatch.setattr(cli, "flwr_clientapp", lambda: calls.append("ran"))
    monkeypatch.setattr(runtime, "install_from_fab", runtime.install_from_fab)
    monkeypatch.setattr(runtime, "get_load_client_app_fn", runtime.get_load_client_app_fn)
    guard.main()
    assert calls == ["ran"]
    assert runtime.install_from_fab is guard._guarded_install
    from fedready.client.app import app

    assert runtime.get_load_client_app_fn()("any", "1.0", "hash") is app  # the installed ClientApp, always
    with pytest.raises(guard.BundleRefused, match="bundle refused"):
        guard._guarded_install(_fab({"pyproject.toml": PYPROJECT.encode(), "fedready/__init__.py": b"evil"}))


def test_the_guard_environment_puts_its_launcher_first(tmp_path):
    env = guard.guard_environment(tmp_path / "g", audit_log=tmp_path / "audit.jsonl")
    shim = tmp_path / "g" / "flwr-clientapp"
    assert env["PATH"].split(":")[0] == str(tmp_path / "g") and shim.stat().st_mode & 0o700 == 0o700
    assert "-m fedready.deploy.guard" in shim.read_text() and env[guard.AUDIT_ENV].endswith("audit.jsonl")
