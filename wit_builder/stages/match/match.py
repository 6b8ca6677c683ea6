"""Match pool captions against the query list, with MetaCLIP's substring semantics.

A caption matches a query when ` query ` (the query padded with one space on each
side) occurs in the caption after MetaCLIP's spacing: the caption padded with spaces,
`, . ; : ? !` and the backtick wrapped in spaces, tabs, newlines and carriage returns
turned into spaces. Matching is case-sensitive (`--no-case-sensitive` lowercases
both sides) and every distinct query found is kept, overlapping ones included.
Writes `matches/` (uid, query_ids) and the per-query counts `match_counts`.

This module is the stage (settings, the Ray units, the counts); the matcher itself is
`match_engine`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wit_builder.build.stage import StageContext, StageOutput, StageResult, run_stage
from wit_builder.config import at_least, check_fields, output_settings
from wit_builder.errors import WitError
from wit_builder.stages.match.match_engine import (  # noqa: F401 (the matcher's names where tests and benchmarks look)
    Matcher,
    code_book,
    reference_automaton,
    reference_match,
    spacing,
)

SAMPLE_ROWS = 20_000      # captions used to rank tokens by frequency (speed only)
# Settings that change what is written; the others only change how fast.
@dataclass
class Config:
    case_sensitive: bool = field(default=True, metadata={
        "help": "match case-sensitively, as MetaCLIP does (--no-case-sensitive lowercases "
                "queries and captions)"})
    workers: int = field(default=0, metadata={"check": at_least(0, "0 = one per CPU"),
        "help": "parts matched at once (Ray tasks; each worker process builds the automaton "
                "once); 0 = one per CPU", "output": False})
    batch_size: int = field(default=50_000, metadata={"check": at_least(1),
        "help": "captions matched per call; larger amortises per-batch setup", "output": False})


# ----------------------------------------------------------------------------------
# The stage.

def check(cfg: Config) -> None:
    """The flag values' own mistakes (bounds, on the fields), found before anything runs."""
    check_fields(cfg)


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Match every pool caption; write matches/ and the per-query counts."""
    check(cfg)
    params = output_settings(cfg)
    return run_stage(build, "match", params, lambda ctx: _match(ctx, cfg),
                     outputs=["matches"],
                     views={"matches": "matches/part-*.parquet",
                            "match_counts": "matches/counts/*.parquet"},
                     inputs=("queries", "pool"), force=force)


def _files(ctx: StageContext, stage: str, view: str) -> list:
    glob = ctx.inputs[stage].get("views", {}).get(view, f"{view}/*.parquet")
    files = sorted(ctx.build.glob(glob), key=str)
    if not files:
        raise WitError(f"{ctx.build / glob}: no files; rerun `wit-build {stage} --force`")
    return files


def _read_queries(files: list):
    """query_id (int32) and query (string) of the query list; WitError if unusable."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    tables = []
    for f in files:
        with f.open("rb") as raw:
            pf = pq.ParquetFile(raw)
            names = pf.schema_arrow.names
            missing = [c for c in ("query_id", "query") if c not in names]
            if missing:
                raise WitError(f"{f}: the query list has no {', '.join(missing)} column "
                               f"(columns: {', '.join(names)}); rerun `wit-build queries`")
            tables.append(pf.read(columns=["query_id", "query"]))
    table = pa.concat_tables(tables)
    table = table.filter(pc.and_(pc.is_valid(table.column("query")),
                                 pc.is_valid(table.column("query_id"))))
    if table.num_rows == 0:
        raise WitError(f"{files[0].parent}: the query list is empty; nothing can match. "
                       f"Rerun `wit-build queries` (lower --min-freq?)")
    return table.cast(pa.schema([("query_id", pa.int32()), ("query", pa.string())]))


# Built matchers of this worker process, by the key of their query list: a worker
# builds the automaton once and reuses it for every unit it runs.
_MATCHERS: dict[str, Matcher] = {}


def _matcher(key: str, shared: list) -> tuple[Matcher, bool]:
    """The matcher for `key`, built from `shared` = [ref of (queries, case_sensitive,
    sample)] on first use in this process; (matcher, whether it was built now)."""
    if key in _MATCHERS:
        return _MATCHERS[key], False
    import ray
    queries, case_sensitive, sample = ray.get(shared[0])
    _MATCHERS.clear()   # one list at a time: a new run's list replaces the old one
    _MATCHERS[key] = Matcher(queries.column("query").to_pylist(),
                             queries.column("query_id").to_numpy(),
                             case_sensitive=case_sensitive, sample=sample)
    return _MATCHERS[key], True


