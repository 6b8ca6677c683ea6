"""fetch's status table: the columns of fetch/status, a shard's rows built from
img2dataset's parquet and netguard's statuses, and the stage's output assembled from the
finished shards (adopted at the commit), the failed ones and a retried fetch's kept rows."""
from __future__ import annotations

from pathlib import Path

from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import StageContext, StageOutput
from wit_builder.schemas import FETCH_COLUMNS, TRANSIENT, fetch_status_schema
from wit_builder.stages.fetch import i2d, polite

IN_TRANSIENT = "(" + ", ".join(f"'{s}'" for s in sorted(TRANSIENT)) + ")"  # SQL: status IN ...
STATUS_COLUMNS = list(FETCH_COLUMNS)  # wit_builder.schemas.FETCH_STATUS

_sql = storage.sql_path


def shard_name(shard: int, oom: int) -> str:
    return f"{shard:0{oom}d}"


def status_table(plan, i2d_parquet: Path, outcomes: dict, stored: dict, shard: int,
                 settings: dict):
    """The shard's fetch/status rows, in plan order, from img2dataset's parquet, the
    statuses netguard gave each download and the hashes of the stored images."""
    import pyarrow.parquet as pq
    by_uid = {m["uid"]: m for m in pq.read_table(i2d_parquet).to_pylist()}
    cols: dict[str, list] = {c: [] for c in STATUS_COLUMNS[5:]}
    for index, uid in enumerate(plan["uid"].to_pylist()):
        m = by_uid.get(uid)
        status, error, size = outcomes.get(index, (None, None, None))
        if m is None:
            status, error = "failed", "img2dataset wrote no row for this sample (see the Ray worker log)"
        elif m["status"] == "success":
            error = None
        elif m["status"] == "failed_to_resize":
            status, error = "decode_error", m["error_message"]
        elif status in (None, "success"):
            status, error = "failed", m["error_message"]
        success = status == "success"
        for c in ("width", "height", "original_width", "original_height", "sha256"):
            cols[c].append(m[c] if success else None)
        sig = stored.get(index, (None,) * 4) if success else (None,) * 4
        for c, v in zip(("stored_sha256", "stored_phash", "stored_thumb", "stored_detail"), sig):
            cols[c].append(v)
        cols["status"].append(status)
        cols["error"].append(error)
        cols["bytes"].append(size if success else None)
        cols["fetch_shard"].append(shard)
        cols["key"].append(row_key(index, shard, settings))
    return with_status(plan, cols)


def row_key(index: int, shard: int, settings: dict) -> str:
    return i2d.sample_key(index, shard, settings["shard_size"], settings["oom_shard_count"])


def with_status(plan, cols: dict | None = None):
    """`plan` (uid, url, text, selected_by, query_ids, ...) with the status columns
    `cols` (all null if not given) as a fetch/status table."""
    import pyarrow as pa
    schema = fetch_status_schema()
    types = schema.types
    if plan is None:
        return schema.empty_table()
    n = plan.num_rows
    cols = cols or {}
    return pa.Table.from_arrays(
        [plan[c].cast(t) for c, t in zip(STATUS_COLUMNS[:5], types)]
        + [pa.array(cols.get(c, [None] * n), t) for c, t in zip(STATUS_COLUMNS[5:], types[5:])],
        schema=schema)


