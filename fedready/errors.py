"""Exception types, split by fault (see STYLE.md, rule 9).

``ConfigError`` is misuse by the caller (a bad option or config value) and always
names the field and the fix; the CLI turns it into a one-line message and exit
code 2. ``IntegrityError`` is untrusted input that failed a check (a data file
whose digest differs, a malformed client update).
"""

from __future__ import annotations

__all__ = ["ConfigError", "FedreadyError", "IntegrityError", "TransportError"]


class FedreadyError(Exception):
    """Root of every error fedready raises on purpose."""


class ConfigError(FedreadyError, ValueError):
    """A configuration value is invalid.

    Parameters
    ----------
    field : str
        The option or config key at fault, as the user spells it.
    message : str
        What is wrong and how to fix it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class IntegrityError(FedreadyError):
    """Untrusted input failed an integrity or validity check."""


class TransportError(FedreadyError):
    """A remote (registry, mirror) could not be reached or answered with an error."""
