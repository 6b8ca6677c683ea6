"""What each published shard carries besides its images, in img2dataset's conventions.

img2dataset writes, beside each `NNNNN.tar`, `NNNNN.parquet` (one row per sample: the
same fields as the sample's `.json`) and `NNNNN_stats.json` (counts, timings, status
counts); DataComp's resharder and the tools built on img2dataset output read those, and
the sample's `uid` (32 hex characters, DataComp's 128 bits) from its `.json`. Publish
writes all three, so wit's shards look to those tools like img2dataset's.
"""
from __future__ import annotations

import json
from typing import Any

# The .json of each sample and the row of NNNNN.parquet: img2dataset's own fields first
# (url, caption, key, status, error_message, width, height, original_width,
# original_height, sha256), then wit's.
FIELDS = ("url", "caption", "key", "status", "error_message", "width", "height",
          "original_width", "original_height", "sha256", "uid", "source_uid", "selected_by",
          "query_ids", "query")


def schema():
    import pyarrow as pa
    i32 = pa.int32()
    return pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string()),
                      ("status", pa.string()), ("error_message", pa.string()),
                      ("width", i32), ("height", i32), ("original_width", i32),
                      ("original_height", i32), ("sha256", pa.string()), ("uid", pa.string()),
                      ("source_uid", pa.string()), ("selected_by", i32),
                      ("query_ids", pa.list_(i32)), ("query", pa.string())])


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    """One published sample's metadata from its publish row (`text` is the caption;
    sha256 is of the file as downloaded, as img2dataset's `--compute_hash sha256`).
    `source_uid` is left out where the build's pool had no uid column of its own."""
    meta = {"url": row["url"], "caption": row["text"], "key": row["key"], "status": "success",
            "error_message": None, "width": row["width"], "height": row["height"],
            "original_width": row.get("original_width"),
            "original_height": row.get("original_height"), "sha256": row["sha256"],
            "uid": row["uid"], "source_uid": row.get("source_uid"),
            "selected_by": row["selected_by"], "query_ids": row["query_ids"],
            "query": row.get("query")}
    if meta["source_uid"] is None:
        del meta["source_uid"]
    return meta


def write_parquet(metas: list[dict[str, Any]], path) -> None:
    """NNNNN.parquet: one row per sample, in the tar's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    s = schema()
    table = pa.Table.from_pylist(metas, schema=s)  # a left-out source_uid is null
    pq.write_table(table, path)


def stats(count: int) -> dict[str, Any]:
    """NNNNN_stats.json in img2dataset's shape. Every published sample is a success (the
    failures were counted at fetch, in its own stats files); the times are 0, as publish
    downloads nothing and the same inputs must give byte-identical files."""
    return {"count": count, "successes": count, "failed_to_download": 0,
            "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
            "status_dict": {"success": count} if count else {}}


def stats_bytes(count: int) -> bytes:
    return json.dumps(stats(count), indent=4).encode("utf-8")
