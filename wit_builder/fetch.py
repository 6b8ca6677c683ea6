"""Download the selected pairs with img2dataset's downloader, shard by shard, from Ray tasks.

The plan drops the pairs the opt-out lists name (`excluded`) and lays the rest out
over the download shards with each host's URLs in few consecutive shards
(`polite.deal`); a robots.txt pass fetches every origin's robots.txt once
(`robots.py`). Each shard is one Ray task that runs img2dataset's `Downloader` (its
thread pool, resizer and WebDataset writer; through `wit_builder.i2d`, the one adapter
to img2dataset) with `netguard.Fetcher` in place of its bare urllib call, under the
shard's share of each host's limits and with a DNS cache its threads share
(`polite.Shard`). At most --shards-in-flight shards run at once
(never two holding the same slot class of a big host); a shard that fails or
outlives --shard-time-limit is tried again. A shard task downloads into its own
machine's temporary folder and puts the finished shard into the stage's work prefix
in the build (summary.json last), so a killed run resumes where it stopped, from any
machine, and no node needs another's disk. Every selected uid ends with exactly one
row in fetch/status/ (the `samples` view); images are in fetch/shards/NNNNN.tar,
per-host counts in fetch/hosts/ and robots.txt in fetch/robots/.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog, cluster, i2d, polite, storage
from . import config as cfgmod
from .errors import WitError
from .hosts import digest, parse_overrides, read_list
from .netguard import DEFAULT_USER_AGENT, TRANSIENT
from .stage import (StageContext, StageOutput, StageResult, output_dir, params_hash, read_record,
                    require, run_stage)

RESIZE_MODES = ["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
ENCODE_FORMATS = ["jpg", "png", "webp"]
# A retry adds images to the previous shards, so these must not change between them.
SAME_ON_RETRY = ("image_size", "resize_mode", "encode_format", "encode_quality", "fetch_shard_size")
IN_TRANSIENT = "(" + ", ".join(f"'{s}'" for s in sorted(TRANSIENT)) + ")"  # SQL: status IN ...
STATUS_COLUMNS = ["uid", "url", "text", "selected_by", "query_ids", "status", "error", "width",
                  "height", "original_width", "original_height", "bytes", "sha256", "fetch_shard", "key",
                  "stored_sha256", "stored_phash", "stored_thumb", "stored_detail"]


@dataclass
class Config:
    image_size: int = field(default=256, metadata={"help": "resize images to this many pixels"})
    resize_mode: str = field(default="border", metadata={
        "help": "img2dataset resize mode", "choices": RESIZE_MODES})
    encode_format: str = field(default="jpg", metadata={
        "help": "format of the stored images", "choices": ENCODE_FORMATS})
    encode_quality: int = field(default=95, metadata={
        "help": "JPEG/WebP quality (0-100) or PNG compression (0-9) of stored images"})
    reduced_decode: bool = field(default=True, metadata={
        "help": "decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when that is "
                "still at least --image-size, before img2dataset's resize: about half the "
                "decoding and resizing work on large images (default: on); "
                "--no-reduced-decode decodes every image at full size"})
    timeout: float = field(default=10.0, metadata={
        "help": "seconds each wait (connect, a read) may take; an image must arrive whole "
                "within 2x this, connect to last byte, or it is a timeout"})
    retries: int = field(default=1, metadata={
        "help": "tries again per image for transient failures (timeout, connection, 429, 5xx)"})
    threads: int = field(default=64, metadata={"help": "download threads per shard"})
    fetch_shard_size: int = field(default=10000, metadata={"help": "images per download shard"})
    shards_in_flight: int = field(default=0, metadata={
        "help": "download shards running at once (0: one per Ray CPU)"})
    shard_time_limit: float = field(default=3600.0, metadata={
        "help": "seconds a shard may run before it is stopped and tried again"})
    shard_retries: int = field(default=2, metadata={
        "help": "tries again for a shard that failed or hit --shard-time-limit"})
    retry_failed: bool = field(default=False, metadata={
        "help": "download again the samples of the last fetch that failed for transient "
                "reasons (timeouts, connection errors, 429, 5xx; not 404) and update their rows"})
    allow_private_network: bool = field(default=False, metadata={
        "help": "fetch from loopback/private/link-local/reserved addresses (tests, intranets)"})
    robots_txt: bool = field(default=True, metadata={
        "help": "fetch each origin's /robots.txt once and skip what it disallows for "
                "wit-build (robots_disallowed), honouring Crawl-delay; an unreachable or 5xx "
                "robots.txt disallows the origin for now (robots_unavailable, RFC 9309)"})
    exclude_domains: str | None = field(default=None, metadata={
        "help": "plain list of domains (one a line) whose URLs are never requested, "
                "subdomains included (status excluded)", "metavar": "FILE"})
    exclude_urls: str | None = field(default=None, metadata={
        "help": "plain list of URLs (one a line) that are never requested (status excluded)",
        "metavar": "FILE"})
    per_host_rps: float = field(default=2.0, metadata={
        "help": "requests per second to any one host, across the whole cluster "
                "(0: no per-host limits)"})
    per_host_connections: int = field(default=2, metadata={
        "help": "connections open to any one host at once, across the whole cluster"})
    host_give_up_after: int = field(default=10, metadata={
        "help": "a host failing this many requests in a row (timeouts, refusals, 429, 5xx) "
                "is given up on for the shard: its other URLs are host_given_up (0: never)"})
    dns_cache_ttl: float = field(default=300.0, metadata={
        "help": "seconds a shard keeps a host's DNS answer (a failure: 60 s)"})
    resolve: list[str] = field(default_factory=list, metadata={
        "help": "NAME=ADDRESS pairs used instead of DNS for these names, as curl's --resolve "
                "(tests, pinned mirrors); the address guard still applies", "metavar": "NAME=ADDR"})
    resolve_only: bool = field(default=False, metadata={
        "help": "look host names up only in --resolve, never in DNS (sealed networks, tests): "
                "any other name is dns_error"})
    robots_tag: bool = field(default=True, metadata={
        "help": "honour X-Robots-Tag opt-outs (--robots-directives) sent with images"})
    robots_directives: list[str] = field(default_factory=lambda: [
        "noai", "noimageai", "noindex", "noimageindex"], metadata={
        "help": "X-Robots-Tag directives that mean: do not use this image"})
    user_agent: str = field(default=DEFAULT_USER_AGENT, metadata={"help": "User-Agent header sent"})
    max_image_area: int = field(default=89_478_485, metadata={
        "help": "refuse images with more pixels (checked before decoding: decompression bombs)"})
    max_image_bytes: int = field(default=50_000_000, metadata={
        "help": "refuse responses larger than this many bytes"})


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs (and an img2dataset
    release fetch does not support: a shard would only find out in its task)."""
    i2d.check_version()
    zero_ok = ("retries", "shards_in_flight", "shard_retries", "per_host_rps", "host_give_up_after")
    for name in ("image_size", "timeout", "threads", "fetch_shard_size", "shard_time_limit",
                 "max_image_area", "max_image_bytes", "per_host_connections", "dns_cache_ttl") + zero_ok:
        least = 0 if name in zero_ok else 1e-9
        if getattr(cfg, name) < least:
            raise WitError(f"{cfgmod.flag(name)} {getattr(cfg, name)}: must be "
                           f"{'0 or more' if least == 0 else 'above 0'}")
    for name, choices in (("resize_mode", RESIZE_MODES), ("encode_format", ENCODE_FORMATS)):
        if getattr(cfg, name) not in choices:
            raise WitError(f"{cfgmod.flag(name)} {getattr(cfg, name)}: choose one of {', '.join(choices)}")
    parse_overrides(cfg.resolve)
    top = 9 if cfg.encode_format == "png" else 100
    if not 0 <= cfg.encode_quality <= top:
        raise WitError(f"--encode-quality {cfg.encode_quality}: must be 0-{top} for {cfg.encode_format}")


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Fetch the build's selected pairs (or, with retry_failed, its transient failures)."""
    check(cfg)
    build = storage.location(build)
    base = {k: v for k, v in cfgmod.to_dict(cfg).items() if k != "retry_failed"}
    lists = {name: read_list(getattr(cfg, name), cfgmod.flag(name), name == "exclude_domains")
             for name in ("exclude_domains", "exclude_urls") if getattr(cfg, name)}
    for name, entries in lists.items():  # a changed list fetches again
        base[f"{name}_sha256"] = digest(entries)
    old = read_record(build, "fetch")
    if cfg.retry_failed:
        params = _retry_params(build, base, old)
        if not force and not _transient_rows(build):  # nothing to retry: keep the output as is
            return StageResult("fetch", old["run_id"], old["rows"], {**old["summary"], "retried": 0},
                               ["fetch"], 0.0, skipped=True)
    elif old and old.get("params", {}).get("origin") == params_hash(base):
        params = old["params"]  # the retried output of this very fetch is complete: keep it
    else:
        params = base
    return run_stage(build, "fetch", params, lambda ctx: _work(ctx, cfg, lists),
                     outputs=["fetch"], views={"samples": "fetch/status/*.parquet",
                                               "hosts": "fetch/hosts/*.parquet",
                                               "robots": "fetch/robots/*.parquet"},
                     inputs=("balance",), force=force)


