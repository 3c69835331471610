"""Pydantic validation errors read for people: the most useful error first, misspellings named."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["first_error", "unknown_key", "unknown_key_error"]


def first_error(e: ValidationError) -> dict[str, Any]:
    """The error to report of all pydantic found: an unknown (misspelt) key first.

    A misspelt key also leaves the key it meant missing; "unknown key 'mn'; did you mean
    'min'?" names the fix, "min: field required" does not.
    """
    errors = e.errors()
    return next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])


def unknown_key(key: str, known: Iterable[str], *, noun: str = "key") -> str:
    """``unknown key 'mn'; did you mean 'min'?``, or the keys allowed when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
    return f"unknown {noun} '{key}'; {hint}"


def unknown_key_error(model: type[BaseModel], err: dict[str, Any], *, noun: str = "key") -> str | None:
    """The message for an ``extra_forbidden`` error of ``model`` (None for any other error)."""
    if err["type"] != "extra_forbidden" or not err["loc"]:
        return None
    return unknown_key(str(err["loc"][-1]), _keys_at(model, err["loc"][:-1]), noun=noun)


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model`` (a list index or union tag skipped)."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [m for m in current if _tag(m) == part]
        if tagged:  # a discriminated union names the member it chose
            current = tagged
            continue
        field = next((m.model_fields[part] for m in current if part in m.model_fields), None)
        if field is None:
            break
        current = _models(field.annotation)
    return sorted({name for m in current for name in m.model_fields})


def _tag(model: type[BaseModel]) -> Any:
    kind = model.model_fields.get("kind")
    return kind.default if kind is not None else None


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model inside a type annotation (``list[A | B]``, ``Annotated[...]``, ``A | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []
