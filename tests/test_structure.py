"""The shape the redesign promised (#24), held: functions a reader can hold, the library
free of argparse, no import circle inside the package. No per-file line cap (#39): a file cap
invited squeezing; the function cap and the import graph say what matters."""

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "e2urec_fast"


def _modules():
    return sorted(PKG.rglob("*.py"))


def test_no_function_over_80_lines():
    long = []
    for p in _modules():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append(f"{p.relative_to(PKG)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long


def test_only_the_cli_knows_argparse():
    users = [p.relative_to(PKG).as_posix() for p in _modules() if re.search(r"^\s*import argparse|from argparse", p.read_text(), re.M)]
    assert users == ["unlearn.py"], users


def _imports(p: Path) -> set[str]:
    """The package modules `p` imports (relative imports resolved; function-local ones too)."""
    mod = p.relative_to(PKG).with_suffix("").parts
    pkg = mod[:-1] if mod[-1] != "__init__" else mod[:-1]
    out = set()
    for n in ast.walk(ast.parse(p.read_text())):
        if isinstance(n, ast.ImportFrom) and n.level:
            base = pkg[: len(pkg) - n.level + 1]
            names = [n.module] if n.module else [a.name for a in n.names]
            for m in names:
                out.add(".".join(base + tuple(m.split("."))))
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("e2urec_fast."):
            out.add(n.module[len("e2urec_fast."):])
    return out


def test_no_import_circle_in_the_package():
    names = {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in _modules()}
    graph = {}
    for name, p in names.items():
        deps = set()
        for d in _imports(p):
            while d and d not in names and f"{d}.__init__" not in names:
                d = d.rpartition(".")[0]
            d = d if d in names else f"{d}.__init__"
            if d in names and d != name and not d.endswith("__init__"):
                deps.add(d)
        graph[name] = deps
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in sorted(graph[n]):
            visit(d)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, cycles[:3]
