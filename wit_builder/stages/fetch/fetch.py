"""Download the selected pairs with img2dataset's downloader, shard by shard, from Ray tasks.

The plan drops the pairs the opt-out lists name (`excluded`) and lays the rest out
over the download shards with each host's URLs in few consecutive shards
(`polite.deal`); each origin's robots.txt is fetched once (`robots.py`): by a robots
pass that runs beside the download for hosts that several shards hold, by the shard
itself for the others. Each shard is one Ray task that runs img2dataset's `Downloader` (its
thread pool, resizer and WebDataset writer; through `wit_builder.stages.fetch.i2d`, the one adapter
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

This module is the stage's entry (settings, checks, the run); its parts sit beside it:
`fetch_plan` (the shard plan, a retry's parameters), `fetch_task` (the shards as Ray
tasks, driver and task) and `fetch_status` (the status table, the output assembled).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from wit_builder import config as cfgmod
from wit_builder import storage
from wit_builder.build.stage import (
    StageContext,
    StageOutput,
    StageResult,
    output_dir,
    params_hash,
    read_record,
    run_stage,
)
from wit_builder.config import above, at_least, one_of
from wit_builder.errors import WitError
from wit_builder.io import digest, read_list
from wit_builder.stages.fetch import i2d, nameservers
from wit_builder.stages.fetch.fetch_plan import plan_shards, retry_params, transient_rows
from wit_builder.stages.fetch.fetch_status import STATUS_COLUMNS, assemble  # noqa: F401 (fetch.STATUS_COLUMNS: tests)
from wit_builder.stages.fetch.fetch_task import download, task_settings
from wit_builder.stages.fetch.nameservers import parse_overrides
from wit_builder.stages.fetch.netguard import DEFAULT_USER_AGENT

RESIZE_MODES = ["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"]
ENCODE_FORMATS = ["jpg", "png", "webp"]


@dataclass
class Config:
    image_size: int = field(default=256, metadata={"check": above(0), "help": "resize images to this many pixels"})
    resize_mode: str = field(default="border", metadata={"check": one_of(RESIZE_MODES),
        "help": "img2dataset resize mode", "choices": RESIZE_MODES})
    encode_format: str = field(default="jpg", metadata={"check": one_of(ENCODE_FORMATS),
        "help": "format of the stored images", "choices": ENCODE_FORMATS})
    encode_quality: int = field(default=95, metadata={
        "help": "JPEG/WebP quality (0-100) or PNG compression (0-9) of stored images"})
    reduced_decode: bool = field(default=True, metadata={
        "help": "decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when that is "
                "still at least --image-size, before img2dataset's resize: about half the "
                "decoding and resizing work on large images (default: on); "
                "--no-reduced-decode decodes every image at full size"})
    timeout: float = field(default=10.0, metadata={"check": above(0),
        "help": "seconds each wait (connect, a read) may take; an image must arrive whole "
                "within 2x this, connect to last byte, or it is a timeout"})
    retries: int = field(default=1, metadata={"check": at_least(0),
        "help": "tries again per image for transient failures (timeout, connection, 429, 5xx)"})
    threads: int = field(default=64, metadata={"check": above(0), "help": "download threads per shard"})
    fetch_shard_size: int = field(default=10000, metadata={"check": above(0), "help": "images per download shard"})
    shards_in_flight: int = field(default=0, metadata={"check": at_least(0),
        "help": "download shards running at once (0: one per Ray CPU)"})
    shard_time_limit: float = field(default=3600.0, metadata={"check": above(0),
        "help": "seconds a shard may run before it is stopped and tried again"})
    shard_retries: int = field(default=2, metadata={"check": at_least(0),
        "help": "tries again for a shard that failed or hit --shard-time-limit"})
    retry_failed: bool = field(default=False, metadata={
        "help": "download again the samples of the last fetch that failed for transient "
                "reasons (timeouts, connection errors, 429, 5xx; not 404) and update their rows",
        "output": False})
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
    per_host_rps: float = field(default=2.0, metadata={"check": at_least(0),
        "help": "requests per second to any one host, across the whole cluster "
                "(0: no per-host limits)"})
    per_host_connections: int = field(default=2, metadata={"check": above(0),
        "help": "connections open to any one host at once, across the whole cluster"})
    host_give_up_after: int = field(default=10, metadata={"check": at_least(0),
        "help": "a host failing this many requests in a row (timeouts, refusals, 429, 5xx) "
                "is given up on for the shard: its other URLs are host_given_up (0: never)"})
    dns_cache_ttl: float = field(default=300.0, metadata={"check": above(0),
        "help": "seconds a shard keeps a host's DNS answer at most: the answer's own TTL when "
                "shorter (at least 1 s; a failure: 60 s); with --dns-server system, always"})
    dns_server: list[str] = field(default_factory=list, metadata={
        "help": "DNS servers fetch asks itself, so answers keep their own TTL (default: those "
                "of /etc/resolv.conf; names in /etc/hosts are answered from it); 'system' "
                "uses the system resolver (getaddrinfo, no TTL)", "metavar": "ADDR[:PORT]",
        "output": False})
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
    max_image_area: int = field(default=89_478_485, metadata={"check": above(0),
        "help": "refuse images with more pixels (checked before decoding: decompression bombs)"})
    max_image_bytes: int = field(default=50_000_000, metadata={"check": above(0),
        "help": "refuse responses larger than this many bytes"})


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs (and an img2dataset
    release fetch does not support: a shard would only find out in its task): each
    field's own check, then the rules that need several fields."""
    i2d.check_version()
    cfgmod.check_fields(cfg)  # bounds and names, on the fields
    parse_overrides(cfg.resolve)
    nameservers.parse_servers(cfg.dns_server)
    top = 9 if cfg.encode_format == "png" else 100
    if not 0 <= cfg.encode_quality <= top:
        raise WitError(f"--encode-quality {cfg.encode_quality}: must be 0-{top} for {cfg.encode_format}")


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Fetch the build's selected pairs (or, with retry_failed, its transient failures)."""
    check(cfg)
    build = storage.location(build)
    base = cfgmod.output_settings(cfg)
    lists = {name: read_list(getattr(cfg, name), cfgmod.flag(name), name == "exclude_domains")
             for name in ("exclude_domains", "exclude_urls") if getattr(cfg, name)}
    for name, entries in lists.items():  # a changed list fetches again
        base[f"{name}_sha256"] = digest(entries)
    old = read_record(build, "fetch")
    if cfg.retry_failed:
        params = retry_params(build, base, old)
        if not force and not transient_rows(build):  # nothing to retry: keep the output as is
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


