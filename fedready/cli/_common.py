"""The root Typer app, the stderr console and the one place errors become messages and exit codes.

Errors are caught only at the top: a :class:`ConfigError` becomes one line on stderr and exit code 2,
an :class:`IntegrityError` one line and exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedready.errors import ConfigError, FedreadyError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy-preserving federated training.",
                  pretty_exceptions_show_locals=False)  # a traceback's locals would print data values
err = Console(stderr=True, soft_wrap=True)  # one message, one line: never wrapped at the terminal width


@app.callback()
def _root() -> None:
    """Privacy-preserving federated training: simulate, account, evaluate, ship."""


def _fail(e: FedreadyError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(e, ConfigError) else 1)


_TRAINING_STACK = {"torch", "flwr", "opacus", "onnx", "ray"}


@contextmanager
def _errors() -> Iterator[None]:
    """Turn a :class:`FedreadyError` raised inside into its one-line message and exit code."""
    try:
        yield
    except FedreadyError as e:
        raise _fail(e) from None
    except ModuleNotFoundError as e:  # a lean edge install running an operator command
        if (e.name or "").split(".")[0] not in _TRAINING_STACK:
            raise
        raise _fail(ConfigError("install", f"this command needs the training stack ({e.name} is not installed); "
                                           "pip install -c constraints.txt 'fedready[train]'")) from None  # fmt: skip


RegistryPath = Annotated[Path, typer.Argument(help="The registry folder (its repository/ is what you serve).")]
Home = Annotated[Path, typer.Option(help="The device folder.")]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, sort_keys=True, default=str))


def _read_input(input: Path | None) -> str:
    """The text of a CSV / JSON lines file, or of stdin for None or ``-``."""
    import sys

    if input is None or str(input) == "-":
        data = sys.stdin.buffer.read()
    elif not input.is_file():
        raise ConfigError("input", f"{input} does not exist")
    else:
        data = input.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError("input", f"{input or 'stdin'} is not UTF-8 text ({e.reason} at byte {e.start})") from None
