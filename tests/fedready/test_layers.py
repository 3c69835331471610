"""The architecture holds: every import points down the layers of pyproject.toml, and no folder uses another's privates.

``lint-imports`` sees imports inside functions too; ``.ci/lint_imports.py`` runs it on the package as
Python imports it (the top-level folders are fedready's subpackages only once installed).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
LINT = CHECKOUT / ".ci" / "lint_imports.py"


def _folders(checkout: Path) -> dict[str, str]:
    """Package name -> its folder in the checkout (setuptools ``package-dir``)."""
    pyproject = tomllib.loads((checkout / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]["package-dir"]


def _lint(checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LINT), str(checkout)], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def _private_imports(checkout: Path) -> list[str]:
    """Every ``from fedready.X import _name`` (or import of a private module) whose target lies in another folder."""
    folders = _folders(checkout)

    def folder_of(module: str) -> str | None:
        parts = module.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in folders:
                return folders[".".join(parts[:n])]
        return None

    found = []
    for folder in sorted(set(folders.values())):
        for path in sorted((checkout / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [(node.module, [a.name for a in node.names])]
                elif isinstance(node, ast.Import):
                    modules = [(a.name, []) for a in node.names]
                else:
                    continue
                for module, names in modules:
                    target = folder_of(module)
                    if target is None or target == folder:
                        continue
                    private = [p for p in [*module.split("."), *names] if p.startswith("_") and not p.startswith("__")]
                    if private:
                        found.append(f"{path.relative_to(checkout)}:{node.lineno}: {module} {', '.join(private)}")
    return found


@pytest.fixture(scope="module")
def copy_of_checkout(tmp_path_factory) -> Path:
    """The package's folders and pyproject.toml, copied (no data files, no caches)."""
    dest = tmp_path_factory.mktemp("checkout")
    shutil.copy2(CHECKOUT / "pyproject.toml", dest / "pyproject.toml")
    for folder in set(_folders(CHECKOUT).values()):
        shutil.copytree(CHECKOUT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.gz"))
    return dest


def test_every_import_points_down_the_layers():
    result = _lint(CHECKOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every import points down KEPT" in result.stdout
    # the linted tree is the installed package's (about 100 modules), not the core folder alone (about 35)
    analyzed = int(result.stdout.split("Analyzed ")[1].split(" files")[0])
    assert analyzed > 80, result.stdout


def test_one_upward_import_inside_a_function_breaks_the_layers(copy_of_checkout):
    ledger = copy_of_checkout / "privacy" / "ledger.py"
    original = ledger.read_text(encoding="utf-8")
    ledger.write_text(original + "\n\ndef _upward():\n    from fedready.server.app import new_ledger\n\n"
                      "    return new_ledger\n", encoding="utf-8")  # fmt: skip
    try:
        result = _lint(copy_of_checkout)
    finally:
        ledger.write_text(original, encoding="utf-8")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "fedready.privacy is not allowed to import fedready.server" in result.stdout
    assert "fedready.privacy.ledger -> fedready.server.app" in result.stdout


def test_no_module_imports_a_private_name_from_another_folder():
    assert _private_imports(CHECKOUT) == []


def test_a_private_name_imported_from_another_folder_is_found(copy_of_checkout):
    card = copy_of_checkout / "evaluation" / "card.py"
    original = card.read_text(encoding="utf-8")
    card.write_text(original + "\nfrom fedready.server.app import _client_id  # noqa: E402\n", encoding="utf-8")
    try:
        found = _private_imports(copy_of_checkout)
    finally:
        card.write_text(original, encoding="utf-8")
    assert len(found) == 1 and found[0].startswith("evaluation/card.py:") and "_client_id" in found[0], found


def test_the_core_does_not_import_the_api_until_its_names_are_used():
    code = ("import sys, fedready, fedready.schema, fedready.privacy.ledger\n"
            "assert 'fedready.api' not in sys.modules, 'the core imported the API'\n"
            "assert 'simulate' in dir(fedready)\n"
            "from fedready import simulate, PipelineResult\n"
            "from fedready.api import simulate as api_simulate\n"
            "assert simulate is api_simulate and PipelineResult.__module__ == 'fedready.api'\n"
            "try:\n    fedready.no_such_name\nexcept AttributeError as e:\n    print(e)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "module 'fedready' has no attribute 'no_such_name'"
