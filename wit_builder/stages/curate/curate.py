"""Image facts, filters and dedup: a keep/drop_reason for every fetched sample.

Ray workers read the fetch shards and record each image's size, sha256 and the
signature of its canonical view (64-bit DCT pHash, colour thumbnail, detail;
wit_builder.canonical), reusing what fetch recorded where the bytes are unchanged
(wit_builder.stages.curate.imagefacts). Then, in DuckDB, every selected sample gets `keep` and the
first `drop_reason` that applies, in this order: failed_download, undecodable,
too_small (--min-side), bad_aspect (--max-aspect), short_caption
(--min-caption-words, --min-caption-chars), blank (one colour or a plain gradient),
eval_set (--eval-images, --eval-bits, --eval-colour), exact_duplicate (same stored bytes), near_duplicate (pHash
within --near-dup-bits of a kept sample, across the whole build, confirmed by the
colour check, --near-dup-colour). The two copy decisions are in wit_builder.stages.curate.dedup.
Writes samples/ (views `samples` and `kept_per_query`). docs/curate.md explains each rule.

The DuckDB steps, each reading and writing named tables (values bound as parameters,
paths through `sql.literal`):

    _open_status      fetch's status files          -> fetch_rows, status
    _load_samples     status, the image facts       -> facts, measured, candidates
    dedup.eval_hits   candidates, the eval images   -> ev, eval_hits
    dedup.duplicates  candidates, eval_hits         -> ranked, exact, nodes, dups
    _write            measured, candidates, eval_hits, dups -> final -> samples/
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wit_builder import storage
from wit_builder.build import catalog, cluster, stage
from wit_builder.build.stage import StageContext, StageOutput, StageResult
from wit_builder.canonical import BLANK_DETAIL
from wit_builder.config import at_least, check_fields, output_settings, within
from wit_builder.errors import WitError
from wit_builder.schemas import DROP_REASONS, SIGNATURE
from wit_builder.schemas import FETCH_COLUMNS as FETCH_STATUS_COLUMNS
from wit_builder.sql import literal
from wit_builder.stages.curate.dedup import duplicates, eval_hits
from wit_builder.stages.curate.imagefacts import IMAGE_EXTS, eval_facts, facts_schema, shard_facts

# wit_builder.schemas: the drop reasons in precedence order, fetch's columns and the
# signature columns among them
FETCH_COLUMNS = tuple(c for c in FETCH_STATUS_COLUMNS if c not in SIGNATURE)
SAMPLES_VIEW = "samples/*.parquet"
KEPT_VIEW = "samples/_kept_per_query/*.parquet"  # "_": Parquet dataset readers skip it
# Defaults chosen with benchmarks/bench_dedup.py and bench_neardup.py (docs/curate.md):
# the self-join's cost grows fast with its radius (1M hashes: 5 bits 3.5 s, 10 bits
# 139 s), the eval search, probed from the small eval side, stays cheap at 10 bits.
NEAR_DUP_BITS = 5
NEAR_DUP_COLOUR = 24.0
EVAL_BITS = 10
EVAL_COLOUR = 24.0


_BITS = "-1: off; pHashes of different pictures are typically 20-40 bits apart"


def _colour(value: float) -> str | None:
    """A colour threshold's own check: 0 to 255 levels, or -1 (the pHash alone decides)."""
    return None if value == -1 or 0 <= value <= 255 else \
        "give 0 to 255 levels, or -1 to let the pHash alone decide"