def _retry_params(build: Path, base: dict, old: dict | None) -> dict:
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


def _transient_rows(build) -> int:
    import duckdb
    con = duckdb.connect()
    storage.register(con, build)
    status = output_dir(build, read_record(build, "fetch")) / "status" / "*.parquet"
    return con.execute(f"SELECT count(*) FROM read_parquet({_sql(status)}) "
                       f"WHERE status IN {IN_TRANSIENT}").fetchall()[0][0]


def _work(ctx: StageContext, cfg: Config, lists: dict[str, list[str]]) -> StageOutput:
    prev = output_dir(ctx.build, read_record(ctx.build, "fetch")) if "retry_of" in ctx.params else None
    plan = _plan(ctx, cfg, prev, lists)
    t0 = time.time()
    if cfg.robots_txt:
        _robots(ctx, cfg, plan, prev)
    run_stats, failed = _download(ctx.work, plan, cfg)
    seconds = time.time() - t0
    return _assemble(ctx, plan, failed, prev, run_stats, seconds)


_sql = storage.sql_path


def _shard_name(shard: int, oom: int) -> str:
    return f"{shard:0{oom}d}"


def _plan(ctx: StageContext, cfg: Config, prev: Path | None, lists: dict[str, list[str]]) -> dict:
    """Split the pairs into download shards under work/plan/ (once; reused on resume).

    Pairs the opt-out lists name go to plan/excluded.parquet; the rest are laid out
    by polite.deal (each host in few consecutive shards; inside a shard hosts
    alternate); plan/origins.parquet lists the robots.txt origins in buckets.
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
    polite.origins(con)
    n = con.execute("SELECT count(*) FROM pairs").fetchall()[0][0]
    n_shards, block = polite.layout(n, cfg.fetch_shard_size)
    if n:
        polite.deal(con, n_shards, block, offset, _sql(tmp))
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


def _robots(ctx: StageContext, cfg: Config, plan: dict, prev: Path | None) -> None:
    """Every origin's robots.txt into work/robots/ (robots.fetch_all)."""
    from . import robots
    robots.fetch_all(ctx.work, plan["shards"][0] if plan["shards"] else 0,
                     _task_settings(cfg, plan["oom_shard_count"]), prev,
                     retries=cfg.shard_retries, time_limit=cfg.shard_time_limit)


