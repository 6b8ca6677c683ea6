"""The code's shape: no import cycles between wit's modules."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("wit_builder", "trainer")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of wit's packages and their folders."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the wit modules it imports anywhere in its text: at the top, inside
    functions (a lazy import is still a dependency) and under TYPE_CHECKING."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1]) if node.level else None
                module = ".".join(p for p in (base, node.module) if p)
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in graph and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "wit_builder.build.stage" in graph and "wit_builder.build.catalog" in graph["wit_builder.build.stage"]
    found = cycles(graph)
    assert not found, "import cycles (move the shared part into a module both can import): " + \
        "; ".join(" <-> ".join(c) for c in found)


# ----------------------------------------------------------------------------------
# The data contracts are written down once (wit_builder.schemas); the docs agree.

def _table_rows(doc: str, heading: str) -> list[list[str]]:
    text = (REPO / "docs" / doc).read_text().split(heading, 1)[1]
    rows = []
    for line in text.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # the header row off


def test_the_fetch_statuses_table_is_the_enum():
    from wit_builder.schemas import TRANSIENT, FetchStatus
    rows = _table_rows("fetch.md", "## Statuses")
    assert [r[0].strip("`") for r in rows] == [s.value for s in FetchStatus]
    for r in rows:
        status = r[0].strip("`")
        assert (r[-1] == "yes") == (status in TRANSIENT), (status, r[-1])


def test_the_drop_reasons_table_is_the_enum():
    from wit_builder.schemas import DROP_REASONS
    text = (REPO / "docs" / "curate.md").read_text()
    listed = re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", text, re.M)
    assert [reason for _, reason in listed] == list(DROP_REASONS)
    assert [int(n) for n, _ in listed] == list(range(1, len(DROP_REASONS) + 1))


def test_the_fetch_status_columns_are_the_schema():
    from wit_builder.schemas import FETCH_COLUMNS, fetch_status_schema
    from wit_builder.stages.curate import curate
    from wit_builder.stages.fetch import fetch_status
    assert fetch_status.with_status(None).schema == fetch_status_schema()
    assert fetch_status_schema().names == list(FETCH_COLUMNS)
    assert set(curate.FETCH_COLUMNS) | set(curate.SIGNATURE) == set(FETCH_COLUMNS)
    row = next(line for line in (REPO / "docs" / "architecture.md").read_text().splitlines()
               if line.startswith("| fetch | `fetch/`"))
    where = [row.find(f" {c}") for c in FETCH_COLUMNS]
    assert -1 not in where and where == sorted(where), dict(zip(FETCH_COLUMNS, where))


def test_the_skip_key_comes_from_the_fields_own_mark():
    """A stage's skip key is every setting not marked `"output": False`: a field added to
    a Config is in it without anyone listing it; the marked ones are exactly these."""
    import dataclasses
    from dataclasses import dataclass, field

    from wit_builder.build import pipeline
    from wit_builder.config import output_settings

    @dataclass
    class Example:
        new_setting: int = 1
        threads: int = field(default=4, metadata={"output": False})
    assert output_settings(Example()) == {"new_setting": 1}
    marked = {n: sorted(f.name for f in dataclasses.fields(pipeline.module(n).Config)
                        if not f.metadata.get("output", True))
              for n in pipeline.STAGES if pipeline.available(n)}
    assert marked == {"queries": ["chunk_mb", "workers"], "pool": ["memory_limit"],
                      "match": ["batch_size", "workers"], "balance": ["memory_limit"],
                      "fetch": ["dns_server", "retry_failed"], "curate": [], "publish": []}
