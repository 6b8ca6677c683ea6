"""The DuckDB catalog: views over the Parquet files of each stage.

Parquet files and the stage records (`_stages/*.json`) are the source of truth;
`catalog.duckdb` only holds views and can be rebuilt from them at any time. Views
use paths relative to the build directory, and every connection made here sets
DuckDB's `file_search_path` to the build directory, so the directory can be moved
or copied and still be queried (with the duckdb CLI: `cd wit-data && duckdb catalog.duckdb`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.build.records import records, stale
from wit_builder.errors import WitError
from wit_builder.sql import literal

DB_NAME = "catalog.duckdb"
_catalog_path: Path | None = None  # --catalog: where a remote build's catalog lives


def set_path(path: str | None) -> None:
    """`--catalog PATH`: the local catalog file for this command's (remote) build."""
    global _catalog_path
    _catalog_path = Path(path).expanduser().absolute() if path else None


def db_path(build) -> Path:
    """catalog.duckdb: inside a local build; for a remote build (a DuckDB file cannot
    live in a bucket) a local, rebuildable cache under ~/.cache/wit/catalogs/, or
    --catalog."""
    if _catalog_path is not None:
        return _catalog_path
    if not storage.is_remote(build):
        return Path(build) / DB_NAME
    key = hashlib.sha256(str(build).encode()).hexdigest()[:16]
    return storage.cache_dir("catalogs", key) / DB_NAME


def connect(build, read_only: bool = False, allow_files=()):
    """A DuckDB connection to the build's catalog with paths resolved against it.

    `read_only` connections are for users' SQL: the catalog file is opened read-only,
    extensions are neither installed nor loaded on demand, and DuckDB may touch no file
    outside the build (and `allow_files`, local paths the user named with --allow-files):
    external access is off but for those directories, which also locks the settings."""
    import duckdb
    build = storage.location(build)
    db = db_path(build)
    if read_only and storage.is_remote(build):
        storage.check_reachable(build)
        if not (build / "_stages").exists():
            raise WitError(f"{build}: no wit build here (no _stages/ records); check --out, "
                           "or run a stage first")
        refresh(build)  # a local cache of the bucket's records: bring it up to date
    if read_only and not db.exists():
        raise WitError(f"{build}: no catalog here ({DB_NAME} missing); check --out, "
                       f"or run a stage first, or `wit-build catalog rebuild --out {build}`")
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
              "allow_community_extensions": False} if read_only else {}
    try:
        con = duckdb.connect(str(db), read_only=read_only, config=config)
    except duckdb.Error as e:
        raise WitError(f"{db}: cannot open the catalog ({e}); "
                       f"`wit-build catalog rebuild --out {build}` recreates it") from None
    if storage.is_remote(build):
        storage.register(con, build)
    else:
        con.execute(f"SET file_search_path = {literal(str(Path(build).resolve()))}")
    if read_only:
        _confine(con, build, allow_files)
    return con


def _confine(con, build, allow_files) -> None:
    """Let `con` reach only the build's files (and `allow_files`); no setting changes after."""
    dirs, files = [], []
    if storage.is_remote(build):
        dirs.append(str(build).rstrip("/") + "/")
    else:
        root = Path(build).resolve()
        dirs.append(str(root) + "/")
        # A relative name (a view's glob, `world/pool/truth.parquet`) is checked as written,
        # then each file it resolves to: the build's own entries pass both ways.
        for child in sorted(root.iterdir()):
            (dirs if child.is_dir() else files).append(child.name + ("/" if child.is_dir() else ""))
    for given in allow_files:
        p = Path(given).expanduser()
        if not p.exists():
            con.close()
            raise WitError(f"--allow-files {given}: no such file or folder")
        # as written (a relative name resolves against the folder the command runs in)
        # and resolved (what DuckDB opens)
        for form in dict.fromkeys((os.path.normpath(given), str(p.resolve()))):
            (dirs if p.is_dir() else files).append(form + ("/" if p.is_dir() else ""))
    if allow_files and not storage.is_remote(build):
        con.execute(f"SET file_search_path = {literal(str(Path(build).resolve()) + ',' + os.getcwd())}")
    con.execute(f"SET allowed_directories = [{', '.join(map(literal, dirs))}]")
    if files:
        con.execute(f"SET allowed_paths = [{', '.join(map(literal, files))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")   # no setting changes from here on


