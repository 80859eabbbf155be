"""The import rule: broker_postgres uses only the public API of broker_core.

It is written as a third party would write a transport, so it may import only what
``broker_core/__init__.py``, ``broker_core.transport``, ``broker_core.hooks`` and
``broker_core.testing`` export (their ``__all__``). The scan reads every module of the
package with ``ast``, so an import inside a function or under TYPE_CHECKING counts too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import broker_postgres

PUBLIC_MODULES = (
    "broker_core",
    "broker_core.transport",
    "broker_core.hooks",
    "broker_core.testing",
)


def private_imports(source: str) -> list[str]:
    """Every import of ``source`` that reaches past the public API of broker_core."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("broker_core") and alias.name not in PUBLIC_MODULES:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            module = node.module
            if not (module == "broker_core" or module.startswith("broker_core.")):
                continue
            if module not in PUBLIC_MODULES:
                problems.append(f"line {node.lineno}: from {module} import ...")
                continue
            exported = set(importlib.import_module(module).__all__)
            for alias in node.names:
                if alias.name not in exported:
                    problems.append(f"line {node.lineno}: {alias.name} is not in {module}.__all__")
    return problems


def test_broker_postgres_imports_only_the_public_api() -> None:
    package = Path(broker_postgres.__file__).parent
    found = {
        str(path.relative_to(package)): private_imports(path.read_text())
        for path in sorted(package.rglob("*.py"))
    }
    assert len(found) >= 5  # the scan saw the package
    assert {name: p for name, p in found.items() if p} == {}


def test_the_scan_catches_private_imports() -> None:
    assert private_imports("from broker_core import Broker, safe_text") == []
    assert private_imports("from broker_core.transport import Receipt") == []
    assert private_imports("from broker_core.names import validate_topic") == [
        "line 1: from broker_core.names import ..."
    ]
    assert private_imports("import broker_core.clock") == ["line 1: import broker_core.clock"]
    assert private_imports("def f():\n    from broker_core.hooks import PROJECT, hookspec") == []
    assert private_imports("from broker_core import _private") == [
        "line 1: _private is not in broker_core.__all__"
    ]
    assert private_imports("from broker_core.testing import harness") == [
        "line 1: harness is not in broker_core.testing.__all__"
    ]
