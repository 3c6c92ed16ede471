"""Promise: every SQL statement is parameterised (static half; the dynamic half, injection strings as ids and
names against the running services, is in ``tests/integration/test_security_services.py``).

Every ``execute``/``executemany``/``mogrify``/``execute_values``/``execute_batch``/``copy_expert`` call in
the services' source must get SQL that is built only from string constants: literals, module or local
names bound only to literals, f-strings and ``+`` over those, conditional expressions choosing between
them, and ``psycopg2.sql`` composition (``sql.SQL("...").format(sql.Identifier(...))``, which quotes).
SQL held in a function parameter is followed to every call of that function in the same module. Values
travel as parameters. The checker is tested on snippets that it must refuse, so it cannot rot into a
test that passes whatever the code does.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["ingest", "scorer", "explainer", "retrainer", "deploy"]
SQL_ARG = {
    "execute": 0,
    "executemany": 0,
    "mogrify": 0,
    "copy_expert": 0,
    "execute_values": 1,
    "execute_batch": 1,
}
COMPOSITION = {"SQL", "Identifier", "Literal", "Placeholder", "Composed"}
# Statements read from the repository's own files, not built from input.
TRUSTED_ATTRIBUTES = {"migration.text"}


@dataclass
class Finding:
    where: str
    source: str


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


class Checker:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def enclosing(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def assignments(self, scope: ast.AST, name: str) -> list[ast.expr]:
        out: list[ast.expr] = []
        body = scope.body if isinstance(scope, ast.Module) else list(ast.walk(scope))
        for node in body:
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            else:
                continue
            if node.value is not None and any(isinstance(t, ast.Name) and t.id == name for t in targets):
                out.append(node.value)
        return out

    def safe(self, e: ast.expr, at: ast.AST, depth: int = 0) -> bool:
        if depth > 8:
            return False
        if isinstance(e, ast.Constant):
            return isinstance(e.value, str)
        if isinstance(e, ast.JoinedStr):
            return all(
                isinstance(v, ast.Constant)
                or (isinstance(v, ast.FormattedValue) and self.safe(v.value, at, depth + 1))
                for v in e.values
            )
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add | ast.Mod):
            return self.safe(e.left, at, depth + 1) and self.safe(e.right, at, depth + 1)
        if isinstance(e, ast.IfExp):
            return self.safe(e.body, at, depth + 1) and self.safe(e.orelse, at, depth + 1)
        if isinstance(e, ast.Call):
            return self.safe_call(e, at, depth)
        if isinstance(e, ast.Attribute):
            return ast.unparse(e) in TRUSTED_ATTRIBUTES
        if isinstance(e, ast.Name):
            return self.safe_name(e.id, at, depth)
        return False

    def safe_call(self, e: ast.Call, at: ast.AST, depth: int) -> bool:
        name = _name(e.func)
        if name in COMPOSITION:  # sql.SQL("..."), sql.Identifier(x): psycopg2 quotes identifiers/literals
            return name != "SQL" or all(self.safe(a, at, depth + 1) for a in e.args)
        if name == "format" and isinstance(e.func, ast.Attribute):
            inner = e.func.value
            composed = isinstance(inner, ast.Call) and _name(inner.func) == "SQL"
            args = [*e.args, *(k.value for k in e.keywords)]
            if composed:
                return self.safe(inner, at, depth + 1) and all(
                    isinstance(a, ast.Call) and _name(a.func) in COMPOSITION for a in args
                )
            return self.safe(inner, at, depth + 1) and all(self.safe(a, at, depth + 1) for a in args)
        return False

    def safe_name(self, name: str, at: ast.AST, depth: int) -> bool:
        func = self.enclosing(at)
        if func is not None:
            params = [a.arg for a in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]]
            if name in params:
                return self.safe_parameter(func, name, params, depth)
            local = self.assignments(func, name)
            if local:
                return all(self.safe(v, func, depth + 1) for v in local)
        module = self.assignments(self.tree, name)
        return bool(module) and all(self.safe(v, self.tree, depth + 1) for v in module)

    def safe_parameter(
        self, func: ast.FunctionDef | ast.AsyncFunctionDef, name: str, params: list[str], depth: int
    ) -> bool:
        index = params.index(name) - (1 if params and params[0] in {"self", "cls"} else 0)
        calls = [c for c in ast.walk(self.tree) if isinstance(c, ast.Call) and _name(c.func) == func.name]
        for call in calls:
            kw = [k.value for k in call.keywords if k.arg == name]
            arg = kw[0] if kw else (call.args[index] if index < len(call.args) else None)
            if arg is None or not self.safe(arg, call, depth + 1):
                return False
        return bool(calls)

    def findings(self, path: str) -> list[Finding]:
        out = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            index = SQL_ARG.get(_name(node.func) or "")
            if index is None or len(node.args) <= index:
                continue
            if not self.safe(node.args[index], node):
                out.append(Finding(f"{path}:{node.lineno}", ast.unparse(node)[:160]))
        return out


def scan(source: str, path: str = "<snippet>") -> list[Finding]:
    return Checker(ast.parse(source)).findings(path)


def test_every_sql_statement_in_the_services_is_parameterised() -> None:
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert len(files) > 50
    calls = sum(source.count("execute") for source in (f.read_text() for f in files))
    assert calls > 40, "the scan would find nothing to check"
    findings = [f for p in files for f in scan(p.read_text(), str(p.relative_to(ROOT)))]
    assert findings == [], "\n".join(f"{f.where}: {f.source}" for f in findings)


UNSAFE = [
    "def f(cur, name):\n    cur.execute(f\"SELECT * FROM t WHERE name = '{name}'\")",
    "def f(cur, name):\n    cur.execute(\"SELECT * FROM t WHERE name = '%s'\" % name)",
    'def f(cur, name):\n    cur.execute("SELECT * FROM t WHERE name = \'" + name + "\'")',
    "def f(cur, name):\n    cur.execute(\"SELECT * FROM t WHERE name = '{}'\".format(name))",
    'def f(cur, name):\n    q = "SELECT * FROM t WHERE name = " + name\n    cur.execute(q)',
    'def f(cur, rows, table):\n    execute_values(cur, f"INSERT INTO {table} VALUES %s", rows)',
    'def run(cur, q):\n    cur.execute(q)\ndef g(cur, x):\n    run(cur, "SELECT " + x)',
    "def run(cur, q):\n    cur.execute(q)",  # a wrapper nobody calls with a constant
    'def f(cur, t):\n    cur.execute(sql.SQL("SELECT * FROM {}").format(t))',  # not an Identifier
    "def f(cur, req):\n    cur.execute(req.text)",
]
SAFE = [
    'def f(cur, name):\n    cur.execute("SELECT * FROM t WHERE name = %s", (name,))',
    'COLS = "a, b"\ndef f(cur, v):\n    cur.execute(f"SELECT {COLS} FROM t WHERE v = %s", (v,))',
    'def f(cur, r):\n    act = "DO NOTHING" if r else "DO UPDATE SET a=1"\n    cur.execute(f"INSERT {act}")',
    'def f(cur, s):\n    cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(s)))',
    'Q = """SELECT 1"""\ndef run(cur, q):\n    cur.execute(q)\ndef g(cur):\n    run(cur, Q)',
    'def f(cur, rows):\n    execute_values(cur, "INSERT INTO t VALUES %s", rows)',
]


@pytest.mark.parametrize("source", UNSAFE)
def test_the_checker_refuses_interpolated_sql(source: str) -> None:
    assert scan(source), source


@pytest.mark.parametrize("source", SAFE)
def test_the_checker_accepts_constant_sql(source: str) -> None:
    assert scan(source) == [], source
