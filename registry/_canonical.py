"""Canonical JSON and digests: anything signed or hashed goes through here (STYLE.md rule 5)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from fedready.errors import ConfigError, IntegrityError
from fedready.files import atomic_write_text

__all__ = [
    "artifact_files",
    "canonical_json",
    "check_file_name",
    "check_version",
    "file_sha256",
    "json_digest",
    "read_json",
    "safe_relpath",
    "write_json",
]

# Matched with fullmatch: ``$`` would also accept a trailing newline ("1.0.0\n" installing as a
# second folder that prints like the first and gets around immutability).
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")
# A file of an artifact: one path component, no leading dot (so no .git, .gitignore, .github:
# model-signing skips those), no backslash or other separator a device's filesystem might honour.
_FILE = re.compile(r"[0-9A-Za-z_][0-9A-Za-z._+-]{0,127}")


def canonical_json(obj: Any) -> str:
    """Return ``obj`` as JSON with sorted keys and a trailing newline (stable bytes for hashing)."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def json_digest(obj: Any) -> str:
    """Return ``sha256:<hex>`` of ``obj``'s canonical JSON."""
    return "sha256:" + hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as canonical JSON, atomically."""
    atomic_write_text(path, canonical_json(obj))


def read_json(path: Path, *, what: str) -> Any:
    """Read a JSON file that fedready wrote; a missing or broken file is an :class:`IntegrityError`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise IntegrityError(f"{what}: {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{what}: {path} is not valid JSON ({e})") from e


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_version(version: str, *, field: str = "version") -> str:
    """Refuse a version that is not a single safe path component (``1.0.0``, ``2026.11.26-rc1``)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or ".." in version:
        raise ConfigError(field, f"{version!r} is not a valid version; use letters, digits and . _ + - (e.g. 1.0.0)")
    return version


def safe_relpath(path: str) -> PurePosixPath:
    """Return ``path`` as a relative POSIX path that cannot leave its base folder.

    Raises
    ------
    IntegrityError
        If the path is absolute, empty, holds ``..`` or a backslash (a target that tries to
        escape the device's folder).
    """
    p = PurePosixPath(path)
    if not path or "\\" in path or p.is_absolute() or any(part in {"..", ""} for part in p.parts) or "\x00" in path:
        raise IntegrityError(f"target path '{path}' escapes the device folder; refused")
    return p


def check_file_name(name: str) -> str:
    """Refuse an artifact file name a device would not write: anything but one plain path component.

    Raises
    ------
    IntegrityError
        For a subfolder, ``..``, a backslash, a leading dot (git paths included) or other characters.
    """
    if not isinstance(name, str) or not _FILE.fullmatch(name) or ".." in name:
        raise IntegrityError(f"file name {name!r} is not allowed in an artifact (one plain file name: letters, "
                             "digits and . _ + -, no leading dot, no folders); refused")  # fmt: skip
    return name


def artifact_files(folder: Path) -> dict[str, Path]:
    """Every entry of an artifact folder by name, refusing what a device would refuse.

    Raises
    ------
    IntegrityError
        If the folder holds a subfolder, a symlink or a file whose name fails :func:`check_file_name`.
    """
    out: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_symlink() or not p.is_file():
            kind = "symlink" if p.is_symlink() else "folder" if p.is_dir() else "special file"
            raise IntegrityError(f"{folder}: '{p.name}' is a {kind}; an artifact holds plain files only, refused")
        out[check_file_name(p.name)] = p
    return out