def match_unit(key: str, shared: list, src: str, row_group: int, dest: str,
               batch_size: int) -> dict[str, int]:
    """Ray task: match one row group of a pool file (a URL) into the Parquet part `dest`
    in the build, written whole (its presence says the unit is done)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from wit_builder import storage
    matcher, built = _matcher(key, shared)
    with storage.location(src).open("rb") as f:
        table = pq.ParquetFile(f).read_row_group(row_group, columns=["uid", "text"])
    parts, pairs = [], 0
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size)
        lists = matcher.match(chunk.column("text").combine_chunks())
        lengths = pc.list_value_length(lists)
        found = pc.greater(lengths, 0)
        parts.append(pa.table({"uid": chunk.column("uid").combine_chunks().filter(found),
                               "query_ids": lists.filter(found)}))
        pairs += int(pc.sum(lengths).as_py() or 0)
    out = pa.concat_tables(parts) if parts else pa.table(
        {"uid": pa.array([], pa.string()), "query_ids": pa.array([], pa.list_(pa.int32()))})
    with storage.writing(storage.location(dest)) as tmp:
        pq.write_table(out, tmp)
    return {"captions": table.num_rows, "matched": out.num_rows, "pairs": pairs,
            "built": int(built)}


def _units(pool_files: list, parts) -> tuple[list[tuple[str, int, Any]], int]:
    """(pool file, row group, output part) for every row group of the pool; the pool's rows."""
    import pyarrow.parquet as pq
    units, rows = [], 0
    for f in pool_files:
        with f.open("rb") as raw:
            meta = pq.ParquetFile(raw).metadata
        rows += meta.num_rows
        for rg in range(meta.num_row_groups):
            units.append((str(f), rg, parts / f"{f.stem}-{rg:04d}.parquet"))
    return units, rows


def _key(queries, case_sensitive: bool, sample) -> str:
    """What a worker's matcher is built from, hashed (the cache key)."""
    import hashlib
    h = hashlib.sha256(f"{case_sensitive}\0".encode())
    for col in (queries.column("query_id"), queries.column("query"), sample):
        if col is None:
            continue
        for chunk in (col.chunks if hasattr(col, "chunks") else [col]):
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
        h.update(b"\1")
    return h.hexdigest()[:24]


def _match(ctx: StageContext, cfg: Config) -> StageOutput:
    import pyarrow.parquet as pq
    import ray

    from wit_builder import storage
    from wit_builder.build import cluster
    queries = _read_queries(_files(ctx, "queries", "queries"))
    pool_files = _files(ctx, "pool", "pool")
    parts = ctx.work / "parts"
    units, captions = _units(pool_files, parts)
    finished = {p.name for p in parts.glob("*.parquet")} if parts.exists() else set()
    todo = [u for u in units if u[2].name not in finished]   # finished parts survive a kill
    # Captions to rank words by frequency (only speed depends on it).
    sample = None
    if units:
        with storage.location(units[0][0]).open("rb") as f:
            sample = pq.ParquetFile(f).read_row_group(0, columns=["text"]).column("text")[:SAMPLE_ROWS]
    t0, scanned_now, workers, built = time.time(), 0, 0, 0
    if todo:
        cluster.ensure_ray()
        workers = min(cfg.workers or cluster.cpus(), len(todo))
        key = _key(queries, cfg.case_sensitive, sample)
        shared = [ray.put((queries, cfg.case_sensitive, sample))]   # fetched once per worker
        done = cluster.run_units(
            match_unit, ((key, shared, src, rg, str(dest), cfg.batch_size) for src, rg, dest in todo),
            "match", total=len(todo), done=len(units) - len(todo), in_flight=workers,
            unit="part")
        scanned_now = sum(r["captions"] for r in done.results.values())
        built = sum(r["built"] for r in done.results.values())
    seconds = time.time() - t0

    out = ctx.output("matches")
    for _, _, dest in units:
        ctx.adopt(dest, f"matches/part-{dest.name}")
    (out / "counts").mkdir()
    stats = _count(ctx, [dest for _, _, dest in units], out, queries)
    if stats["matched"] == 0:
        raise WitError(f"no caption of the pool ({captions:,} rows) contains any of the "
                       f"{queries.num_rows:,} queries. Matching is MetaCLIP's: whole words, "
                       f"case-sensitive (try --no-case-sensitive), punctuation separated; "
                       f"check that the pool's text column holds captions")
    summary = {
        "captions": captions,
        "matched_captions": stats["matched"],
        "matched_share": round(stats["matched"] / max(captions, 1), 4),
        "pairs": stats["pairs"],
        "queries": queries.num_rows,
        "queries_matched": stats["queries_matched"],
        "workers": workers,
        "automata_built": built,
        "captions_per_second": round(scanned_now / max(seconds, 1e-9)),
    }
    return StageOutput(rows=stats["matched"], summary=summary)


def _count(ctx: StageContext, parts: list, out: Path, queries) -> dict[str, int]:
    """Write matches/counts/match_counts.parquet (every query, 0 if unmatched); totals."""
    from wit_builder import storage
    from wit_builder.build import catalog
    files = "[" + ", ".join(map(storage.sql_path, parts)) + "]"
    counts = storage.sql_path(out / "counts" / "match_counts.parquet")
    con = catalog.scratch(ctx.scratch, None, remote=ctx.build)
    try:
        con.register("queries_in", queries)
        con.execute(f"""
            COPY (SELECT q.query_id, coalesce(c.matches, 0)::BIGINT AS matches
                  FROM queries_in q LEFT JOIN (
                      SELECT qid AS query_id, count(*) AS matches
                      FROM (SELECT unnest(query_ids) AS qid FROM read_parquet({files}))
                      GROUP BY qid) c USING (query_id)
                  ORDER BY q.query_id)
            TO {counts} (FORMAT parquet)""")
        matched, pairs = con.execute(f"SELECT count(*), coalesce(sum(len(query_ids)), 0) "
                                     f"FROM read_parquet({files})").fetchall()[0]
        hit = con.execute(f"SELECT count(*) FROM read_parquet({counts}) WHERE matches > 0"
                          ).fetchall()[0][0]
        return {"matched": int(matched), "pairs": int(pairs), "queries_matched": int(hit)}
    finally:
        con.close()
