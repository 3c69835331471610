"""Run only the code the organisation installed: a guard in front of every ClientApp a SuperNode starts.

``flwr run`` ships the coordinator's project folder as a Flower App Bundle (FAB). A stock
SuperNode unpacks it and puts it first on ``sys.path``, so a bundle holding its own
``fedready/__init__.py`` would run the coordinator's code beside the organisation's CSV, and
local privacy limits and contracts would be only as trustworthy as the coordinator.

``fedready client`` therefore starts the SuperNode with this guard in place of Flower's
``flwr-clientapp`` process (an executable of that name on the SuperNode's ``PATH``, see
:func:`guard_environment`). For every task the guard, *before any of the bundle's code runs*:

1. reads the bundle without installing or importing anything from it;
2. refuses it unless its ClientApp component is ``fedready.client.app:app`` and every code
   file it carries is byte-identical to the organisation's installed fedready (the bundle
   fedready builds carries no code at all: ``fab-include`` in pyproject.toml);
3. writes ``bundle-accepted`` or ``bundle-refused`` (with the offending file and both
   digests) to the client's hash-chained audit log;
4. runs the *installed* ``fedready.client.app:app``, never the bundle's copy.

Why not Flower's ``--trusted-entities``: in Flower 1.42 it verifies only bundles whose
signatures come from Flower Hub (``valid_license``); a bundle submitted to a self-hosted
SuperLink is refused outright, so it cannot protect a private federation.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

__all__ = ["CLIENT_COMPONENT", "BundleRefused", "BundleReport", "guard_environment", "main", "verify_bundle"]

CLIENT_COMPONENT = "fedready.client.app:app"
AUDIT_ENV = "FEDREADY_GUARD_AUDIT"
# What a bundle may carry besides identical code: Flower's own metadata and documentation.
_METADATA = {"pyproject.toml", ".info/CONTENT"}
_DOC_SUFFIXES = (".md",)
# top-level folders of the repository -> installed subpackages (pyproject.toml package-dir)
_SUBPACKAGES = ("server", "client", "privacy", "simulations", "evaluation", "compression", "registry", "deploy",
                "monitoring")  # fmt: skip


class BundleRefused(RuntimeError):
    """A bundle carries code that differs from the installed fedready, or names another ClientApp."""


@dataclass(frozen=True)
class BundleReport:
    """The verdict on one bundle: ok, or the reason, the file and the two digests."""

    ok: bool
    fab_sha256: str
    reason: str = ""
    path: str = ""
    bundle_digest: str = ""
    installed_digest: str = ""
    files: int = 0


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def installed_path(bundle_path: str) -> Path | None:
    """Where the installed fedready keeps the file a bundle names (None if it has no such module)."""
    parts = Path(bundle_path).parts
    if not parts:
        return None
    head = parts[0]
    if head == "fedready":
        spec = find_spec("fedready")
        base, rest = (Path(next(iter(spec.submodule_search_locations))), parts[1:]) if spec else (None, ())
    elif head in _SUBPACKAGES:
        spec = find_spec(f"fedready.{head}")
        base, rest = (Path(next(iter(spec.submodule_search_locations))), parts[1:]) if spec else (None, ())
    else:
        return None
    return base.joinpath(*rest) if base is not None else None


def verify_bundle(content: bytes) -> BundleReport:
    """Check a FAB against the installed fedready (see the module docstring for the rules)."""
    fab = _sha256(content)
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as e:
        return BundleReport(False, fab, f"not a zip archive ({e})")
    names = [n for n in archive.namelist() if not n.endswith("/")]
    try:
        project = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        component = project["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (KeyError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return BundleReport(False, fab, f"no readable [tool.flwr.app.components] clientapp ({e})", "pyproject.toml")
    if component != CLIENT_COMPONENT:
        return BundleReport(False, fab, f"the bundle names ClientApp '{component}', not '{CLIENT_COMPONENT}'",
                            "pyproject.toml")  # fmt: skip
    for name in sorted(names):
        if name in _METADATA or name.endswith(_DOC_SUFFIXES):
            continue
        data = archive.read(name)
        target = installed_path(name) if name.endswith(".py") else None
        if target is None or not target.is_file():
            return BundleReport(False, fab, "the bundle carries a file the installed fedready does not have",
                                name, _sha256(data))  # fmt: skip
        mine = target.read_bytes()
        if mine != data:
            return BundleReport(False, fab, "the bundle's code differs from the installed fedready", name,
                                _sha256(data), _sha256(mine))  # fmt: skip
    return BundleReport(True, fab, files=len(names))


def _audit(report: BundleReport) -> None:
    path = os.environ.get(AUDIT_ENV)
    if not path:
        return
    from fedready.server.audit import AuditLog

    if report.ok:
        AuditLog(Path(path)).append("bundle-accepted", fab_sha256=report.fab_sha256, files=report.files)
    else:
        AuditLog(Path(path)).append("bundle-refused", fab_sha256=report.fab_sha256, reason=report.reason,
                                    path=report.path, bundle_digest=report.bundle_digest,
                                    installed_digest=report.installed_digest)  # fmt: skip


def _guarded_install(fab_content: bytes, *args, **kwargs) -> Path:
    """Replaces Flower's ``install_from_fab`` in the guard: verify, install nothing."""
    report = verify_bundle(fab_content)
    _audit(report)
    if not report.ok:
        raise BundleRefused(f"bundle refused: {report.reason}: {report.path} (bundle {report.bundle_digest}, "
                            f"installed {report.installed_digest or 'none'})")  # fmt: skip
    return Path(".")


def _installed_loader(*args, **kwargs):
    """Replaces Flower's app loader in the guard: always the installed ClientApp, never the bundle's."""

    def _load(fab_id: str, fab_version: str, fab_hash: str):
        from fedready.client.app import app

        return app

    return _load


def main() -> None:
    """``flwr-clientapp`` with the guard: same arguments, same protocol, the installed ClientApp only."""
    import importlib

    # the modules themselves (flwr.supernode.cli re-exports a function under the module's name)
    cli = importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    runtime.install_from_fab = _guarded_install
    runtime.get_load_client_app_fn = _installed_loader
    cli.flwr_clientapp()


def guard_environment(folder: Path, *, audit_log: Path, python: str | None = None) -> dict[str, str]:
    """Environment entries that make a SuperNode start the guard instead of ``flwr-clientapp``.

    Writes ``folder/flwr-clientapp`` (0700), a two-line script running :func:`main` with this
    Python; returns ``PATH`` with ``folder`` first and the audit log path for the guard.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-clientapp"
    shim.write_text(f'#!/bin/sh\nexec "{python or sys.executable}" -m fedready.deploy.guard "$@"\n',
                    encoding="utf-8")  # fmt: skip
    shim.chmod(stat.S_IRWXU)
    path = f"{folder}{os.pathsep}{Path(python or sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {"PATH": path, AUDIT_ENV: str(Path(audit_log).resolve())}


if __name__ == "__main__":
    main()