def assemble(ctx: StageContext, plan: dict, failed: dict[int, str], prev, run_stats: dict,
             seconds: float) -> StageOutput:
    """fetch/shards and fetch/status from the finished shards (and the previous fetch).

    Finished shards' files are adopted (moved within the store at the commit); only
    rows written here — failed shards, a retry's kept rows — pass through this machine,
    and the counts come from each shard's summary.json.
    """
    import pyarrow.parquet as pq
    status_out = ctx.output("fetch") / "status"
    status_out.mkdir()
    oom = plan["oom_shard_count"]
    settings = {"shard_size": ctx.params["fetch_shard_size"], "oom_shard_count": oom}
    counts: dict[str, int] = {}
    total_bytes = 0
    dns_lookups = shared = waited = 0
    waited_s = 0.0

    def add(statuses: dict[str, int], size: int = 0) -> None:
        nonlocal total_bytes
        for k, v in statuses.items():
            counts[k] = counts.get(k, 0) + v
        total_bytes += size

    for shard in plan["shards"]:
        name = shard_name(shard, oom)
        done = ctx.work / "done" / name
        if shard not in failed:
            summary = storage.read_json(done / "summary.json")
            add(summary["statuses"], summary["bytes"])
            dns_lookups += summary.get("dns", {}).get("lookups", 0)
            shared += summary.get("board", {}).get("adopted", 0)
            waited += summary.get("limits", {}).get("waited", 0)
            waited_s += summary.get("limits", {}).get("waited_s", 0.0)
            for f in (f"{name}.tar", f"{name}_stats.json"):
                ctx.adopt(done / f, f"fetch/shards/{f}")
            ctx.adopt(done / "hosts.parquet", f"fetch/hosts/{name}.parquet")
            if summary.get("robots_fetched"):
                ctx.adopt(done / "robots.parquet", f"fetch/robots/{name}.parquet")
            ctx.adopt(done / "status.parquet", f"fetch/status/{name}.parquet")
            continue
        with (ctx.work / "plan" / f"fetch_shard={shard}.parquet").open("rb") as f:
            rows = pq.read_table(f).sort_by("ord")
        n = rows.num_rows
        pq.write_table(with_status(rows, {
            "status": ["shard_failed"] * n, "error": [failed[shard]] * n, "fetch_shard": [shard] * n,
            "key": [row_key(i, shard, settings) for i in range(n)]}), status_out / f"{name}.parquet")
        add({"shard_failed": n})
    add(polite.adopt(ctx, plan, prev, status_out, with_status))
    if prev is not None:  # keep the previous rows that were not retried, and all its images
        con = catalog.scratch(ctx.scratch, remote=ctx.build)
        for f in sorted((prev / "status").glob("*.parquet"), key=str):
            dest = status_out / f.name
            con.execute(f"COPY (SELECT * FROM read_parquet({_sql(f)}) WHERE status NOT IN "
                        f"{IN_TRANSIENT}) TO {_sql(dest)} (FORMAT parquet)")
            kept = con.execute(f"SELECT status, count(*), coalesce(sum(bytes), 0) FROM "
                               f"read_parquet({_sql(dest)}) GROUP BY 1").fetchall()
            for status, k, size in kept:
                add({status: k}, size)
        for f in sorted((prev / "shards").iterdir(), key=str):
            ctx.adopt(f, f"fetch/shards/{f.name}", copy=True)
        con.close()
    if not any(status_out.iterdir()) and not plan["shards"]:
        pq.write_table(with_status(None), status_out / "empty.parquet")
    counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    rows = sum(counts.values())
    failures = {k: v for k, v in counts.items() if k != "success"}
    summary = {
        "success": counts.get("success", 0), "failed": rows - counts.get("success", 0),
        "failures": ", ".join(f"{k} {v:,}" for k, v in failures.items()) or "none",
        "failures_by_status": failures,
        "success_rate": round(counts.get("success", 0) / rows, 4) if rows else None,
        "images_per_s": round(run_stats["success"] / seconds, 1) if seconds > 0 else None,
        "bytes": int(total_bytes), "shards": len(plan["shards"]),
        "shards_resumed": run_stats["resumed"], "shards_failed": len(failed),
    }
    summary.update(polite.figures(ctx.work / "done" / "*" / "hosts.parquet", dns_lookups,
                                  remote=ctx.build, scratch=ctx.scratch))
    if waited:  # requests held back by --per-host-rps/--per-host-connections (or Crawl-delay)
        summary["requests_waited"] = waited
        summary["request_wait_s"] = round(waited_s, 1)
    if shared:  # hosts slowed down (or given up on) because another shard was told to
        summary["slowdowns_shared"] = shared
    if plan["duplicate_uids"]:
        summary["duplicate_uids_dropped"] = plan["duplicate_uids"]
    if prev is not None:
        summary["retried"] = plan["rows"]
    return StageOutput(rows=rows, summary=summary)
