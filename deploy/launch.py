"""Command lines for Flower's deployment engine: a SuperLink and the SuperNodes of organisations.

``fedready server`` and ``fedready client`` build these commands and run them in the
foreground; the integration test starts the same commands. TLS is always on (there is
no insecure mode here), SuperNode authentication is always enabled, runtime dependency
installation is always off, and a SuperNode runs every ClientApp behind
:mod:`fedready.deploy.guard` (:func:`client_environment`): a client runs only what its
operator installed, whatever bundle the coordinator sends.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from fedready import constants as K
from fedready.errors import ConfigError

__all__ = ["flwr_connection", "superlink_command", "supernode_command"]


def _tool(name: str) -> str:
    """Flower's executable beside this Python, else on PATH."""
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise ConfigError("install", f"{name} is not installed; pip install -c constraints.txt 'fedready[train]'")
    return found


def _existing(field: str, path: Path) -> str:
    if not Path(path).is_file():
        raise ConfigError(field, f"file {path} does not exist")
    return str(Path(path).resolve())


def superlink_command(*, certs: Path, database: Path, host: str = "0.0.0.0", port: int = 9093) -> list[str]:
    """``flower-superlink`` with TLS from ``certs`` (ca.crt, server.crt, server.key), node auth and a database.

    The database file keeps the SuperLink's state (registered nodes, runs), so a restart loses nothing.
    """
    certs = Path(certs)
    return [_tool("flower-superlink"),
            "--ssl-ca-certfile", _existing("certs", certs / "ca.crt"),
            "--ssl-certfile", _existing("certs", certs / "server.crt"),
            "--ssl-keyfile", _existing("certs", certs / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(Path(database).resolve()), "--host", host, "--port", str(port)]  # fmt: skip


def supernode_command(
    *, superlink: str, root_cert: Path, key: Path, data: Path, schema: Path, limits: Path, client_id: int,
    port: int = 9094, max_wait: float | None = None, wire_log: Path | None = None,
) -> list[str]:  # fmt: skip
    """``flower-supernode`` for one organisation: TLS to ``superlink``, its node key, its local files.

    The node config carries absolute paths to the CSV, schema and limits files; the
    ClientApp reads them on this machine (:func:`fedready.client.site.site_from_node_config`).
    """
    if ":" not in superlink:
        raise ConfigError("superlink", f"expected HOST:PORT, got {superlink!r}")
    node_config = " ".join([
        f"{K.PARTITION_ID}={int(client_id)}",
        f'{K.NODE_DATA}="{_existing("data", data)}"',
        f'{K.NODE_SCHEMA}="{_existing("schema", schema)}"',
        f'{K.NODE_LIMITS}="{_existing("limits", limits)}"',
        *([f'{K.NODE_WIRE_LOG}="{Path(wire_log).resolve()}"'] if wire_log is not None else []),
    ])  # fmt: skip
    cmd = [_tool("flower-supernode"), "--superlink", superlink,
           "--root-certificates", _existing("root-cert", root_cert),
           "--auth-supernode-private-key", _existing("key", key),
           "--node-config", node_config, "--port", str(port)]  # fmt: skip
    if max_wait is not None:
        cmd += ["--max-wait-time", str(max_wait)]
    return cmd


def client_environment(limits: Path) -> dict[str, str]:
    """The environment for an organisation's SuperNode: Flower's tools, and the bundle guard in front.

    The guard's launcher lives in the limits' state folder; refusals go to the client's audit log.
    """
    from fedready.client.limits import load_limits
    from fedready.deploy.guard import guard_environment

    lim = load_limits(limits)
    return {**flower_env(), **guard_environment(lim.state_dir / "guard", audit_log=lim.audit_log)}


def flwr_connection(home: Path, *, name: str, address: str, root_cert: Path) -> Path:
    """Write ``FLWR_HOME/config.toml`` with a TLS connection ``name`` to the SuperLink at ``address`` (default).

    ``flwr run . NAME`` and ``flwr supernode register KEY.pub NAME`` then use it.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        f'root-certificates = "{_existing("root-cert", root_cert)}"\n',
        encoding="utf-8",
    )
    return path


def describe(cmd: list[str]) -> str:
    """The command as one shell line (for logs and the runbook)."""
    return " ".join(shlex.quote(c) for c in cmd)


def flower_env() -> dict[str, str]:
    """Environment for Flower's tools: its executables on PATH, runtime installs off."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # fmt: skip