def _download(work, plan: dict, cfg: Config) -> tuple[dict, dict[int, str]]:
    """Run the unfinished shards as Ray tasks; returns this run's counts and the shards
    that failed every try (shard -> reason)."""
    shards, oom = plan["shards"], plan["oom_shard_count"]
    done_dir = work / "done"
    finished = {s for s in shards if (done_dir / _shard_name(s, oom) / "summary.json").exists()}
    seen = [storage.read_json(done_dir / _shard_name(s, oom) / "summary.json") for s in finished]
    total = {"rows": sum(r["rows"] for r in seen), "success": sum(r["success"] for r in seen)}
    run_stats = {"success": 0, "resumed": len(finished)}
    todo = [s for s in shards if s not in finished]
    if not todo:
        return run_stats, {}
    cluster.ensure_ray()  # left running for the next stage; the CLI stops the Ray it started
    limit = cfg.shards_in_flight or cluster.cpus()
    settings = _task_settings(cfg, oom)

    def progress(res: dict) -> str:
        run_stats["success"] += res["success"]
        total["rows"] += res["rows"]
        total["success"] += res["success"]
        return f"success {total['success'] / max(1, total['rows']):.1%}"

    # more shards than CPUs share them (downloads wait on the network), so every shard
    # in flight is running and --shard-time-limit counts from its start
    # two shards holding the same slot class of a host never run at once (polite.exclusive)
    exclusive = plan.get("exclusive", {})
    outcome = cluster.run_units(
        _fetch_shard, ((s, work / "plan" / f"fetch_shard={s}.parquet", done_dir, settings,
                        work / "robots") for s in todo),
        "fetch", total=len(todo), done=len(finished), in_flight=limit,
        retries=cfg.shard_retries, time_limit=cfg.shard_time_limit,
        num_cpus=min(1.0, cluster.cpus() / limit), raise_failed=False, on_result=progress,
        unit="shard", tokens=lambda args: exclusive.get(str(args[0]), ()))
    failed = {todo[i]: f"shard {todo[i]} {why}".replace(
        "its time limit of", "--shard-time-limit") for i, why in outcome.failed.items()}
    return run_stats, failed


