"""Read candidate (image URL, caption) files into the build's pool.

Takes Parquet, CSV, TSV and JSON Lines files (each optionally gzipped), globs and
directories: CC3M/CC12M TSVs (with or without a header), LAION/DataComp/COYO
Parquet metadata, a user's own lists. The URL and caption columns are recognised
from common names (or given with --url-col/--text-col); other columns are kept.
Rows without a URL or caption, or whose URL is not http(s), are dropped and counted;
exact duplicates of (url, text) are removed and counted. Every row gets
uid = hash(url, text). Writes `pool/part-*.parquet`: uid, url, text, + the rest.

This module is the stage's entry (settings, checks, the run); its parts sit beside it:
`pool_formats` (a file's format, columns, opening), `pool_checks` (files that are not
what their names say), the readers `pool_parquet`, `pool_delimited` (CSV/TSV) and
`pool_jsonl`, `pool_read` (one file into bucketed chunks, a Ray task) and
`pool_dedupe` (each bucket deduplicated in DuckDB).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from wit_builder import config as cfgmod
from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import StageContext, StageOutput, StageResult, run_stage
from wit_builder.config import at_least
from wit_builder.errors import WitError
from wit_builder.io import UID_BYTES
from wit_builder.stages.pool.pool_dedupe import dedupe
from wit_builder.stages.pool.pool_formats import BLOCK_BYTES, ReadSpec, fmt_of  # noqa: F401 (pool.BLOCK_BYTES: tests)
from wit_builder.stages.pool.pool_read import BUCKET, ORDER, REASONS, read_file  # noqa: F401 (pool.ORDER, .BUCKET: tests)

BUCKET_BYTES = 256 << 20     # input bytes per pool part when --pool-parts is 0
MAX_CAPTION_CHARS = 2000  # LAION's longest useful alt texts; a 26 MB "caption" costs the trainer GBs


@dataclass
class Config:
    pool: list[str] = field(default_factory=list, metadata={
        "help": "candidate files: Parquet, CSV, TSV, JSONL (also .gz), globs or directories",
        "metavar": "FILE"})
    url_col: str | None = field(default=None, metadata={
        "help": "column holding the image URL (default: recognised: url, URL, image_url, ...; "
                "columnN for files without a header)"})
    text_col: str | None = field(default=None, metadata={
        "help": "column holding the caption (default: recognised: text, caption, alt_text, ...)"})
    skip_broken_rows: bool = field(default=False, metadata={
        "help": "skip and count malformed CSV/TSV/JSONL rows instead of stopping at the first"})
    max_caption_chars: int = field(default=MAX_CAPTION_CHARS, metadata={"check": at_least(0, "0 = no limit"),
        "help": "cut captions longer than this many characters (counted as captions_cut; "
                "0: no limit); CLIP's text encoder sees 77 tokens, a few hundred characters"})
    pool_parts: int = field(default=0, metadata={"check": at_least(0, "0 = automatic"),
        "help": "number of pool/ files (uid buckets); 0 = one per ~256 MB of input"})
    memory_limit: str = catalog.memory_limit_setting("the pool's dedup of pairs")


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs: each field's own
    check (bounds, on the field), then what needs the files."""
    cfgmod.check_fields(cfg)
    if not cfg.pool:
        raise WitError("--pool: give the candidate files (Parquet, CSV, TSV or JSONL, "
                       "optionally .gz; globs and directories work)")
    find_files(cfg.pool)


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Read, clean and deduplicate the candidate files into pool/."""
    from wit_builder.io import file_fingerprint
    check(cfg)
    files = find_files(cfg.pool)
    params = {**cfgmod.output_settings(cfg), "pool": file_fingerprint(files)}
    return run_stage(build, "pool", params, lambda ctx: _pool(ctx, cfg, files),
                     outputs=["pool"], views={"pool": "pool/part-*.parquet"}, force=force)


def find_files(patterns: list[str]) -> list:
    """Expand files, globs and directories (paths or URLs); explicit files of unknown
    format are an error."""
    from wit_builder.io import expand_inputs
    out: list = []
    for pat in patterns:
        hits = expand_inputs([pat], "pool", "--pool")
        explicit = len(hits) == 1 and str(storage.location(pat, "--pool")) == str(hits[0])
        known = [h for h in hits if fmt_of(h, strict=explicit)]
        if not known:
            raise WitError(f"--pool {pat}: no Parquet, CSV, TSV or JSONL files (.gz too) there")
        out.extend(known)
    return list(dict.fromkeys(out))



# ----------------------------------------------------------------------------------
# The stage: read every file (Ray tasks), then dedupe each bucket in DuckDB.

def _buckets(cfg: Config, files: list) -> int:
    if cfg.pool_parts:
        return cfg.pool_parts
    size = sum(p.stat().st_size * (3 if fmt_of(p) == "parquet" or p.name.endswith(".gz") else 1)
               for p in files)
    return max(1, min(1024, math.ceil(size / BUCKET_BYTES)))


def _pool(ctx: StageContext, cfg: Config, files: list) -> StageOutput:
    from wit_builder.build import cluster
    spec = ReadSpec(cfg.url_col, cfg.text_col, cfg.skip_broken_rows, _buckets(cfg, files),
                 cfg.max_caption_chars)
    read_dir = ctx.work / "read"
    dirs = [read_dir / f"f{i:05d}" for i in range(len(files))]
    finished = {p.parent.name for p in read_dir.glob("f*/stats.json")} if read_dir.exists() else set()
    todo = [i for i, d in enumerate(dirs) if d.name not in finished]
    if todo:
        cluster.run_units(read_file, ((str(files[i]), i, spec, str(dirs[i])) for i in todo),
                          "pool: reading", total=len(todo), done=len(files) - len(todo),
                          unit="file")
    per_file = [json.loads(b) for b in storage.read_all([d / "stats.json" for d in dirs])]
    totals = {k: sum(s.get(k, 0) for s in per_file)
              for k in ("rows_read", "kept", "broken_rows", "captions_cut", *REASONS)}
    if totals["kept"] == 0:
        raise WitError(
            f"the pool is empty: {totals['rows_read']:,} rows read from {len(files)} file(s), "
            f"{totals['no_url']:,} without a URL, {totals['no_text']:,} without a caption, "
            f"{totals['bad_url']:,} with a non-http(s) URL, {totals['broken_rows']:,} broken. "
            f"Check --url-col/--text-col (used: {per_file[0].get('columns')})")
    ctx.output("pool")
    rows = dedupe(ctx, dirs, spec.buckets, cfg.memory_limit)
    summary = {
        "files": len(files),
        "rows_read": totals["rows_read"],
        "dropped_no_url": totals["no_url"],
        "dropped_no_text": totals["no_text"],
        "dropped_bad_url": totals["bad_url"],
        "broken_rows_skipped": totals["broken_rows"],
        "captions_cut": totals["captions_cut"],
        "duplicates": totals["kept"] - rows["rows"],
        "rows": rows["rows"],
        "pairs_per_text": round(rows["rows"] / max(rows["texts"], 1), 3),
        "parts": rows["parts"],
        "uid_collisions": rows["uid_collisions"],  # distinct pairs given a fresh uid, all kept
        "uid_bits": UID_BYTES * 8,
        "columns": {Path(s["file"]).name: s.get("columns") for s in per_file},
    }
    return StageOutput(rows=rows["rows"], summary=summary)