@dataclass
class Config:
    min_side: int = field(default=200, metadata={"check": at_least(0, "pixels"),
        "help": "drop images whose shorter side (of the original image) is below this many "
                "pixels; DataComp's basic filter uses 200", "metavar": "PX"})
    max_aspect: float = field(default=3.0, metadata={"check": at_least(1, "longer side / shorter side"),
        "help": "drop images whose longer/shorter side ratio is above this; DataComp uses 3",
        "metavar": "RATIO"})
    min_caption_words: int = field(default=3, metadata={"check": at_least(0),
        "help": "drop captions with fewer words (DataComp keeps captions of more than 2 words)",
        "metavar": "N"})
    min_caption_chars: int = field(default=6, metadata={"check": at_least(0),
        "help": "drop captions with fewer characters (DataComp keeps more than 5; LAION "
                "drops fewer than 5)", "metavar": "N"})
    near_dup_bits: int = field(default=NEAR_DUP_BITS, metadata={"check": within(-1, 16, _BITS),
        "help": "near-duplicate candidates across the whole build: pHash Hamming distance at "
                "most this many of 64 bits (0: identical pHash only; -1: no near-duplicate "
                "search); the search's cost grows fast with it (docs/curate.md)",
        "metavar": "BITS"})
    near_dup_colour: float = field(default=NEAR_DUP_COLOUR, metadata={"check": _colour,
        "help": "a candidate is a near copy only if its colour thumbnail is within this many "
                "levels (0-255) of the other's, cell by cell (-1: pHash alone decides)",
        "metavar": "LEVELS"})
    eval_images: str | None = field(default=None, metadata={
        "help": "directory of evaluation images (searched recursively); samples showing "
                "any of them (same bytes, or a near copy by --eval-bits and --eval-colour) "
                "are dropped", "metavar": "DIR"})
    eval_bits: int = field(default=EVAL_BITS, metadata={"check": within(-1, 16, _BITS),
        "help": "near copies of --eval-images: pHash Hamming distance at most this many bits "
                "(-1: same bytes only)", "metavar": "BITS"})
    eval_colour: float = field(default=EVAL_COLOUR, metadata={"check": _colour,
        "help": "a near copy of an evaluation image needs its colour thumbnail within this "
                "many levels (-1: pHash alone decides)", "metavar": "LEVELS"})


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs: each field's own
    check (bounds, on the field), then what needs the disk."""
    check_fields(cfg)
    if cfg.eval_images and not storage.location(cfg.eval_images, "--eval-images").is_dir():
        raise WitError(f"--eval-images {cfg.eval_images}: not a directory; give the folder "
                       "holding the evaluation images")


# ---------------------------------------------------------------------------------
# Image facts (wit_builder.stages.curate.imagefacts, in Ray workers)

def _facts_name(rel: str) -> str:
    return hashlib.blake2b(rel.encode(), digest_size=8).hexdigest() + ".parquet"


def _known_hashes(con) -> dict[str, tuple[list[str], Any]]:
    """Per fetch tar: the status files holding the signatures fetch recorded for its
    images, and its `fetch_shard` value (none for a fetch/status without those columns:
    an older fetch hashed the padded image, so its images are decoded again).
    Each task reads its own rows, so no process holds the whole build's hashes."""
    names = {r[0] for r in con.execute("DESCRIBE status").fetchall()}
    if not set(SIGNATURE) <= names:
        return {}
    rows = con.execute("""SELECT fetch_tar, list(DISTINCT _status_file), any_value(fetch_shard)
                          FROM status WHERE status = 'success' AND stored_phash IS NOT NULL
                          AND stored_thumb IS NOT NULL GROUP BY 1""").fetchall()
    # absolute or URLs: a Ray worker need not share the driver's working directory
    return {tar: ([f if storage.scheme(f) else str(Path(f).resolve()) for f in files], shard)
            for tar, files, shard in rows}


def _compute_facts(build, shards: list[str], work,
                   known: dict[str, tuple[list[str], Any]]):
    """Run shard_facts for every shard not already done in `work` (resume)."""
    out_dir = work / "facts"
    done = {p.name for p in out_dir.glob("*.parquet")} if out_dir.exists() else set()
    todo = [(build / rel, rel, out_dir / _facts_name(rel), known.get(rel))
            for rel in shards if _facts_name(rel) not in done]
    errors = [r for r in cluster.map_tasks(shard_facts, todo, "curate: image facts", len(todo))
              if "error" in r]
    if errors:
        e = errors[0]
        raise WitError(f"{build / e['shard']}: cannot read this fetch shard ({e['error']}); "
                       f"rerun `wit-build fetch --force --out {build}`")
    return out_dir


def _eval_images(cfg: Config) -> list:
    root = storage.location(cfg.eval_images, "--eval-images")  # absolute, or a URL
    files = sorted((p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS
                    and p.is_file()), key=str)
    if not files:
        raise WitError(f"--eval-images {cfg.eval_images}: no image files in it (looked for "
                       f"{', '.join('.' + e for e in IMAGE_EXTS)})")
    return files


