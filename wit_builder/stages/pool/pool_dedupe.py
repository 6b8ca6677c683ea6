"""The pool's dedupe in DuckDB: per uid bucket, the first occurrence of each (url, text)
across every file's chunks; colliding uids of distinct pairs renamed, all kept."""
from __future__ import annotations

from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import StageContext
from wit_builder.stages.pool.pool_read import BUCKET, ORDER


def dedupe(ctx: StageContext, dirs: list, buckets: int, memory_limit: str) -> dict[str, int]:
    """Keep the first occurrence of each (url, text) per bucket into work/parts/part-B.parquet
    (resumable); the non-empty parts become pool/part-B.parquet at the commit.

    Distinct pairs whose uids collide (the same uid lands in the same bucket) are all
    kept: the first in input order keeps its uid, the n-th gets md5(uid:n), 32 hex digits
    as well. The count (pairs kept less distinct uids read) is in work/parts/part-B.json,
    written after the part; a part counts as finished only with it."""
    import pyarrow.parquet as pq
    names = {d.name for d in dirs}
    chunks = sorted((c for c in dirs[0].parent.glob("f*/chunk-*.parquet") if c.parent.name in names),
                    key=str)
    done_dir = ctx.work / "parts"
    finished = ({p.name for p in done_dir.glob("part-*.parquet") if p.with_suffix(".json").exists()}
                if done_dir.exists() else set())
    con = catalog.scratch(ctx.scratch, memory_limit, keep_order=False, remote=ctx.build)
    try:
        files = "[" + ", ".join(map(storage.sql_path, chunks)) + "]"
        for b in range(buckets):
            dest = done_dir / f"part-{b:05d}.parquet"
            if dest.name in finished:
                continue
            bucket = (f"SELECT * FROM read_parquet({files}, union_by_name = true) "
                      f"WHERE {BUCKET} = {b} QUALIFY row_number() OVER "
                      f"(PARTITION BY uid, url, text ORDER BY {ORDER}) = 1")
            with storage.writing(dest) as tmp:
                con.execute(f"COPY (SELECT * EXCLUDE ({ORDER}, {BUCKET}) FROM ({bucket}) "
                            f"ORDER BY {ORDER}) TO {storage.sql_path(tmp)} (FORMAT parquet)")
                with open(tmp, "rb") as f:
                    kept_rows = pq.ParquetFile(f).metadata.num_rows
                # distinct pairs kept less distinct uids read (the uid column alone): collisions
                uids = con.execute(f"SELECT count(DISTINCT uid) FROM read_parquet({files}, "
                                   f"union_by_name = true) WHERE {BUCKET} = {b}").fetchall()[0][0]
                if kept_rows > uids:  # rare: write the bucket again, later pairs renamed
                    con.execute(f"""
                        COPY (SELECT * EXCLUDE ({ORDER}, {BUCKET}, _wit_n) REPLACE (
                                     CASE WHEN _wit_n = 1 THEN uid ELSE md5(uid || ':' || _wit_n) END AS uid)
                              FROM (SELECT *, row_number() OVER (PARTITION BY uid ORDER BY {ORDER}) AS _wit_n
                                    FROM ({bucket}))
                              ORDER BY {ORDER})
                        TO {storage.sql_path(tmp)} (FORMAT parquet)""")
            storage.write_json(done_dir / f"part-{b:05d}.json", {"uid_collisions": int(kept_rows - uids)})
        rows = parts = 0
        kept = []
        for b in range(buckets):
            src = done_dir / f"part-{b:05d}.parquet"
            with src.open("rb") as f:
                n = pq.ParquetFile(f).metadata.num_rows
            if n:
                ctx.adopt(src, f"pool/{src.name}")
                kept.append(src)
                rows, parts = rows + n, parts + 1
        texts = con.execute(f"SELECT count(DISTINCT hash(text)) FROM read_parquet("
                            f"[{', '.join(map(storage.sql_path, kept))}])").fetchall()[0][0]
        collisions = sum(storage.read_json(done_dir / f"part-{b:05d}.json")["uid_collisions"]
                         for b in range(buckets))
        return {"rows": rows, "texts": int(texts), "parts": parts, "uid_collisions": collisions}
    finally:
        con.close()
