"""``fedready schema draft``: a first schema for a person to review, from one local CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedready.cli._common import _errors, app, err
from fedready.errors import ConfigError

schema_app = typer.Typer(no_args_is_help=True, help="Declared schemas: draft one from a local CSV.")
app.add_typer(schema_app, name="schema")


@schema_app.command("draft")
def schema_draft(
    data: Annotated[Path, typer.Argument(help="A local CSV with a header row (read on this machine only).")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the draft. [default: DATA's stem + .schema.toml]")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="The label column. [default: one named like a label, else the last non-sensitive one]"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The schema's name. [default: DATA's stem]")] = None,
    min_count: Annotated[int, typer.Option(help="Categories seen fewer times are left out (they identify).")] = 5,
    sensitive: Annotated[
        list[str] | None, typer.Option(metavar="COL", help="Mark COL as a protected attribute (repeatable).")
    ] = None,
    ignore: Annotated[
        list[str] | None, typer.Option(metavar="COL", help="Declare COL, not a model input (repeatable).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Draft a schema (kinds, rounded ranges, bins, categories, the target and its classes) for a person to review."""
    from fedready.schema_draft import draft_schema

    target_path = out or data.with_name(data.stem + ".schema.toml")
    with _errors():
        if min_count < 1:
            raise ConfigError("min-count", f"must be >= 1, got {min_count}")
        if target_path.exists() and not force:
            raise ConfigError("out", f"{target_path} exists; pass --force to overwrite it or --out another file")
        draft = draft_schema(
            data, target=target, name=name, min_count=min_count, sensitive=sensitive or (), ignore=ignore or ()
        )
        from fedready.files import atomic_write_text

        atomic_write_text(target_path, draft.toml)
    for warning in draft.warnings:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    for note in draft.notes:
        err.print(f"review: {note}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"read {data} on this machine ({draft.rows} rows, target '{draft.target}'); wrote {target_path}. "
              "It is a draft: review every field (mark the sensitive attributes) before you share it.",
              markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    typer.echo(str(target_path))
