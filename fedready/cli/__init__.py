"""The ``fedready`` command line: one module per command group, each a thin layer over the library.

Each command maps onto one Python function. Errors are caught only at the top
(:mod:`fedready.cli._common`): a :class:`~fedready.errors.ConfigError` becomes one line on
stderr and exit code 2, an :class:`~fedready.errors.IntegrityError` one line and exit code 1.
"""

from __future__ import annotations

import importlib

from fedready.cli._common import app

# Importing a command module registers its commands on ``app``, in this order (the order of ``--help``):
# simulate, pipeline | ledger | audit-privacy | keys, package, verify, registry, reproduce | edge | evaluate, compress, explain |
# certs, server, client, contract, audit | monitor, shadow | schema.
for _group in ("simulate", "ledger", "audit_privacy", "artifacts", "edge", "evaluate", "deploy", "monitor", "schema"):
    importlib.import_module(f"fedready.cli.{_group}")

from fedready.cli.deploy import verify_audit_log  # noqa: E402  (after registration)
from fedready.cli.ledger import check_ledger  # noqa: E402  (after registration)
from fedready.cli.monitor import BREACH_EXIT  # noqa: E402  (after registration)
from fedready.cli.simulate import run_simulate  # noqa: E402  (after registration)

__all__ = ["BREACH_EXIT", "app", "check_ledger", "main", "run_simulate", "verify_audit_log"]


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
