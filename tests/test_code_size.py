"""The package stays readable in pieces: no module over 500 lines and no function over 80.
An exception names its reason here, in one line; a new one is a decision, not drift."""

from __future__ import annotations

import ast

from .conftest import REPO

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Lines counted as ruff format writes them (one argument per line where a call is long).
# Each exception: "path" (or "path:function") -> its reason in one line. None today.
MODULE_EXCEPTIONS: dict[str, str] = {}
FUNCTION_EXCEPTIONS: dict[str, str] = {}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted((REPO / "fastres").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        source = path.read_text()
        modules[name] = len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{name}:{node.name}"
                functions[key] = max(functions.get(key, 0), node.end_lineno - node.lineno + 1)
    return modules, functions


def test_no_module_or_function_outgrows_its_limit_without_a_stated_reason():
    modules, functions = _sizes()
    long_modules = {m for m, n in modules.items() if n > MAX_MODULE_LINES}
    long_functions = {f for f, n in functions.items() if n > MAX_FUNCTION_LINES}
    assert long_modules <= set(MODULE_EXCEPTIONS), sorted(long_modules - set(MODULE_EXCEPTIONS))
    assert long_functions <= set(FUNCTION_EXCEPTIONS), sorted(
        long_functions - set(FUNCTION_EXCEPTIONS)
    )
    # An exception that no longer applies is removed, so the list says what is still long.
    assert set(MODULE_EXCEPTIONS) <= long_modules, sorted(set(MODULE_EXCEPTIONS) - long_modules)
    assert set(FUNCTION_EXCEPTIONS) <= long_functions, sorted(
        set(FUNCTION_EXCEPTIONS) - long_functions
    )
