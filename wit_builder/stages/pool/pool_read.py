"""Reading one candidate file into the pool (a Ray task): its format's reader, then per
batch the URL and caption normalised, bad rows dropped and counted, captions cut, the
uid taken and a bucket given; chunk files grouped by bucket for pool's dedupe."""
from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.stages.pool.pool_checks import check_text_head, clean_copy, unreadable
from wit_builder.stages.pool.pool_delimited import read_delimited
from wit_builder.stages.pool.pool_formats import ReadSpec, SlowPath, fmt_of
from wit_builder.stages.pool.pool_jsonl import read_jsonl, read_jsonl_by_line
from wit_builder.stages.pool.pool_parquet import read_parquet

GOOD_URL = r"(?i)^https?://[^\s/?#]+"
CHUNK_ROWS = 250_000         # rows buffered before a chunk is written
ORDER, BUCKET = "_wit_order", "_wit_bucket"   # chunk columns: input order, uid bucket
REASONS = ("no_url", "no_text", "bad_url")


def _as_text(col, name: str, path: Path):
    import pyarrow as pa
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string())
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        raise WitError(f"{path}: column {name!r} holds {t}, not text; pick another with "
                       f"--url-col/--text-col")
    return col.cast(pa.string())


def _clean(batch, url_col: str, text_col: str, path: Path, stats: dict, first_row: int,
           file_index: int, buckets: int, max_chars: int = 0):
    """Rename, filter and hash one batch; returns a table with uid, url, text, extras."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from wit_builder.io import uids
    url = pc.utf8_trim_whitespace(_as_text(batch.column(url_col), url_col, path))
    text = _as_text(batch.column(text_col), text_col, path)
    no_url = pc.fill_null(pc.equal(url, ""), True)
    no_text = pc.and_(pc.invert(no_url),
                      pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True))
    ok = pc.and_(pc.invert(no_url), pc.invert(no_text))
    good = pc.fill_null(pc.match_substring_regex(url, GOOD_URL), False)
    bad_url = pc.and_(ok, pc.invert(good))
    keep = pc.and_(ok, good)
    for reason, mask in zip(REASONS, (no_url, no_text, bad_url)):
        stats[reason] += int(pc.sum(mask).as_py() or 0)
    cols = {"url": url.filter(keep), "text": text.filter(keep)}
    if max_chars:
        long = pc.greater(pc.utf8_length(cols["text"]), max_chars)
        cut = int(pc.sum(long).as_py() or 0)
        if cut:
            stats["captions_cut"] += cut
            cols["text"] = pc.if_else(long, pc.utf8_slice_codeunits(cols["text"], 0, max_chars),
                                      cols["text"])
    uid_list = uids(cols["url"], cols["text"])
    extras = {}
    for name in batch.schema.names:
        if name in (url_col, text_col):
            continue
        out_name = f"source_{name}" if name in ("uid", "url", "text", ORDER, BUCKET) else name
        extras[out_name] = batch.column(name).filter(keep)
    order = (np.int64(file_index) << np.int64(40)) + first_row + np.flatnonzero(
        keep.to_numpy(zero_copy_only=False))
    return pa.table({
        "uid": pa.array(uid_list, pa.string()), **cols, **extras,
        ORDER: pa.array(order, pa.int64()),
        BUCKET: pa.array([int(u[:8], 16) % buckets for u in uid_list], pa.int32()),
    })


def _write_chunk(tables: list, dest: Path) -> None:
    """One chunk file, rows grouped by bucket (a row group per bucket, for pruning)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.take(pc.sort_indices(table, [(BUCKET, "ascending"), (ORDER, "ascending")]))
    bucket = table.column(BUCKET).to_numpy()
    cuts = [0, *((bucket[1:] != bucket[:-1]).nonzero()[0] + 1).tolist(), len(bucket)]
    with pq.ParquetWriter(dest, table.schema) as w:
        for a, b in zip(cuts, cuts[1:]):
            w.write_table(table.slice(a, b - a))


def read_file(path: str, file_index: int, spec: ReadSpec, out_dir: str) -> dict:
    """Ray task: read one candidate file (a path or URL) into bucketed chunk files under
    out_dir (in the build), stats.json last: its presence says the file is done."""
    src, out = storage.location(path, "--pool"), storage.location(out_dir)
    if storage.is_remote(out):   # written on this machine, then put into the store
        with tempfile.TemporaryDirectory(prefix="wit-pool-") as tmp:
            stats = _read_any(src, file_index, spec, Path(tmp))
            chunks = sorted(Path(tmp).glob("chunk-*.parquet"))
            if chunks:
                out.fs.put([str(c) for c in chunks], [f"{out.path}/{c.name}" for c in chunks])
            storage.write_bytes(out / "stats.json", (Path(tmp) / "stats.json").read_bytes())
        return stats
    tmp = out.with_name(out.name + ".tmp")   # a local build: the folder appears whole
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = _read_any(src, file_index, spec, tmp)
    tmp.rename(out)
    return stats


def _read_any(path, file_index: int, spec: ReadSpec, tmp: Path) -> dict:
    try:
        try:
            return _read_file(path, file_index, spec, tmp, slow=False)
        except SlowPath:
            for stale in tmp.glob("*"):
                stale.unlink()
            return _read_file(path, file_index, spec, tmp, slow=True)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, RecursionError) as e:
        raise unreadable(path, e) from None


def _renamed(batches, copy: Path, path) -> Iterator[Any]:
    """`batches`, with errors naming `path` instead of its clean `copy`."""
    try:
        yield from batches
    except WitError as e:
        raise WitError(str(e).replace(str(copy), str(path))) from None


def _read_file(path, file_index: int, spec: ReadSpec, tmp: Path, slow: bool) -> dict:
    stats: dict[str, Any] = {"file": str(path), "rows_read": 0, "broken_rows": 0, "kept": 0,
                             "captions_cut": 0, **{r: 0 for r in REASONS}}
    fmt = fmt_of(path)
    if fmt != "parquet":
        check_text_head(path, fmt)
    if fmt == "parquet":
        batches = read_parquet(path, spec, stats, tmp)
    elif fmt == "jsonl":
        batches = read_jsonl_by_line(path, spec, stats, tmp) if slow else read_jsonl(path, spec, stats)
    elif slow:   # --skip-broken-rows after a bad byte or an over-long row: read a clean copy
        batches = _renamed(read_delimited(clean_copy(path, tmp / f"clean.{fmt}", stats), fmt,
                                           spec, stats), tmp / f"clean.{fmt}", path)
    else:
        batches = read_delimited(path, fmt, spec, stats)
    pending: list = []
    pending_rows = chunks = 0
    for batch, url_col, text_col in batches:
        table = _clean(batch, url_col, text_col, path, stats, stats["rows_read"], file_index,
                       spec.buckets, spec.max_caption_chars)
        stats["rows_read"] += batch.num_rows
        stats["kept"] += table.num_rows
        if table.num_rows:
            pending.append(table)
            pending_rows += table.num_rows
        if pending_rows >= CHUNK_ROWS:
            _write_chunk(pending, tmp / f"chunk-{chunks:05d}.parquet")
            pending, pending_rows, chunks = [], 0, chunks + 1
    if pending:
        _write_chunk(pending, tmp / f"chunk-{chunks:05d}.parquet")
    for scratch in tmp.glob("*"):
        if not scratch.name.startswith("chunk-"):
            scratch.unlink()
    (tmp / "stats.json").write_text(json.dumps(stats))
    return stats