def _views(recs: list[dict[str, Any]]) -> dict[str, str]:
    """View name -> relative glob from the stage records, later stages overriding earlier ones."""
    views: dict[str, str] = {}
    for rec in recs:
        views.update(rec.get("views", {}))
    return views


def refresh(build: str | Path) -> list[str]:
    """(Re)create every view and the `stages` view from the stage records."""
    build = storage.location(build)
    remote = storage.is_remote(build)
    # Local views are relative (a moved build still answers); remote ones are URLs.
    where = (lambda rel: str(build / rel)) if remote else (lambda rel: rel)
    con = connect(build)
    try:
        recs = records(build)  # read once: in a bucket, each record is a GET
        made = []
        for name, rel in _views(recs).items():
            if not list(build.glob(rel)):
                continue  # an output removed by hand: leave no view that errors on use
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet("
                        f"{literal(where(rel))}, union_by_name = true)")
            made.append(name)
        if (build / "_stages").exists() and list((build / "_stages").glob("*.json")):
            old = ", ".join(literal(n) for n in stale(recs)) or "NULL"
            con.execute("CREATE OR REPLACE VIEW stages AS SELECT stage, run_id, CASE WHEN stage "
                        f"IN ({old}) THEN 'stale' ELSE status END AS status, "
                        "params::JSON::VARCHAR AS parameters, started::TIMESTAMPTZ AS started, "
                        "finished::TIMESTAMPTZ AS finished, seconds, rows "
                        f"FROM read_json({literal(where('_stages/*.json'))}, union_by_name = true, "
                        "maximum_object_size = 67108864) ORDER BY finished")
            made.append("stages")
        return made
    finally:
        con.close()


def rebuild(build: str | Path) -> list[str]:
    """Delete catalog.duckdb and recreate it from the Parquet files and stage records."""
    build = storage.location(build)
    storage.check_reachable(build)
    if not build.exists():
        raise WitError(f"--out {build}: no such build directory")
    if not (build / "_stages").exists():
        raise WitError(f"--out {build}: not a wit build directory (no _stages/ folder)")
    db = db_path(build)
    for suffix in ("", ".wal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    return refresh(build)


def check_read_only(sql: str) -> None:
    """Refuse anything but SELECT-like statements, naming the offending one.

    What an EXPLAIN runs is checked too (`EXPLAIN ANALYZE COPY ... TO` executes the COPY),
    and of DuckDB's multi-statements only PIVOT/UNPIVOT queries pass."""
    import duckdb
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise WitError(f"SQL does not parse: {e}") from None
    if not statements:
        raise WitError("no SQL statement given")
    for st in statements:
        problem = _write_in(st, depth=0)
        if problem:
            raise WitError(f"`wit-build sql` is read-only; refusing {problem} "
                           f"`{' '.join(st.query.split())[:60]}`. Use duckdb directly to change data.")


def _write_in(st, depth: int) -> str | None:
    """What in statement `st` is not a plain query ("the COPY statement"), or None."""
    import duckdb
    kind, text = st.type.name, st.query
    if kind == "SELECT":
        return None
    i = _skip(text, 0)
    first = _keyword(text, i)
    if kind == "MULTI" and first != "EXPLAIN":
        # DuckDB splits a PIVOT into several statements; so is CREATE TABLE ... AS PIVOT
        if _keyword(text, _skip(text, 0, parens=True)) in ("PIVOT", "UNPIVOT"):
            return None
        return (f"the {first} statement" if first not in ("", "WITH") else
                "a PIVOT after WITH (write it `PIVOT (WITH ... SELECT ...) ON ...`)")
    if kind not in ("EXPLAIN", "MULTI") or depth > 4:
        return f"the {first or kind} statement"
    if first != "EXPLAIN":
        return "an EXPLAIN whose inner statement cannot be told"
    i = _skip(text, i + len("EXPLAIN"))
    if _keyword(text, i) in ("ANALYZE", "ANALYSE"):
        i = _skip(text, i + len("ANALYZE"))
    # `EXPLAIN (FORMAT json) stmt` or `EXPLAIN (SELECT ...)`: every reading must be safe
    candidates = [text[i:]]
    if text[i:i + 1] == "(":
        end = _close_paren(text, i)
        if end is not None:
            candidates.append(text[_skip(text, end + 1):])
    parsed = 0
    for cand in candidates:
        try:
            inner = duckdb.extract_statements(cand)
        except duckdb.Error:
            continue
        parsed += 1
        for sub in inner:
            problem = _write_in(sub, depth + 1)
            if problem:
                return f"{problem} inside EXPLAIN"
    return None if parsed else "an EXPLAIN whose inner statement cannot be told"


def _skip(text: str, i: int, parens: bool = False) -> int:
    """Index of the first character at or after `i` that is no space or comment (nor `(`)."""
    n = len(text)
    while i < n:
        if text[i].isspace() or (parens and text[i] == "("):
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):   # DuckDB nests block comments
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    return i


