"""Sizes the house rules set (README "How we write code"): no module over MAX_MODULE_LINES lines anywhere in the
code, no function in the core (selfevolve/) over MAX_FUNCTION_LINES lines. No allowlist: split what grows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("selfevolve", "streams", "workers", "bench", "infra", "tests")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # from the `def` line to the last line of the body, docstring included


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{node.name} (line {node.lineno}: {node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("path", _modules(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_at_most_400_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept"


@pytest.mark.parametrize("path", _modules("selfevolve"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_function_is_at_most_60_lines(path):
    long = _long_functions(path, MAX_FUNCTION_LINES)
    assert not long, f"{path.relative_to(ROOT)}: {long}: split them"


def test_the_function_measure_counts_the_whole_body(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    f = tmp_path / "f.py"
    f.write_text(f"def short():\n    return 1\n\n\nasync def long():\n{body}\n")
    assert _long_functions(f, MAX_FUNCTION_LINES) == [f"long (line 5: {MAX_FUNCTION_LINES + 1} lines)"]
