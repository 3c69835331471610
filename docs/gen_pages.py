"""MkDocs hook (``hooks:`` in mkdocs.yml): the pages that are generated, never retyped.

* ``index.md``: the README, its links into ``docs/`` made relative to the site;
* ``benchmarks.md``: BENCHMARKS.md, as ``benchmarks/run_all.py`` wrote it;
* ``reference/cli.md``: every ``fedready`` command, its usage, help and options, read from the typer app
  (``typer.main.get_command``) the way ``fedready ... --help`` reads them.

A command added to the CLI appears in the reference on the next build; ``mkdocs build --strict`` (``.ci/run``)
fails on a broken link or anchor in any page.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)  # README links point into docs/, the site's root
    return text.replace("](BENCHMARKS.md)", "](benchmarks.md)")


def _default(param: click.Parameter) -> str:
    value = param.default  # the value the command really uses (typer may also restate it in the help text)
    if value is None or type(value).__name__ == "Sentinel":  # unset (click 8.3 marks it with a sentinel)
        return ""
    if callable(value):
        return ""
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value) if value else ""
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _command(cmd: click.Command, path: list[str], out: list[str]) -> None:
    ctx = click.Context(cmd, info_name=" ".join(path))
    level = "#" * min(len(path), 6)
    out.append(f"{level} `{' '.join(path)}`\n")
    if cmd.help:
        out.append(click.unstyle(cmd.help).strip() + "\n")
    out.append(f"```\n{' '.join(path)} {' '.join(cmd.collect_usage_pieces(ctx))}\n```\n")
    args = [p for p in cmd.get_params(ctx) if isinstance(p, click.Argument)]
    help_option = cmd.get_help_option(ctx)
    opts = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option) and not p.hidden and p is not help_option]
    if args:
        out.append("| argument | type | help |\n|---|---|---|")
        for a in args:
            out.append(f"| `{a.human_readable_name}` | {_cell(a.type.name)} | {_cell(getattr(a, 'help', '') or '')} |")
        out.append("")
    if opts:
        out.append("| option | type | default | help |\n|---|---|---|---|")
        for o in opts:
            names = " / ".join(f"`{n}`" for n in (*o.opts, *o.secondary_opts))
            kind = "flag" if o.is_flag else _cell(o.type.name)
            out.append(f"| {names} | {kind} | {_default(o)} | {_cell(click.unstyle(o.help or ''))} |")
        out.append("")
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                _command(sub, [*path, name], out)


def cli_reference() -> str:
    """The CLI reference in Markdown, from the typer app itself."""
    import typer.main

    from fedready.cli import app

    group = typer.main.get_command(app)
    out = [
        "# CLI reference\n",
        "Every `fedready` command with its options, generated from the CLI at build time (`docs/gen_pages.py`), "
        "so it cannot drift from `fedready ... --help`. What the commands are for is in the guides.\n",
    ]
    ctx = click.Context(group, info_name="fedready")
    out.append("Commands: " + ", ".join(f"`{n}`" for n in group.list_commands(ctx)) + ".\n")
    for name in group.list_commands(ctx):
        _command(group.get_command(ctx, name), ["fedready", name], out)
    return "\n".join(out)


def on_files(files, config):
    from mkdocs.structure.files import File  # here: the generators above import without mkdocs (tests/test_docs.py)

    pages = {
        "index.md": _readme,
        "benchmarks.md": lambda: (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"),
        "reference/cli.md": cli_reference,
    }
    for uri, make in pages.items():
        files.append(File.generated(config, uri, content=make()))
    return files
