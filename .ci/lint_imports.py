"""Run ``lint-imports`` (the layers contract in pyproject.toml) on fedready as Python imports it.

The top-level folders (server/, client/, ...) become fedready's subpackages only once installed
(setuptools ``package-dir``), so the source tree is not the package tree import-linter walks: run
in the checkout, it would see the core alone. This builds that tree out of symbolic links in a
temporary folder, from the same ``package-dir`` table, and runs ``lint-imports`` there with the
checkout's pyproject.toml. Exit status: lint-imports' own (0: every contract kept).

Usage: ``.venv/bin/python .ci/lint_imports.py [CHECKOUT]`` (default: the checkout holding this file).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT_PACKAGE = "fedready"


def package_tree(checkout: Path, dest: Path) -> Path:
    """Lay out ``dest/fedready`` as the installed package: links to the core's files and to each mapped folder."""
    pyproject = tomllib.loads((checkout / "pyproject.toml").read_text(encoding="utf-8"))
    folders: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    package = dest / ROOT_PACKAGE
    package.mkdir(parents=True)
    for entry in (checkout / folders[ROOT_PACKAGE]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry.resolve())
    for name, folder in folders.items():
        parts = name.split(".")
        if len(parts) == 2 and parts[0] == ROOT_PACKAGE:  # fedready.server = "server"
            (package / parts[1]).symlink_to((checkout / folder).resolve(), target_is_directory=True)
    return package


def main(argv: list[str]) -> int:
    checkout = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    lint_imports = Path(sys.executable).with_name("lint-imports")  # the one installed beside this Python
    with tempfile.TemporaryDirectory(prefix="layers-") as tmp:
        package_tree(checkout, Path(tmp))
        # lint-imports puts its working directory first on sys.path: the linked tree, not the editable install
        return subprocess.run([str(lint_imports), "--no-cache", str(checkout / "pyproject.toml")], cwd=tmp,
                              check=False).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
