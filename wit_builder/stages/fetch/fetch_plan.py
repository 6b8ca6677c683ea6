"""fetch's plan: the pairs to fetch (the selection, or a retry's transient failures)
laid out over the download shards under work/plan/, and the parameters and checks of a
--retry-failed run on top of the last finished fetch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from wit_builder import config as cfgmod
from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import StageContext, output_dir, params_hash, read_record, require
from wit_builder.errors import WitError
from wit_builder.stages.fetch import polite
from wit_builder.stages.fetch.fetch_status import IN_TRANSIENT

# A retry adds images to the previous shards, so these must not change between them.
SAME_ON_RETRY = ("image_size", "resize_mode", "encode_format", "encode_quality", "fetch_shard_size")

_sql = storage.sql_path


def retry_params(build: Path, base: dict, old: dict | None) -> dict:
    """Parameters of a retry on top of the last finished fetch (see docs/fetch.md)."""
    if not old or old.get("status") != "done" or not (output_dir(build, old) / "status").exists():
        raise WitError(f"--retry-failed: {build} has no finished fetch to retry; "
                       f"run `wit-build fetch --out {build}` first")
    balance = require(build, "balance")
    if old.get("inputs", {}).get("balance") != balance["run_id"]:
        raise WitError(f"--retry-failed: selected/ in {build} changed since the last fetch; "
                       "run `wit-build fetch` without --retry-failed")
    for name in SAME_ON_RETRY:
        if old["params"].get(name) != base[name]:
            raise WitError(f"--retry-failed: {cfgmod.flag(name)} {base[name]} differs from the last "
                           f"fetch ({old['params'].get(name)}); retry with the same value")
    origin = old["params"].get("origin") or params_hash(old["params"])
    return {**base, "retry_of": old["run_id"], "origin": origin}


def transient_rows(build) -> int:
    import duckdb
    con = duckdb.connect()
    storage.register(con, build)
    status = output_dir(build, read_record(build, "fetch")) / "status" / "*.parquet"
    return con.execute(f"SELECT count(*) FROM read_parquet({_sql(status)}) "
                       f"WHERE status IN {IN_TRANSIENT}").fetchall()[0][0]


def plan_shards(ctx: StageContext, cfg, prev: Path | None, lists: dict[str, list[str]]) -> dict:
    """Split the pairs into download shards under work/plan/ (once; reused on resume).

    Pairs the opt-out lists name go to plan/excluded.parquet; the rest are laid out
    by polite.deal (each host in few consecutive shards; inside a shard hosts
    alternate); plan/origins.parquet lists the robots.txt origins of the robots pass
    (polite.origins), in buckets.
    """
    import duckdb
    done = ctx.work / "plan" / "plan.json"
    if done.exists():
        return json.loads(done.read_text())
    tmp = ctx.scratch / "plan.tmp"  # written here, then put into the build (plan.json last)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    con = catalog.scratch(ctx.scratch, keep_order=False, remote=ctx.build)  # big selections spill
    if prev is None:
        src, offset = ctx.build / ctx.inputs["balance"]["views"]["selected"], 0
        rows = (f"SELECT DISTINCT ON (uid) uid, url, text, selected_by, query_ids "
                f"FROM read_parquet({_sql(src)}) ORDER BY uid, selected_by")
    else:
        src = prev / "status" / "*.parquet"
        offset = con.execute(f"SELECT coalesce(max(fetch_shard) + 1, 0) FROM read_parquet({_sql(src)})"
                             ).fetchall()[0][0]
        rows = (f"SELECT uid, url, text, selected_by, query_ids FROM read_parquet({_sql(src)}) "
                f"WHERE status IN {IN_TRANSIENT}")
    try:
        con.execute(f"CREATE TEMP TABLE pairs AS {rows}")
        given = None if prev else con.execute(f"SELECT count(*) FROM read_parquet({_sql(src)})").fetchall()[0][0]
    except duckdb.Error as e:
        raise WitError(f"{src}: cannot read the pairs to fetch ({str(e).splitlines()[0]}); "
                       "rerun the stage that wrote them") from None
    polite.add_host_columns(con)
    where = {k: getattr(cfg, k) for k in lists}
    excluded = polite.exclude(con, lists.get("exclude_domains", []), lists.get("exclude_urls", []), where)
    n = con.execute("SELECT count(*) FROM pairs").fetchall()[0][0]
    n_shards, block = polite.layout(n, cfg.fetch_shard_size)
    if n:  # a retry's robots pass covers every origin (it mostly reuses the last fetch's rows)
        polite.deal(con, n_shards, block, offset, _sql(tmp), every_origin=prev is not None)
    else:
        polite.no_origins(con)
    con.execute(f"COPY (SELECT uid, url, text, selected_by, query_ids, error FROM excluded) "
                f"TO {_sql(tmp / 'excluded.parquet')} (FORMAT parquet)")
    con.execute(f"COPY (SELECT * FROM origins ORDER BY origin) TO {_sql(tmp / 'origins.parquet')} "
                "(FORMAT parquet)")
    shards = list(range(offset, offset + n_shards))
    exclusive = (polite.exclusive(con, _sql(tmp / "fetch_shard=*" / "*.parquet"), cfg.per_host_connections)
                 if n and cfg.per_host_rps > 0 else {})
    plan = {"rows": n, "excluded": excluded, "shards": shards, "block": block,
            "duplicate_uids": 0 if prev else given - n - excluded,
            "robots_buckets": con.execute("SELECT count(DISTINCT robots_bucket) FROM origins").fetchall()[0][0],
            "exclusive": {str(k): v for k, v in exclusive.items()},
            "oom_shard_count": max(5, len(str(shards[-1])) if shards else 0)}
    con.close()
    for part in sorted(tmp.glob("fetch_shard=*/*.parquet")):
        storage.upload_file(part, ctx.work / "plan" / f"{part.parent.name}.parquet")
    for name in ("excluded.parquet", "origins.parquet"):
        storage.upload_file(tmp / name, ctx.work / "plan" / name)
    storage.write_json(done, plan)
    shutil.rmtree(tmp, ignore_errors=True)
    return plan