def _work(ctx: StageContext, cfg: Config, lists: dict[str, list[str]]) -> StageOutput:
    prev = output_dir(ctx.build, read_record(ctx.build, "fetch")) if "retry_of" in ctx.params else None
    plan = plan_shards(ctx, cfg, prev, lists)
    t0 = time.time()
    # the robots pass runs while the download does; a shard that needs one of its
    # origins waits for that origin's file (robots.Pass)
    ahead = _robots(ctx, cfg, plan, prev) if cfg.robots_txt else None
    # should the download raise (Ctrl-C, say), the pass's daemon thread ends with the process
    run_stats, failed = download(ctx.work, plan, cfg)
    if ahead is not None:
        ahead.wait()
    seconds = time.time() - t0
    return assemble(ctx, plan, failed, prev, run_stats, seconds)


def _robots(ctx: StageContext, cfg: Config, plan: dict, prev: Path | None):
    """The robots pass (the origins of hosts several shards hold) into work/robots/,
    started on a thread (robots.Pass)."""
    from wit_builder.stages.fetch import robots
    return robots.Pass(ctx.work, plan["shards"][0] if plan["shards"] else 0,
                       task_settings(cfg, plan["oom_shard_count"]), prev,
                       retries=cfg.shard_retries, time_limit=cfg.shard_time_limit)
