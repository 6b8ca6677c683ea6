"""Write the kept samples into final WebDataset shards, `sizes.json` and the manifest.

The kept samples of `samples/` are put in one seeded random order across the whole
build (sorted by md5(seed:uid), so the order does not depend on how curate laid out
its files), then cut into shards of --shard-size samples: `shards/NNNNN.tar` with
`key.jpg` (the image bytes exactly as fetched), `key.txt` (the caption) and
`key.json` (img2dataset's fields — url, caption, key, status, width, height,
original_width, original_height, sha256 — and uid, source_uid, selected_by, query_ids,
query), and beside each tar `NNNNN.parquet` (those fields, one row per sample) and
`NNNNN_stats.json`, as img2dataset writes them (`wit_builder.stages.publish.shardmeta`); plus
`shards/sizes.json` ({"00000.tar": n, ...}, as open_clip reads it). The manifest
(`manifest/`, view `shards`) has one row per published sample with its shard and key.
Shards are written by Ray tasks; finished shards survive a killed run.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from wit_builder import storage
from wit_builder.build import catalog, cluster, stage
from wit_builder.build.stage import StageContext, StageOutput, StageResult
from wit_builder.config import at_least, check_fields, output_settings
from wit_builder.errors import WitError
from wit_builder.stages.publish import shardmeta
from wit_builder.storage import write_json

MANIFEST_VIEW = "manifest/*.parquet"
TAR_MTIME = 0  # fixed member times: the same inputs give byte-identical shards
OPEN_FILES = 64  # fetch shards a writer keeps open at once


@dataclass
class Config:
    shard_size: int = field(default=10000, metadata={"check": at_least(1, "samples per shard"),
        "help": "samples per final shard (the last shard may hold fewer)", "metavar": "N"})
    seed: int = field(default=0, metadata={
        "help": "random seed (publish: the order of samples across the shards)"})


def _manifest_schema():
    import pyarrow as pa
    return pa.schema([("uid", pa.string()), ("shard", pa.string()), ("key", pa.string()),
                      ("selected_by", pa.int32()), ("query_ids", pa.list_(pa.int32())),
                      ("url", pa.string()), ("text", pa.string()), ("width", pa.int32()),
                      ("height", pa.int32()), ("sha256", pa.string())])


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def write_shard(build, rows, out) -> dict[str, Any]:
    """Ray task: write one final shard from its manifest rows (plus where each image lies).

    Reads each image from its fetch tar by offset (locally a seek, in an object store a
    ranged GET, many in flight at once) and checks its sha256 against the one curate recorded. The tar is built
    in this machine's temporary folder and put at `out` in the build in one piece.
    Returns {"shard", "samples"} or {"shard", "error"}.
    """
    import tempfile
    handles: OrderedDict[str, Any] = OrderedDict()
    remote = storage.is_remote(build)
    fetched: dict[tuple[str, int], bytes] = {}
    if remote:  # every image of the shard by ranged GETs, many at once
        try:
            fetched = _ranges(build, rows)
        except OSError as e:
            return {"shard": out.name, "error": f"{type(e).__name__}: {e}"}

    def read(rel: str, offset: int, size: int) -> bytes:
        if remote:
            return fetched[(rel, offset)]
        if rel not in handles:
            if len(handles) >= OPEN_FILES:
                handles.popitem(last=False)[1].close()
            handles[rel] = open(os.path.join(build, rel), "rb")
        handles.move_to_end(rel)
        f = handles[rel]
        f.seek(offset)
        return f.read(size)

    name = out.name
    fd, tmp = tempfile.mkstemp(prefix=f"wit-publish-{name}-")
    os.close(fd)
    side = tmp + ".parquet"
    metas = []
    try:
        # Plain tarfile, as webdataset's TarWriter does (importing webdataset pulls in
        # torch: seconds per Ray worker for nothing).
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as sink:
            for r in rows.to_pylist():
                data = read(r["fetch_tar"], r["image_offset"], r["image_bytes"])
                if hashlib.sha256(data).hexdigest() != r["image_sha256"]:
                    return {"shard": name, "error": f"the image of uid {r['uid']} in "
                            f"{r['fetch_tar']} no longer matches what curate recorded"}
                metas.append(shardmeta.sample_meta(r))
                for ext, blob in ((r["image_format"], data),
                                  ("txt", (r["text"] or "").encode("utf-8")),
                                  ("json", json.dumps(metas[-1], ensure_ascii=False).encode("utf-8"))):
                    info = tarfile.TarInfo(f"{r['key']}.{ext}")
                    info.size, info.mtime, info.mode = len(blob), TAR_MTIME, 0o444
                    sink.addfile(info, io.BytesIO(blob))
        # img2dataset's side files first, the tar last: its presence says the shard is done
        shardmeta.write_parquet(metas, side)
        storage.upload_file(side, out.with_name(out.name[:-4] + ".parquet"))
        storage.write_bytes(out.with_name(out.name[:-4] + "_stats.json"),
                            shardmeta.stats_bytes(len(metas)))
        storage.upload_file(tmp, out)
    except (OSError, tarfile.TarError) as e:
        return {"shard": name, "error": f"{type(e).__name__}: {e}"}
    finally:
        for f in handles.values():
            f.close()
        for path in (tmp, side):
            if os.path.exists(path):
                os.unlink(path)
    return {"shard": name, "samples": rows.num_rows}


MAX_GAP = 512 * 1024  # images of one fetch tar closer than this come in one ranged GET


def _ranges(build, rows, batch: int = 512) -> dict[tuple[str, int], Any]:
    """(fetch_tar, offset) -> the image bytes, read from an object store by ranged GETs
    that the filesystem runs concurrently (fsspec's cat_ranges), `batch` at a time;
    nearby images of one tar share a GET (a request costs more than 512 KB of bytes)."""
    fs = build.fs
    tars, offsets = rows["fetch_tar"].to_pylist(), rows["image_offset"].to_pylist()
    sizes = rows["image_bytes"].to_pylist()
    spans: list[list] = []  # [tar, start, end, [(offset, size), ...]], neighbours merged
    for j in sorted(range(len(tars)), key=lambda j: (tars[j], offsets[j])):
        end = offsets[j] + sizes[j]
        if spans and spans[-1][0] == tars[j] and offsets[j] - spans[-1][2] <= MAX_GAP:
            spans[-1][2] = max(spans[-1][2], end)
        else:
            spans.append([tars[j], offsets[j], end, []])
        spans[-1][3].append((offsets[j], sizes[j]))
    out: dict[tuple[str, int], Any] = {}
    for i in range(0, len(spans), batch):
        part = spans[i:i + batch]
        got = fs.cat_ranges([(build / sp[0]).path for sp in part], [sp[1] for sp in part],
                            [sp[2] for sp in part], on_error="return")
        for (tar, start, _end, members), data in zip(part, got):
            if isinstance(data, Exception):
                raise OSError(f"{tar} at byte {start}: {data}")
            for offset, size in members:
                out[(tar, offset)] = data[offset - start:offset - start + size]
    return out


def _samples(ctx: StageContext) -> str:
    """SQL reading curate's samples, less those `wit-build takedown` removed."""
    from wit_builder.stages.publish.takedown import taken_down_sql
    glob = ctx.build / ctx.inputs["curate"]["views"]["samples"]
    gone = taken_down_sql(ctx.build)
    return (f"(SELECT * FROM read_parquet({storage.sql_path(glob)}, union_by_name = true)"
            + (f" WHERE uid NOT IN {gone})" if gone else ")"))


def _ordered(con, ctx: StageContext, cfg: Config, batch: int = 65536):
    """Kept samples in the seeded order, as a stream of Arrow record batches."""
    query, source_uid = _lookups(con, ctx)
    return con.sql(f"""
        SELECT s.uid, url, text, selected_by::INTEGER AS selected_by,
               query_ids::INTEGER[] AS query_ids, width::INTEGER AS width,
               height::INTEGER AS height, original_width::INTEGER AS original_width,
               original_height::INTEGER AS original_height, sha256, image_sha256, fetch_tar,
               image_offset, image_bytes, image_format, {query} AS query,
               {source_uid} AS source_uid
        FROM {_samples(ctx)} s
        WHERE keep
        ORDER BY md5_number({int(cfg.seed)}::VARCHAR || ':' || s.uid), s.uid
        """).to_arrow_reader(batch)


def _lookups(con, ctx: StageContext) -> tuple[str, str]:
    """SQL for the text of the query that selected each sample and the uid its pool row
    carried from its source (balance's `source_uid`), NULL where the build has neither
    (then the .json leaves source_uid out)."""
    query = source = "NULL::VARCHAR"
    rec = stage.read_record(ctx.build, "queries")
    if rec and "queries" in rec.get("views", {}):
        con.execute("CREATE OR REPLACE TEMP TABLE q AS SELECT query_id, any_value(query) AS query "
                    f"FROM read_parquet({storage.sql_path(ctx.build / rec['views']['queries'])}) "
                    "GROUP BY ALL")
        query = "(SELECT q.query FROM q WHERE q.query_id = s.selected_by)"
    rec = stage.read_record(ctx.build, "balance")
    if rec and "selected" in rec.get("views", {}):
        sel = f"read_parquet({storage.sql_path(ctx.build / rec['views']['selected'])}, union_by_name = true)"
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {sel}").fetchall()]
        if "source_uid" in names:
            con.execute(f"CREATE OR REPLACE TEMP TABLE src AS SELECT uid, any_value(source_uid) "
                        f"AS source_uid FROM {sel} WHERE source_uid IS NOT NULL GROUP BY ALL")
            # '' rather than NULL for a row without one: readers that infer a type from
            # the first samples (Hugging Face datasets) then see a string throughout
            source = "coalesce((SELECT src.source_uid FROM src WHERE src.uid = s.uid), '')"
    return query, source


def _kept(con, ctx: StageContext) -> int:
    return con.execute(f"SELECT count(*) FROM {_samples(ctx)} WHERE keep").fetchall()[0][0]


def _shards(reader, shard_size: int) -> Iterator[tuple[int, Any]]:
    """Cut a stream of record batches into (index, table) of `shard_size` rows each."""
    import pyarrow as pa
    pending, count, index = [], 0, 0
    for rb in reader:
        while rb.num_rows:
            take = min(rb.num_rows, shard_size - count)
            pending.append(rb.slice(0, take))
            rb, count = rb.slice(take), count + take
            if count == shard_size:
                yield index, pa.Table.from_batches(pending)
                pending, count, index = [], 0, index + 1
    if count:
        yield index, pa.Table.from_batches(pending)


def _with_keys(index: int, table, shard_size: int, folder: str):
    """Add the final shard and key columns to one shard's rows (`folder`: where the
    shards are committed, relative to the build)."""
    import pyarrow as pa
    width = len(str(max(shard_size - 1, 0)))
    keys = [f"{index:05d}{j:0{width}d}" for j in range(table.num_rows)]
    table = table.append_column("key", pa.array(keys, pa.string()))
    shard = pa.array([f"{folder}/{shard_name(index)}"] * table.num_rows, pa.string())
    return table.append_column("shard", shard)


def _work(cfg: Config):
    def work(ctx: StageContext) -> StageOutput:
        import pyarrow.parquet as pq
        done_dir = ctx.work / "shards"  # in the build: finished shards survive a kill
        folder = storage.rel(ctx.build, ctx.final("shards"))
        manifest = ctx.output("manifest")
        schema = _manifest_schema()
        sizes: dict[str, int] = {}
        con = catalog.scratch(ctx.scratch, remote=ctx.build)
        try:
            with pq.ParquetWriter(manifest / "part-00000.parquet", schema) as writer:
                def calls():
                    for index, table in _shards(_ordered(con, ctx, cfg), cfg.shard_size):
                        table = _with_keys(index, table, cfg.shard_size, folder)
                        writer.write_table(table.select(schema.names).cast(schema))
                        sizes[shard_name(index)] = table.num_rows
                        out = done_dir / shard_name(index)
                        if not out.exists():  # finished in an earlier, killed run
                            yield (ctx.build, table, out)
                results = cluster.map_tasks(write_shard, calls(), "publish: shards",
                                            total=math.ceil(_kept(con, ctx) / cfg.shard_size))
        finally:
            con.close()
        errors = [r for r in results if "error" in r]
        if errors:
            raise WitError(f"publish shard {errors[0]['shard']}: {errors[0]['error']}; if the "
                           "fetch shards changed after curate ran, rerun `wit-build curate "
                           f"--force --out {ctx.build}`, then publish (finished shards are kept)")
        out = ctx.output("shards")
        for name in sizes:
            for f in (name, name[:-4] + ".parquet", name[:-4] + "_stats.json"):
                ctx.adopt(done_dir / f, f"shards/{f}")
        write_json(out / "sizes.json", sizes)
        total = sum(sizes.values())
        return StageOutput(rows=total, summary={
            "samples": total, "shards": len(sizes), "shard_size": cfg.shard_size,
            "seed": cfg.seed})
    return work


def check(cfg: Config) -> None:
    """The flag values' own mistakes (bounds, on the fields), found before anything runs."""
    check_fields(cfg)


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Publish the kept samples of `build` as WebDataset shards and a manifest."""
    build = storage.location(build)
    check(cfg)
    stage.require(build, "curate")
    return stage.run_stage(build, "publish", output_settings(cfg), _work(cfg),
                           outputs=["shards", "manifest"], inputs=("curate",), force=force,
                           views={"shards": MANIFEST_VIEW})


def published(build) -> tuple[object, dict[str, int]]:
    """The committed shards folder of `build` and its sizes.json ({"00000.tar": n})."""
    stage.require(build, "publish")
    folder = stage.committed(build, "publish", "shards")
    sizes = storage.read_json(folder / "sizes.json")
    if not sizes:
        raise WitError(f"{build}: publish kept no samples, so there is nothing to export; "
                       "check `wit-build stats` for where the pairs went")
    return folder, sizes