def _compute_eval(cfg: Config, files: list, chunk: int = 256):
    import pyarrow as pa
    root = str(storage.location(cfg.eval_images, "--eval-images"))
    calls = [([str(p) for p in files[i:i + chunk]], root) for i in range(0, len(files), chunk)]
    parts = [pa.table(r) for r in cluster.map_tasks(eval_facts, calls, "curate: eval images", len(calls))]
    table = pa.concat_tables(parts)
    bad = [i for i, e in enumerate(table["decode_error"].to_pylist()) if e]
    if bad:
        row = table.slice(bad[0], 1).to_pylist()[0]
        raise WitError(f"--eval-images: {root}/{row['path']} cannot be decoded "
                       f"({row['decode_error']}); remove or replace it so the evaluation set "
                       "is fully protected")
    return table.drop_columns(["decode_error"])


# ---------------------------------------------------------------------------------
# Filters and dedup (DuckDB)


def _filter_reasons_sql() -> str:
    """The CASE giving each sample its first failing filter (NULL: passes them all);
    its thresholds are the named parameters `_filter_params` binds."""
    return """CASE
        WHEN status = 'decode_error' THEN 'undecodable'
        WHEN status IS DISTINCT FROM 'success' THEN 'failed_download'
        WHEN phash IS NULL THEN 'undecodable'
        WHEN least(coalesce(original_width, width), coalesce(original_height, height))
             < $min_side THEN 'too_small'
        WHEN aspect > $max_aspect THEN 'bad_aspect'
        WHEN caption_words < $min_caption_words
          OR length(trim(coalesce(text, ''))) < $min_caption_chars THEN 'short_caption'
        WHEN detail < $blank_detail THEN 'blank'
        END"""


def _filter_params(cfg: Config) -> dict[str, Any]:
    return {"min_side": int(cfg.min_side), "max_aspect": float(cfg.max_aspect),
            "min_caption_words": int(cfg.min_caption_words),
            "min_caption_chars": int(cfg.min_caption_chars), "blank_detail": float(BLANK_DETAIL)}


def _open_status(con, ctx: StageContext) -> list[str]:
    """View `status` (fetch's rows, with `fetch_tar`: the tar path relative to the build).

    `fetch_shard` may name the tar ("fetch/shards/00000.tar") or number it (0);
    returns the tars holding successful downloads.
    """
    build = ctx.build
    status = literal(str(build / ctx.inputs["fetch"]["views"]["samples"]))
    fetch_dir = ctx.upstream("fetch")
    # In an object store every statement that reads a view opens its files again (one
    # HEAD and GETs each): read them once into the scratch database instead.
    kind = "TABLE" if storage.is_remote(build) else "VIEW"
    con.execute(f"CREATE {kind} fetch_rows AS SELECT * FROM read_parquet({status}, "
                "union_by_name = true, filename = '_status_file')")
    types = dict((r[0], r[1]) for r in con.execute("DESCRIBE fetch_rows").fetchall())
    missing = [c for c in FETCH_COLUMNS if c not in types]
    if missing:
        raise WitError(f"{fetch_dir / 'status'}: missing column(s) {', '.join(missing)}; "
                       f"rerun `wit-build fetch --force --out {build}`")
    if types["fetch_shard"] == "VARCHAR":
        con.execute("CREATE VIEW status AS SELECT *, fetch_shard AS fetch_tar FROM fetch_rows")
    else:  # a shard number: the tar whose name is that number
        import pyarrow as pa
        tars = sorted((fetch_dir / "shards").glob("*.tar"), key=str)
        numbered = [(int(p.stem), storage.rel(build, p)) for p in tars if p.stem.isdigit()]
        con.register("tar_names", pa.table({"n": pa.array([n for n, _ in numbered], pa.int64()),
                                            "fetch_tar": [t for _, t in numbered]}))
        con.execute("CREATE TABLE tars AS SELECT * FROM tar_names")
        con.unregister("tar_names")
        con.execute("""CREATE VIEW status AS SELECT r.*, t.fetch_tar FROM fetch_rows r
                       LEFT JOIN tars t ON t.n = r.fetch_shard""")
    missing = con.execute("SELECT fetch_shard FROM status WHERE status = 'success' "
                          "AND fetch_tar IS NULL LIMIT 1").fetchall()
    if missing:
        raise WitError(f"{fetch_dir / 'shards'}: no tar for fetch shard {missing[0][0]} "
                       f"(a file named like 00000.tar); rerun `wit-build fetch --force --out {build}`")
    return [r[0] for r in con.execute("SELECT DISTINCT fetch_tar FROM status WHERE status = "
                                      "'success' ORDER BY 1").fetchall()]


