"""Tests and benchmarks share code through tests/support/ only: no test module imports
bench/ (but ``tests/test_bench_<name>.py``, whose subject is ``bench/<name>.py`` itself, may
import that one module), bench/ imports nothing of tests/ but tests.support, and
tests/support/ imports no test module (nor conftest)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute imports; relative ones are not used here)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("tests"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tests_never_import_bench(path: Path) -> None:
    subject = f"bench.{path.stem.removeprefix('test_bench_')}"
    own = path.stem.startswith("test_bench_")
    wrong = {
        m
        for m in imported_modules(path)
        if (m == "bench" or m.startswith("bench."))
        and not (own and (m == subject or m.startswith(f"{subject}.")))
    }
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}: use tests/support/"


@pytest.mark.parametrize("path", python_files("bench"), ids=lambda p: str(p.relative_to(ROOT)))
def test_bench_imports_only_tests_support(path: Path) -> None:
    wrong = {
        m
        for m in imported_modules(path)
        if (m == "tests" or m.startswith("tests."))
        and m != "tests.support"
        and not m.startswith("tests.support.")
    }
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}: only tests.support"


@pytest.mark.parametrize(
    "path", python_files("tests/support"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_support_imports_no_test_module(path: Path) -> None:
    wrong = {
        m
        for m in imported_modules(path)
        if m.startswith(("tests.test_", "tests.conftest")) or m == "tests.conftest"
    }
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
