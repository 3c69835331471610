"""Small file helpers: every file fedready writes is written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["append_line", "atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename.

    Readers see the old file or the new one, never a part, whatever kills the process, and the data
    reaches the disk before the rename (``fsync``), so the new file survives a power cut too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append one line to ``path`` and wait until it is on the disk.

    One ``write`` on a file opened for appending. A process killed mid-write can leave a torn last
    line; readers that resume from a checkpoint rewrite the file without it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_toml(path: Path, *, field: str, missing: str) -> dict:
    """Parse a TOML file; a missing file or bad TOML is a one-line ConfigError naming ``field``.

    ``missing`` is the message for a file that does not exist (what to pass instead).
    """
    import tomllib

    from fedready.errors import ConfigError

    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(field, missing) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(field, f"{p} is not valid TOML ({e})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(field, f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(field, f"{p} cannot be read ({e.strerror or e})") from e