def _load_samples(con, facts_dir: Path, cfg: Config) -> None:
    """Reads `status`; writes `facts` (the image facts), view `measured` (fetch's rows
    with them) and table `candidates`: only what the filters and dedup need, one row per
    uid, with its first failing filter in `reason`."""
    facts = literal(str(facts_dir / "*.parquet"))
    kind = "TABLE" if storage.is_remote(facts_dir) else "VIEW"  # see _open_status
    con.execute(f"CREATE {kind} facts AS SELECT * FROM read_parquet({facts}, union_by_name = true)")
    dups = con.execute("SELECT count(*) - count(DISTINCT uid) FROM status").fetchall()[0][0]
    if dups:
        raise WitError(f"fetch/status: {dups} rows repeat a uid (one row per selected uid "
                       "expected); rerun `wit-build fetch --force`")
    con.execute("""
        CREATE VIEW measured AS
        SELECT st.* REPLACE (
                 CASE WHEN st.status = 'success' AND f.key IS NULL
                      THEN 'no image for key ' || coalesce(st.key, 'NULL') || ' in '
                           || st.fetch_tar
                      WHEN st.status = 'success' THEN f.decode_error ELSE st.error END AS error,
                 coalesce(f.width, st.width) AS width, coalesce(f.height, st.height) AS height,
                 coalesce(st.bytes, f.image_bytes) AS bytes,
                 coalesce(st.sha256, f.image_sha256) AS sha256),
               f.phash, f.thumb, f.detail, f.phash_from, f.image_sha256, f.image_bytes, f.image_format, f.image_offset,
               greatest(coalesce(st.original_width, f.width, st.width),
                        coalesce(st.original_height, f.height, st.height))::DOUBLE
                 / nullif(least(coalesce(st.original_width, f.width, st.width),
                                coalesce(st.original_height, f.height, st.height)), 0) AS aspect
        FROM status st
        LEFT JOIN facts f ON st.status = 'success' AND f.fetch_tar = st.fetch_tar
                          AND f.key = st.key""")
    con.execute(f"""
        CREATE TABLE candidates AS
        SELECT row_number() OVER () - 1 AS rid, uid, width, height, original_width,
               original_height, sha256, image_sha256, image_bytes, phash, thumb,
               {_filter_reasons_sql()} AS reason
        FROM (SELECT *, CASE WHEN trim(coalesce(text, '')) = '' THEN 0
                             ELSE len(regexp_split_to_array(trim(text), '\\s+')) END AS caption_words
              FROM measured)""", _filter_params(cfg))


def _write(con, tmp: Path) -> None:
    """Reads `measured`, `candidates`, `eval_hits`, `dups`; writes view `final` and from
    it samples/part-*.parquet and samples/_kept_per_query/part-0.parquet."""
    out = tmp / "samples"
    out.mkdir(parents=True, exist_ok=True)
    fetch_cols = [r[0] for r in con.execute("DESCRIBE fetch_rows").fetchall()
                  if r[0] not in (*SIGNATURE, "_status_file")]
    cols = ", ".join(f"m.{c}" for c in fetch_cols)
    con.execute(f"""
        CREATE VIEW final AS
        SELECT {cols}, m.aspect, m.phash, m.detail, m.phash_from,
               coalesce(s.reason, eh.reason, du.reason) IS NULL AS keep,
               coalesce(s.reason, eh.reason, du.reason) AS drop_reason,
               coalesce(eh.eval_path, du.duplicate_of) AS duplicate_of,
               m.image_sha256, m.fetch_tar, m.image_offset, m.image_bytes, m.image_format
        FROM measured m JOIN candidates s USING (uid)
        LEFT JOIN (SELECT rid, 'eval_set' AS reason, min(eval_path) AS eval_path
                   FROM eval_hits GROUP BY rid) eh ON eh.rid = s.rid
        LEFT JOIN dups du ON du.rid = s.rid""")
    con.execute(f"COPY (SELECT * FROM final) TO {literal(str(out))} (FORMAT parquet, "
                "FILE_SIZE_BYTES '512MB', FILENAME_PATTERN 'part-{i}', OVERWRITE_OR_IGNORE)")
    counts = out / "_kept_per_query"
    counts.mkdir()
    con.execute(f"""
        COPY (
          WITH by_selector AS (
            SELECT selected_by AS query_id, count(*) AS selected,
                   count(*) FILTER (WHERE status = 'success') AS downloaded,
                   count(*) FILTER (WHERE keep) AS kept
            FROM final WHERE selected_by IS NOT NULL GROUP BY ALL),
          by_match AS (
            SELECT query_id, count(*) AS kept_matching
            FROM (SELECT unnest(query_ids) AS query_id FROM final WHERE keep) GROUP BY ALL)
          SELECT query_id::INTEGER AS query_id, coalesce(selected, 0) AS selected,
                 coalesce(downloaded, 0) AS downloaded, coalesce(kept, 0) AS kept,
                 coalesce(kept_matching, 0) AS kept_matching
          FROM by_selector FULL JOIN by_match USING (query_id) ORDER BY query_id
        ) TO {literal(str(counts / 'part-0.parquet'))} (FORMAT parquet)""")