def _task_settings(cfg: Config, oom: int) -> dict:
    return {
        "policy": {"timeout": cfg.timeout, "retries": cfg.retries, "user_agent": cfg.user_agent,
                   "robots_directives": sorted(cfg.robots_directives) if cfg.robots_tag else [],
                   "allow_private_network": cfg.allow_private_network,
                   "max_image_bytes": cfg.max_image_bytes, "max_image_area": cfg.max_image_area},
        "resize": {"image_size": cfg.image_size, "resize_mode": cfg.resize_mode,
                   "encode_format": cfg.encode_format, "encode_quality": cfg.encode_quality,
                   "max_image_area": cfg.max_image_area, "reduced_decode": cfg.reduced_decode},
        "polite": {"robots_txt": cfg.robots_txt, "per_host_rps": cfg.per_host_rps,
                   "per_host_connections": cfg.per_host_connections,
                   "host_give_up_after": cfg.host_give_up_after, "dns_cache_ttl": cfg.dns_cache_ttl,
                   "resolve": parse_overrides(cfg.resolve), "resolve_only": cfg.resolve_only,
                   "shard_time_limit": cfg.shard_time_limit},
        "threads": cfg.threads, "shard_size": cfg.fetch_shard_size, "oom_shard_count": oom,
    }


def _fetch_shard(shard: int, plan_file, done_dir, settings: dict, robots_dir) -> dict:
    """Ray task: download one shard with img2dataset into done_dir/NNNNN/ in the build.

    It works in a temporary folder of the machine it runs on and puts NNNNN.tar and
    NNNNN_stats.json (img2dataset's), status.parquet (the shard's rows of fetch/status),
    hosts.parquet (its per-host counts) and, last, summary.json (the proof that the
    shard is done) into done_dir/NNNNN/. A URL robots.txt rules out is never requested.
    """
    started = time.monotonic()  # the shard stops fetching at polite.stop_after of its limit
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import tempfile
    import warnings

    import cv2
    import pyarrow.parquet as pq
    from PIL import Image

    from .netguard import Fetcher, Policy
    from .polite import Shard, stop_after
    from .robots import shard_rows
    from .resizing import CvTap, Download, hashing_resizer

    oom = settings["oom_shard_count"]
    name = _shard_name(shard, oom)
    final = done_dir / name
    if (final / "summary.json").exists():  # finished by an attempt the driver had given up on
        return storage.read_json(final / "summary.json")
    with tempfile.TemporaryDirectory(prefix=f"wit-fetch-{name}-") as tmp:
        out = Path(tmp)
        with plan_file.open("rb") as f:
            plan = pq.read_table(f).sort_by("ord")
        feather = out / "input.arrow"
        i2d.write_input(feather, plan["uid"], plan["text"], plan["url"])

        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        p = settings["policy"]
        manners = Shard(plan, settings, shard_rows(plan, robots_dir) if settings["polite"]["robots_txt"] else [])
        limit = settings["polite"]["shard_time_limit"]
        fetcher = Fetcher(Policy(**{**p, "robots_directives": frozenset(p["robots_directives"])}),
                          manners.resolver, manners.limits, manners.request,
                          stop_at=started + stop_after(limit),
                          stop_note=f"the shard stopped at {stop_after(limit):g} s of "
                                    f"--shard-time-limit {limit:g} s (to keep what it finished)")
        outcomes: dict[int, tuple] = {}

        def fetch(index: int, url: str) -> tuple:
            refused = manners.refuse(url)  # robots.txt (or its host's DNS) says no: not requested
            data, status, error = (None, *refused) if refused else fetcher.fetch(url)
            manners.outcome(url, status)
            outcomes[index] = (status, error, None if data is None else len(data))
            return (None if data is None else Download(index, data)), error

        r = settings["resize"]
        stored: dict[int, tuple] = {}
        tap = CvTap(cv2, r["image_size"] if r["reduced_decode"] else None, r["resize_mode"])
        resize = hashing_resizer(i2d.resizer(
            r["image_size"], r["resize_mode"], r["encode_format"], r["encode_quality"],
            r["max_image_area"]), tap, stored)
        try:
            results = i2d.download_shard(
                shard, feather, out, download=fetch, resize=resize, cv2=tap,
                threads=settings["threads"], shard_size=settings["shard_size"], oom_shard_count=oom,
                timeout=p["timeout"], retries=p["retries"], encode_format=r["encode_format"])
        finally:
            fetcher.close()
        table = _status_table(plan, results, outcomes, stored, shard, settings)
        pq.write_table(table, out / "status.parquet")
        statuses = table["status"].to_pylist()
        counts: dict[str, int] = {}
        for st in statuses:
            counts[st] = counts.get(st, 0) + 1
        summary = {"shard": shard, "rows": len(statuses), "success": counts.get("success", 0),
                   "statuses": counts, "bytes": sum(b for b in table["bytes"].to_pylist() if b),
                   "dns": manners.dns()}
        pq.write_table(manners.table(), out / "hosts.parquet")
        for f in (f"{name}.tar", f"{name}_stats.json", "status.parquet", "hosts.parquet"):
            storage.upload_file(out / f, final / f)
        storage.write_json(final / "summary.json", summary)
    return summary


