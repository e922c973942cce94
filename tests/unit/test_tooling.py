"""The test tooling itself: pytest-timeout must not cut off a subprocess that has its own limit."""

from __future__ import annotations

import ast
import tomllib

from tests.conftest import ROOT


def subprocess_timeouts(tree: ast.AST) -> dict[str, float]:
    """Per test function (and fixture), the sum of the literal ``timeout=`` of the calls in it."""
    out = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            total = 0.0
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if kw.arg == "timeout" and isinstance(kw.value, ast.Constant):
                            total += float(kw.value.value)
            out[fn.name] = total
    return out


def test_the_per_test_timeout_exceeds_every_tests_subprocess_limits() -> None:
    limit = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    per_test = float(limit["timeout"])
    worst = {
        f"{path.relative_to(ROOT)}::{name}": total
        for path in (ROOT / "tests").rglob("test_*.py")
        for name, total in subprocess_timeouts(ast.parse(path.read_text())).items()
    }
    assert max(worst.values()) >= 1000  # the walk finds the long ones (schemathesis, torchrun)
    over = {k: v for k, v in worst.items() if v >= per_test}
    assert over == {}, f"pytest's timeout {per_test} s cuts these off first: {over}"
