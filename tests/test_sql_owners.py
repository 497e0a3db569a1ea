"""SQL lives in the module that owns the table: the ownership map at the top of panza_local/store.py, read here,
against every SQL statement in panza_local/ and tui/ (found with `ast`, so comments and names do not count).

A module's SQL may write only its own tables, and may name another module's table only joined to one of its
own (pairs JOIN messages in playback); anything else goes through a named function of the owner."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "panza_local" / "store.py"
STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|WITH|PRAGMA)\b")
CLAUSE = re.compile(r"\b(FROM|JOIN|INTO)\s+[a-z_]")
TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+([a-z_]\w*)|table_info\((\w+)\)")
WRITE = re.compile(r"\b(?:INSERT(?: OR \w+)? INTO|REPLACE INTO|UPDATE|DELETE FROM)\s+([a-z_]\w*)")


def owners() -> dict[str, str]:
    """table → owning module or package (a path under panza_local/, "/" ending a package), from store.py."""
    out = {}
    for owner, tables in re.findall(r"^#   (\S+)\s+(.+)$", STORE.read_text(encoding="utf-8"), flags=re.MULTILINE):
        for t in tables.split(","):
            out[t.strip()] = owner
    return out


def owns(module: str, owner: str) -> bool:
    """Whether `module` (a path relative to panza_local/) is `owner` or inside it."""
    return module.startswith(owner) if owner.endswith("/") else module == owner


def statements(path: Path):
    """(line, SQL text) of every string in `path` that is SQL (an f-string's holes read as `?`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    parts |= {id(node.body[0].value) for node in ast.walk(tree)  # docstrings are prose
              if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body
              and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in sorted(ast.walk(tree), key=lambda n: getattr(n, "lineno", 0)):
        if id(node) in parts:  # a docstring, or a piece of an f-string (read with the whole string)
            continue
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if STATEMENT.match(text) or CLAUSE.search(text):
            yield node.lineno, text


def violations(module: str, path: Path, table_owner: dict[str, str]) -> list[str]:
    """What `module`'s SQL does with tables it does not own (or tables the map does not name)."""
    out = []
    for line, sql in statements(path):
        named = {a or b for a, b in TABLE.findall(sql)}
        unknown = named - set(table_owner)
        if unknown:
            out.append(f"{module}:{line} names {sorted(unknown)}, which the map in panza_local/store.py lacks")
        named &= set(table_owner)
        mine = {t for t in named if owns(module, table_owner[t])}
        foreign = named - mine
        written = {t for t in WRITE.findall(sql) if t in foreign}
        if written:
            out.append(f"{module}:{line} writes {sorted(written)} (owned by "
                       f"{', '.join(sorted({table_owner[t] for t in written}))})")
        elif foreign and not mine:
            out.append(f"{module}:{line} reads {sorted(foreign)} without a table of its own (owned by "
                       f"{', '.join(sorted({table_owner[t] for t in foreign}))}): call a function of the owner")
    return out


def sources():
    """(module path relative to panza_local/ (tui/ files as "../tui/..."), file) of every Python file."""
    pkg = ROOT / "panza_local"
    for path in sorted(pkg.rglob("*.py")):
        yield path.relative_to(pkg).as_posix(), path
    for path in sorted((ROOT / "tui").rglob("*.py")):
        yield "../" + path.relative_to(ROOT).as_posix(), path


def test_every_table_has_one_owner_in_the_map():
    created = set()
    for sql in (ROOT / "panza_local" / "migrations").glob("*.sql"):
        created |= set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", sql.read_text(encoding="utf-8")))
    created.add("schema_migrations")  # store.apply_migrations creates it
    assert set(owners()) == created, "panza_local/store.py's ownership map and the migrations' tables differ"
    for owner in set(owners().values()):
        assert (ROOT / "panza_local" / owner).exists(), f"the map names {owner}, which is not in panza_local/"


def test_sql_only_in_the_module_that_owns_the_table():
    table_owner = owners()
    found = [v for module, path in sources() for v in violations(module, path, table_owner)]
    assert not found, "SQL outside the owner of its table:\n" + "\n".join(found)


def test_the_checker_can_fail(tmp_path):
    table_owner = {"messages": "ingest/", "pairs": "playback/"}
    bad = tmp_path / "bad.py"
    bad.write_text('q = "SELECT body FROM messages WHERE id = ?"\n'
                   'w = f"UPDATE pairs SET status = {1} WHERE id = ?"\n'
                   'ok = "no sql: read from messages of the user"\n'
                   'j = "SELECT p.id FROM pairs p JOIN messages m ON m.id = p.message_id"\n'
                   'u = "SELECT * FROM mystery"\n')
    found = violations("evaluate/data.py", bad, table_owner)
    assert len(found) == 4 and "reads ['messages']" in found[0] and "writes ['pairs']" in found[1]
    assert "reads ['messages', 'pairs']" in found[2] and "mystery" in found[3]
    assert violations("playback/export.py", bad, table_owner)[0].endswith("call a function of the owner")
    assert len(violations("playback/export.py", bad, table_owner)) == 2  # its join is allowed; messages alone is not