def _status_table(plan, i2d_parquet: Path, outcomes: dict, stored: dict, shard: int,
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
        cols["key"].append(_key(index, shard, settings))
    return _with_status(plan, cols)


def _key(index: int, shard: int, settings: dict) -> str:
    return i2d.sample_key(index, shard, settings["shard_size"], settings["oom_shard_count"])


def _with_status(plan, cols: dict | None = None):
    """`plan` (uid, url, text, selected_by, query_ids, ...) with the status columns
    `cols` (all null if not given) as a fetch/status table."""
    import pyarrow as pa
    i32, text = pa.int32(), pa.string()
    types = [text, text, text, i32, pa.list_(i32), text, text, i32, i32, i32, i32, pa.int64(),
             text, i32, text, text, pa.int64(), pa.binary(), pa.float32()]
    schema = pa.schema(list(zip(STATUS_COLUMNS, types)))
    if plan is None:
        return schema.empty_table()
    n = plan.num_rows
    cols = cols or {}
    return pa.Table.from_arrays(
        [plan[c].cast(t) for c, t in zip(STATUS_COLUMNS[:5], types)]
        + [pa.array(cols.get(c, [None] * n), t) for c, t in zip(STATUS_COLUMNS[5:], types[5:])],
        schema=schema)


def _assemble(ctx: StageContext, plan: dict, failed: dict[int, str], prev, run_stats: dict,
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
    dns_lookups = 0

    def add(statuses: dict[str, int], size: int = 0) -> None:
        nonlocal total_bytes
        for k, v in statuses.items():
            counts[k] = counts.get(k, 0) + v
        total_bytes += size

    for shard in plan["shards"]:
        name = _shard_name(shard, oom)
        done = ctx.work / "done" / name
        if shard not in failed:
            summary = storage.read_json(done / "summary.json")
            add(summary["statuses"], summary["bytes"])
            dns_lookups += summary.get("dns", {}).get("lookups", 0)
            for f in (f"{name}.tar", f"{name}_stats.json"):
                ctx.adopt(done / f, f"fetch/shards/{f}")
            ctx.adopt(done / "hosts.parquet", f"fetch/hosts/{name}.parquet")
            ctx.adopt(done / "status.parquet", f"fetch/status/{name}.parquet")
            continue
        with (ctx.work / "plan" / f"fetch_shard={shard}.parquet").open("rb") as f:
            rows = pq.read_table(f).sort_by("ord")
        n = rows.num_rows
        pq.write_table(_with_status(rows, {
            "status": ["shard_failed"] * n, "error": [failed[shard]] * n, "fetch_shard": [shard] * n,
            "key": [_key(i, shard, settings) for i in range(n)]}), status_out / f"{name}.parquet")
        add({"shard_failed": n})
    add(polite.adopt(ctx, plan, prev, status_out, _with_status))
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
        pq.write_table(_with_status(None), status_out / "empty.parquet")
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
    if plan["duplicate_uids"]:
        summary["duplicate_uids_dropped"] = plan["duplicate_uids"]
    if prev is not None:
        summary["retried"] = plan["rows"]
    return StageOutput(rows=rows, summary=summary)
