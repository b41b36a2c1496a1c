"""Python source a loader runs: parse with :mod:`ast` (never executed) and record what it imports and calls.

Names are resolved through the module's own import aliases (``import subprocess as sp;
sp.run`` is ``subprocess.run``; ``from os import system as s; s()`` is ``os.system``).  A
call on a call result keeps the attribute (``__import__('os').system`` gives
``__import__`` and ``<call>.system``).  Rules decide what is dangerous.
"""

from __future__ import annotations

import ast

from modelwarden.ir import PyRef, PythonSource

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_TOTAL_SOURCE_BYTES = 64 * 1024 * 1024  # per artifact, across all its files
MAX_REFS = 5000


class SourceBudget:
    """How much source one artifact may still have parsed (hostile repositories ship a lot of it)."""

    def __init__(self, total: int = MAX_TOTAL_SOURCE_BYTES) -> None:
        self.left = total

    def parse(self, data: bytes, source: str, role: str, entry: str = "") -> PythonSource:
        """:func:`python_source`, or an error saying the artifact's budget is spent."""
        if len(data) > self.left:
            return PythonSource(source, role, entry=entry, error="not analysed: the artifact's "
                                f"{MAX_TOTAL_SOURCE_BYTES}-byte source budget is spent")
        self.left -= len(data)
        return python_source(data, source, role, entry)


def python_source(data: bytes, source: str, role: str, entry: str = "") -> PythonSource:
    """Facts about one source file; syntax errors and limits are recorded in ``error``."""
    if len(data) > MAX_SOURCE_BYTES:
        return PythonSource(source, role, entry=entry, error=f"{len(data)} bytes of source (more than "
                            f"{MAX_SOURCE_BYTES} are not analysed)")
    try:
        tree = ast.parse(data, filename=source)
    except SyntaxError as exc:
        return PythonSource(source, role, entry=entry, error=f"line {exc.lineno}: {exc.msg}")
    except (RecursionError, MemoryError, ValueError) as exc:
        return PythonSource(source, role, entry=entry, error=f"source cannot be parsed ({type(exc).__name__})")
    v = _Visitor()
    try:
        v.visit(tree)
    except RecursionError:
        v.error = "source nested too deeply: analysis stopped early"
    return PythonSource(source, role, tuple(v.imports[:MAX_REFS]), tuple(v.calls[:MAX_REFS]),
                        tuple(v.attributes[:MAX_REFS]), entry, v.error)


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.imports: list[PyRef] = []
        self.calls: list[PyRef] = []
        self.attributes: list[PyRef] = []
        self.depth = 0  # function nesting: 0 = runs at import time
        self.error = ""

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            self.imports.append(PyRef(a.name, node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = "." * node.level + (node.module or "")
        for a in node.names:
            full = f"{base}.{a.name}" if base and not base.endswith(".") else f"{base}{a.name}"
            self.aliases[a.asname or a.name] = full
            self.imports.append(PyRef(full, node.lineno, self.depth == 0))

    def visit_Call(self, node: ast.Call) -> None:
        args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)][:2]
        args += [f"{k.arg}={k.value.value}" for k in node.keywords
                 if k.arg and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)][:2]
        name = self.dotted(node.func)
        detail = ", ".join(repr(a)[:80] for a in args)
        if name.rsplit(".", 1)[-1] == "open":  # the mode decides read or write
            mode = [k.value for k in node.keywords if k.arg == "mode"] or node.args[1:2]
            if mode and isinstance(mode[0], ast.Constant) and isinstance(mode[0].value, str):
                detail = f"{detail}; mode={mode[0].value}" if detail else f"mode={mode[0].value}"
        self.calls.append(PyRef(name, node.lineno, self.depth == 0, detail))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__") and node.attr.endswith("__"):
            self.attributes.append(PyRef(node.attr, node.lineno, self.depth == 0))
        self.generic_visit(node)

    def dotted(self, node: ast.AST) -> str:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(self.aliases.get(node.id, node.id))
        elif isinstance(node, ast.Call):
            parts.append("<call>")
        else:
            parts.append(f"<{type(node).__name__.lower()}>")
        return ".".join(reversed(parts))[:200]