def _keyword(text: str, i: int) -> str:
    j = i
    while j < len(text) and (text[j].isalnum() or text[j] == "_"):
        j += 1
    return text[i:j].upper()


def _close_paren(text: str, i: int) -> int | None:
    """Index of the `)` closing the `(` at `i`, skipping strings, quoted names and comments."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = text.find(c, i + 1)
            while j >= 0 and text.startswith(c * 2, j):   # '' and "" escape themselves
                j = text.find(c, j + 2)
            if j < 0:
                return None
            i = j + 1
            continue
        if text.startswith("--", i) or text.startswith("/*", i):
            i = _skip(text, i)
            continue
        depth += (c == "(") - (c == ")")
        if depth == 0:
            return i
        i += 1
    return None


def query(build: str | Path, sql: str, allow_files=()):
    """Run a read-only query; returns a pyarrow Table. DuckDB reads only the build's
    files and `allow_files` (see `connect`)."""
    import duckdb
    check_read_only(sql)
    con = connect(build, read_only=True, allow_files=allow_files)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.PermissionException as e:
        msg = str(e).splitlines()[0]
        raise WitError(f"SQL error: {msg}. `wit-build sql` reads only the build's own files; "
                       "--allow-files PATH lets it read a file or folder of yours") from None
    except duckdb.Error as e:
        msg = str(e).splitlines()[0]
        raise WitError(f"SQL error: {msg}. Tables here: {', '.join(list_views(con)) or 'none yet'}") from None
    finally:
        con.close()


def list_views(con) -> list[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def describe(build: str | Path) -> dict[str, Any]:
    con = connect(build, read_only=True)
    try:
        return {v: con.execute(f"SELECT count(*) FROM {v}").fetchall()[0][0] for v in list_views(con)}
    finally:
        con.close()


def memory_limit_setting(work: str):
    """The `memory_limit` setting of a stage that runs DuckDB for `work`, checked up front."""
    from dataclasses import field
    return field(default="4GB", metadata={
        "help": f"DuckDB memory limit for {work} (spills to disk beyond)",
        "check": memory_limit_problem, "output": False})


def memory_limit_problem(value: str) -> str | None:
    """None if DuckDB takes `value` as a memory limit, else what is wrong with it."""
    import duckdb
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET memory_limit = {literal(str(value))}")
    except duckdb.Error:
        return "not a size DuckDB understands (e.g. 4GB, 500MB)"
    finally:
        con.close()
    return None


def scratch(work: str | Path, memory_limit: str | None = "4GB", db: str | Path | None = None,
            keep_order: bool = True, remote=None):
    """A DuckDB connection for a stage's own set logic, spilling to `work`/duckdb-tmp.

    `work` is a local folder (a stage's `ctx.scratch`); `memory_limit` bounds DuckDB
    (its default is 80% of the machine); `db` makes it file-backed; `keep_order=False`
    lets unordered queries skip insertion order; `remote` (a build location) lets it
    read and write that location's URLs.
    """
    import duckdb
    tmp = Path(work) / "duckdb-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db) if db else ":memory:")
    if memory_limit:
        try:
            con.execute(f"SET memory_limit = {literal(memory_limit)}")
        except duckdb.Error:
            con.close()
            raise WitError(f"--memory-limit {memory_limit!r}: not a size DuckDB understands "
                           f"(e.g. 4GB, 500MB)") from None
    con.execute(f"SET temp_directory = {literal(str(tmp))}")
    if not keep_order:
        con.execute("SET preserve_insertion_order = false")
    if remote is not None:
        storage.register(con, remote)
    return con