def _work(cfg: Config, eval_files: list[Path]) -> Callable[[StageContext], StageOutput]:
    def work(ctx: StageContext) -> StageOutput:
        build = ctx.build
        db = ctx.scratch / "curate.duckdb"
        for leftover in (db, db.with_name(db.name + ".wal")):
            leftover.unlink(missing_ok=True)  # a killed run's tables; the facts files resume
        con = catalog.scratch(ctx.scratch, db=db, remote=build)
        try:
            shards = _open_status(con, ctx)
            absent = [s for s in shards if not (build / s).exists()]
            if absent:
                raise WitError(f"{build / absent[0]}: fetch shard missing ({len(absent)} of "
                               f"{len(shards)}); rerun `wit-build fetch --force --out {build}`")
            facts_dir = _compute_facts(build, shards, ctx.work, _known_hashes(con))
            if not (facts_dir.exists() and any(facts_dir.glob("*.parquet"))):
                import pyarrow as pa  # no shards at all: an empty facts file
                import pyarrow.parquet as pq
                sink = pa.BufferOutputStream()
                pq.write_table(facts_schema().empty_table(), sink)
                storage.write_bytes(facts_dir / "empty.parquet", sink.getvalue().to_pybytes())
            _load_samples(con, facts_dir, cfg)
            hashed = dict(con.execute("SELECT phash_from, count(*) FROM facts "
                                      "WHERE phash_from IS NOT NULL GROUP BY 1").fetchall())
            summary: dict[str, Any] = {"phash_from_fetch": hashed.get("fetch", 0),
                                       "phash_decoded": hashed.get("decoded", 0)}
            candidates = con.execute("SELECT count(*) FROM candidates WHERE reason IS NULL").fetchall()[0][0]
            evals = None
            if eval_files and candidates:
                evals = _compute_eval(cfg, eval_files)
            elif eval_files:  # nothing downloaded to check: hashing the eval set is wasted work
                summary["eval_search"] = "skipped: no sample left to check against --eval-images"
            summary.update(eval_hits(con, evals, cfg.eval_bits, cfg.eval_colour,
                                     BLANK_DETAIL))
            search = duplicates(con, cfg.near_dup_bits, cfg.near_dup_colour)
            if search:
                summary["near_dup_search"] = search
            _write(con, ctx.tmp)
            rows = con.execute("SELECT drop_reason, count(*) FROM final GROUP BY 1").fetchall()
        finally:
            con.close()
        counts = {reason: n for reason, n in rows}
        total = sum(counts.values())
        summary = {"samples": total, "kept": counts.get(None, 0),
                   "dropped": {r: counts[r] for r in DROP_REASONS if r in counts}, **summary}
        return StageOutput(rows=total, summary=summary)
    return work


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Curate the fetched samples of `build`: facts, filters, dedup -> samples/."""
    build = storage.location(build)
    check(cfg)
    stage.require(build, "fetch")
    params = output_settings(cfg)
    eval_files: list = []
    if cfg.eval_images:
        from wit_builder.io import file_fingerprint
        eval_files = _eval_images(cfg)
        params["eval_images"] = str(storage.location(cfg.eval_images, "--eval-images"))
        # The eval set's content decides the result: any change reruns curate.
        blob = "\n".join("\t".join(map(str, f)) for f in file_fingerprint(eval_files))
        params["eval_fingerprint"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return stage.run_stage(build, "curate", params, _work(cfg, eval_files),
                           outputs=["samples"], inputs=("fetch",), force=force,
                           views={"samples": SAMPLES_VIEW, "kept_per_query": KEPT_VIEW})
