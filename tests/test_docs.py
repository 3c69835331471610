"""The documentation site's generated CLI reference lists every command and every option of the CLI itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click
import typer.main

from fedready.cli import app

GEN = Path(__file__).resolve().parents[1] / "docs" / "gen_pages.py"


def _gen_pages():
    spec = importlib.util.spec_from_file_location("gen_pages", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _commands(cmd.get_command(ctx, name), [*path, name])


def test_the_cli_reference_lists_every_command_and_option():
    text = _gen_pages().cli_reference()
    seen = 0
    for path, cmd in _commands(typer.main.get_command(app), ["fedready"]):
        if len(path) == 1 or cmd.hidden:
            continue
        section = text.split(f"`{' '.join(path)}`\n", 1)[1]
        own = section.split("\n#", 1)[0]
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert f"`{param.opts[0]}`" in own, f"{' '.join(path)}: {param.opts[0]} missing from the CLI reference"
        seen += 1
    assert seen >= 35  # every command, groups' subcommands included
