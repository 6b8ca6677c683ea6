"""Balance the matched pairs: no query selects more than --per-query of them.

Every kept pair gets `selected_by`, the query that selected it. Default rule (`cap`):
a pair is claimed by its rarest matched query (fewest matches, ties by id); a query
with more claims than --per-query keeps those with the smallest seeded hash of
(uid, query). So every pair matching a query that has at most --per-query matches
is kept, and the selection depends only on the seed, never on workers or
partitions. `--mode metaclip` applies MetaCLIP's rule instead: keep a pair with
probability 1 - prod(1 - min(1, per_query / matches_e)) over its matched queries e,
with seeded hash coins. Writes `selected/` and per-query counts before and after.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import StageContext, StageOutput, StageResult, read_record, run_stage
from wit_builder.config import at_least, check_fields, one_of, output_settings
from wit_builder.errors import WitError

MODES = ("cap", "metaclip")
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB          # splitmix64 finaliser
_G1, _G2 = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03          # odd mixing constants
_MASK64 = (1 << 64) - 1
_NO_QUERY = (1 << 63) - 1


@dataclass
class Config:
    per_query: int = field(default=20_000, metadata={"check": at_least(1),
        "help": "most pairs any one query may select (CLIP: 20,000)"})
    seed: int = field(default=0, metadata={"help": "seed of the hash that picks among a query's pairs"})
    mode: str = field(default="cap", metadata={"check": one_of(MODES),
        "help": "cap: a hard per-query cap, rarest query claims a pair; metaclip: "
                "MetaCLIP's probabilistic rule", "choices": MODES})
    memory_limit: str = catalog.memory_limit_setting("counting and selecting the pairs")


# ----------------------------------------------------------------------------------
# Seeded hashes (numpy, wrapping uint64 arithmetic).

def _mix(x):
    import numpy as np
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(_M1)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(_M2)
    return x ^ (x >> np.uint64(31))


def priority(seed: int, uid64, query_ids):
    """Seeded 63-bit hash of (uid, query): the order in which a query keeps its pairs,
    and (divided by 2**63) the uniform coin of MetaCLIP mode."""
    import numpy as np
    q = np.asarray(query_ids).astype(np.uint64)
    with np.errstate(over="ignore"):
        salt = _mix((q + np.uint64(1)) * np.uint64(_G1) + np.uint64(seed & _MASK64) * np.uint64(_G2))
        return (_mix(np.asarray(uid64, dtype=np.uint64) ^ salt) >> np.uint64(1)).astype(np.int64)


def uid_numbers(uids) -> "Any":
    """The 64-bit numbers behind uids (a pyarrow string array): their first 16 hex digits
    (all of a 16-digit uid of an older build, half of a 32-digit one)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    n = len(uids)
    arr = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    arr = arr.cast(pa.string())                      # int32 offsets below
    width = 32 if n and pc.all(pc.equal(pc.binary_length(arr), 32)).as_py() else 16
    if n and arr.null_count == 0 and pc.all(pc.equal(pc.binary_length(arr), width)).as_py():
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + 1]
        raw = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[0] + width * n]
        lut = np.full(256, 255, np.uint8)
        lut[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
        lut[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
        lut[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
        nib = lut[raw.reshape(n, width)[:, :16]]
        if (nib != 255).all():
            out = np.zeros(n, np.uint64)
            for i in range(16):
                out = (out << np.uint64(4)) | nib[:, i].astype(np.uint64)
            return out
    try:
        return np.array([int(u[:16], 16) for u in arr.to_pylist()], dtype=np.uint64)
    except (TypeError, ValueError):
        raise WitError("the pool's uid column holds values that are not 32 hex digits; "
                       "rerun `wit-build pool --force`") from None


# ----------------------------------------------------------------------------------
# Pass 2, per match part (a Ray task): the claiming query and its priority.

def candidates(src: str, dest: str, counts, per_query: int, seed: int, mode: str) -> int:
    """Write, for every matched pair in `src`: uid, query_ids, rarest (query with the
    fewest matches), rarest_matches, selected_by and priority (null when MetaCLIP's
    coins all fail). Returns the number of rows. `src` and `dest` are paths or URLs;
    `dest` is written whole (nothing when there are no rows)."""
    import contextlib
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(storage.location(src).open("rb"))
        return _candidates(f, storage.location(dest), counts, per_query, seed, mode, stack)


def _candidates(src, dest, counts, per_query: int, seed: int, mode: str, stack) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    low = np.int64(0xFFFFFFFF)
    writer, rows = None, 0
    for batch in pq.ParquetFile(src).iter_batches(batch_size=65536, columns=["uid", "query_ids"]):
        lists = batch.column("query_ids")
        offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.flatten().to_numpy().astype(np.int64)
        offsets -= offsets[0]
        nonempty = offsets[1:] > offsets[:-1]
        if not nonempty.all():     # (match writes none; tolerate them)
            batch = batch.filter(pa.array(nonempty))
            lists = batch.column("query_ids")
            offsets = lists.offsets.to_numpy().astype(np.int64)
            offsets -= offsets[0]
            values = lists.flatten().to_numpy().astype(np.int64)
        if batch.num_rows == 0:
            continue
        starts = offsets[:-1]
        lengths = np.diff(offsets)
        n_matches = counts[values]
        key = (n_matches << np.int64(32)) | values          # order: fewest matches, then id
        rarest_key = np.minimum.reduceat(key, starts)
        uid64 = uid_numbers(batch.column("uid"))
        if mode == "cap":
            chosen_key = rarest_key
        else:
            coin = priority(seed, np.repeat(uid64, lengths), values)
            p = np.minimum(1.0, per_query / np.maximum(n_matches, 1))
            wins = coin.astype(np.float64) < p * 2.0 ** 63
            chosen_key = np.minimum.reduceat(np.where(wins, key, _NO_QUERY), starts)
        kept = chosen_key != _NO_QUERY
        selected_by = (chosen_key & low).astype(np.int32)
        prio = priority(seed, uid64, selected_by)
        table = pa.table({
            "uid": batch.column("uid"),
            "query_ids": lists,
            "rarest": pa.array((rarest_key & low).astype(np.int32)),
            "rarest_matches": pa.array(rarest_key >> np.int64(32)),
            "selected_by": pa.array(selected_by, mask=~kept),
            "priority": pa.array(prio, mask=~kept),
        })
        if writer is None:
            tmp = stack.enter_context(storage.writing(dest))
            writer = stack.enter_context(pq.ParquetWriter(tmp, table.schema))
        writer.write_table(table)
        rows += table.num_rows
    return rows


# ----------------------------------------------------------------------------------
# The stage.

def check(cfg: Config) -> None:
    """The flag values' own mistakes (bounds and names, on the fields), found before
    anything runs."""
    check_fields(cfg)


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Select at most --per-query pairs per query (or MetaCLIP's rule) into selected/."""
    check(cfg)
    params = output_settings(cfg)
    return run_stage(build, "balance", params, lambda ctx: _balance(ctx, cfg),
                     outputs=["selected"],
                     views={"selected": "selected/part-*.parquet",
                            "balance_counts": "selected/counts/*.parquet"},
                     inputs=("match", "pool"), force=force)


def _glob(ctx: StageContext, stage: str, view: str) -> str:
    """The upstream view's files as a quoted glob (a path or URL) for DuckDB."""
    rel = ctx.inputs[stage].get("views", {}).get(view)
    if not rel or not list(ctx.build.glob(rel)):
        raise WitError(f"{ctx.build}: the {stage} stage's {view} files are missing; "
                       f"rerun `wit-build {stage} --force`")
    return storage.sql_path(ctx.build / rel)


def _balance(ctx: StageContext, cfg: Config) -> StageOutput:
    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from wit_builder.build import cluster
    matches, counts_glob = _glob(ctx, "match", "matches"), _glob(ctx, "match", "match_counts")
    pool = _glob(ctx, "pool", "pool")
    con = catalog.scratch(ctx.scratch, cfg.memory_limit, keep_order=False, remote=ctx.build)
    try:
        qc = con.execute(f"SELECT query_id, matches FROM read_parquet({counts_glob})").fetchnumpy()
        if len(qc["query_id"]) == 0 or qc["query_id"].min() < 0:
            raise WitError(f"{counts_glob[1:-1]}: no (or negative) query ids; rerun `wit-build match --force`")
        counts = np.zeros(int(qc["query_id"].max()) + 1, np.int64)
        counts[qc["query_id"]] = qc["matches"]

        # Pass 2a: per part, the claiming query and the priority of each pair.
        cand_dir = ctx.work / f"cand-{cfg.mode}"
        parts = sorted(ctx.build.glob(ctx.inputs["match"]["views"]["matches"]), key=str)
        finished = {p.name for p in cand_dir.glob("*.parquet")} if cand_dir.exists() else set()
        todo = [p for p in parts if p.name not in finished]
        if todo:
            cluster.ensure_ray()
            ref = ray.put(counts)
            cluster.run_units(candidates, ((str(p), str(cand_dir / p.name), ref, cfg.per_query,
                                            cfg.seed, cfg.mode) for p in todo),
                              "balance: candidates", total=len(todo),
                              done=len(parts) - len(todo), unit="part")
        if not cand_dir.exists() or not list(cand_dir.glob("*.parquet")):
            raise WitError(f"{matches[1:-1]}: no matched pairs to balance; rerun `wit-build match`")
        cand = storage.sql_path(cand_dir / "*.parquet")
        con.execute(f"CREATE VIEW cand AS SELECT * FROM read_parquet({cand})")

        # Pass 2b: which candidates are kept.
        k = cfg.per_query
        if cfg.mode == "cap":
            _cutoffs(con, k)
            kept = ("SELECT c.uid, c.query_ids, c.selected_by FROM cand c "
                    "LEFT JOIN cutoff t ON c.selected_by = t.query_id "
                    "WHERE t.query_id IS NULL OR c.priority < t.priority "
                    "OR (c.priority = t.priority AND c.uid <= t.uid)")
        else:
            kept = "SELECT uid, query_ids, selected_by FROM cand WHERE selected_by IS NOT NULL"

        out = ctx.output("selected")
        # the pool's own `uid` column (renamed source_uid by pool) travels to the shards
        pool_cols = [r[0] for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({pool}, union_by_name = true)").fetchall()]
        source = ", p.source_uid::VARCHAR AS source_uid" if "source_uid" in pool_cols else ""
        con.execute(f"""
            COPY (SELECT p.uid, p.url, p.text, k.query_ids, k.selected_by{source}
                  FROM ({kept}) k JOIN read_parquet({pool}, union_by_name = true) p
                  ON p.uid = k.uid)
            TO '{out}' (FORMAT parquet, PER_THREAD_OUTPUT true, FILENAME_PATTERN 'part-{{i}}',
                        OVERWRITE_OR_IGNORE true)""")
        if not list(out.glob("part-*.parquet")):
            _empty_selected(out / "part-0.parquet")
        summary = _statistics(con, ctx, cfg, out, counts_glob, pool)
    finally:
        con.close()
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))
    return StageOutput(rows=rows, summary=summary)


def _cutoffs(con, k: int) -> None:
    """Table cutoff(query_id, priority, uid): the k-th smallest (priority, uid) among the
    candidates of each query claimed more than k times. Candidates far above the
    expected k-th priority are skipped first (priorities are uniform); a query left
    with fewer than k after that is redone without the shortcut, so it never changes
    the result."""
    con.execute("CREATE TABLE claims AS SELECT selected_by AS query_id, count(*) AS n "
                "FROM cand GROUP BY 1")
    bound = f"least(1.0, ({k} + 8 * sqrt({k}) + 64) / o.n) * 9223372036854775807.0"
    window = ("SELECT query_id, priority, uid FROM ("
              "  SELECT c.selected_by AS query_id, c.priority, c.uid, row_number() OVER ("
              "    PARTITION BY c.selected_by ORDER BY c.priority, c.uid) AS rn"
              "  FROM cand c JOIN ({over}) o ON c.selected_by = o.query_id {where}"
              f") WHERE rn = {k}")
    over = f"SELECT query_id, n FROM claims WHERE n > {k}"
    con.execute("CREATE TABLE cutoff AS " + window.format(
        over=over, where=f"WHERE c.priority::DOUBLE < {bound}"))
    short = f"{over} AND query_id NOT IN (SELECT query_id FROM cutoff)"
    con.execute("INSERT INTO cutoff " + window.format(over=short, where=""))


def _empty_selected(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"uid": pa.array([], pa.string()), "url": pa.array([], pa.string()),
                             "text": pa.array([], pa.string()),
                             "query_ids": pa.array([], pa.list_(pa.int32())),
                             "selected_by": pa.array([], pa.int32())}), path)


def _statistics(con, ctx: StageContext, cfg: Config, out: Path, counts_glob: str,
                pool: str) -> dict[str, Any]:
    """balance_counts (query_id, matches, claimed, selected) and the printed summary."""
    k = cfg.per_query
    (out / "counts").mkdir()
    con.execute(f"""
        CREATE TABLE bc AS
        SELECT m.query_id, m.matches, coalesce(c.n, 0) AS claimed, coalesce(s.n, 0) AS selected
        FROM read_parquet({counts_glob}) m
        LEFT JOIN (SELECT selected_by AS query_id, count(*) AS n FROM cand
                   WHERE selected_by IS NOT NULL GROUP BY 1) c USING (query_id)
        LEFT JOIN (SELECT selected_by AS query_id, count(*) AS n
                   FROM read_parquet('{out}/part-*.parquet') GROUP BY 1) s USING (query_id)""")
    con.execute(f"COPY (SELECT * FROM bc ORDER BY query_id) TO "
                f"'{out / 'counts' / 'balance_counts.parquet'}' (FORMAT parquet)")

    def one(sql: str):
        return con.execute(sql).fetchall()[0]

    pairs, tail = one(f"SELECT count(*), count(*) FILTER (rarest_matches <= {k}) FROM cand")
    selected, tail_sel, sel_texts = one(f"""
        SELECT count(*), count(*) FILTER (bc.matches <= {k}), count(DISTINCT hash(s.text))
        FROM read_parquet('{out}/part-*.parquet') s JOIN bc ON s.selected_by = bc.query_id""")
    matched_texts = one(f"SELECT count(DISTINCT hash(p.text)) FROM read_parquet({pool}, "
                        f"union_by_name = true) p SEMI JOIN cand c ON p.uid = c.uid")[0]

    def dist(col: str) -> dict[str, int]:
        mx, med, p99, over = one(f"""
            SELECT coalesce(max({col}), 0), coalesce(median({col}), 0),
                   coalesce(quantile_disc({col}, 0.99), 0), count(*) FILTER ({col} > {k})
            FROM bc WHERE {col} > 0""")
        return {"max": int(mx), "median": int(med), "p99": int(p99), "over_cap": int(over)}

    before, after = dist("matches"), dist("selected")
    rec = read_record(ctx.build, "queries")  # the query's text, where the build has it
    queries = ctx.build / rec["views"]["queries"] if rec and "queries" in rec.get("views", {}) else None
    text = (f"(SELECT any_value(query) FROM read_parquet({storage.sql_path(queries)}) q "
            "WHERE q.query_id = bc.query_id)" if queries is not None else "NULL")
    top = con.execute(f"SELECT coalesce({text}, query_id::VARCHAR), matches, selected FROM bc "
                      "ORDER BY matches DESC, query_id LIMIT 5").fetchall()
    return {
        "mode": cfg.mode, "per_query": k, "seed": cfg.seed,
        "pairs_matched": int(pairs), "pairs_selected": int(selected),
        "per_query_before": before, "per_query_after": after,
        "queries_over_cap_before": before["over_cap"],
        "queries_over_cap_after": after["over_cap"],
        "tail_share_before": round(tail / max(pairs, 1), 4),
        "tail_share_after": round(tail_sel / max(selected, 1), 4),
        "pairs_per_text_before": round(pairs / max(matched_texts, 1), 3),
        "pairs_per_text_after": round(selected / max(sel_texts, 1), 3),
        "largest_queries": [f"{q}: {m:,} -> {s:,}" for q, m, s in top],
    }
