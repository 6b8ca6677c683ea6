"""fetch's shards as Ray tasks: the settings a task gets, the driver side that runs the
unfinished shards through cluster.run_units, and the task that downloads one shard with
img2dataset (through i2d) and netguard.Fetcher into the build."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from wit_builder import storage
from wit_builder.build import cluster
from wit_builder.stages.fetch import i2d, nameservers
from wit_builder.stages.fetch.board import close as close_board
from wit_builder.stages.fetch.board import name_for as board_name
from wit_builder.stages.fetch.fetch_status import shard_name, status_table
from wit_builder.stages.fetch.nameservers import parse_overrides


def download(work, plan: dict, cfg) -> tuple[dict, dict[int, str]]:
    """Run the unfinished shards as Ray tasks; returns this run's counts and the shards
    that failed every try (shard -> reason)."""
    shards, oom = plan["shards"], plan["oom_shard_count"]
    done_dir = work / "done"
    finished = {s for s in shards if (done_dir / shard_name(s, oom) / "summary.json").exists()}
    seen = [storage.read_json(done_dir / shard_name(s, oom) / "summary.json") for s in finished]
    total = {"rows": sum(r["rows"] for r in seen), "success": sum(r["success"] for r in seen)}
    run_stats = {"success": 0, "resumed": len(finished)}
    todo = [s for s in shards if s not in finished]
    if not todo:
        return run_stats, {}
    cluster.ensure_ray()  # left running for the next stage; the CLI stops the Ray it started
    limit = cfg.shards_in_flight or cluster.cpus()
    settings = {**task_settings(cfg, oom), "first_shard": shards[0]}  # names the robots pass's files

    def progress(res: dict) -> str:
        run_stats["success"] += res["success"]
        total["rows"] += res["rows"]
        total["success"] += res["success"]
        return f"success {total['success'] / max(1, total['rows']):.1%}"

    # more shards than CPUs share them (downloads wait on the network), so every shard
    # in flight is running and --shard-time-limit counts from its start
    # two shards holding the same slot class of a host never run at once (polite.exclusive)
    exclusive = plan.get("exclusive", {})
    board = board_name(uuid.uuid4().hex[:12]) if cfg.per_host_rps > 0 and len(todo) > 1 else None
    try:
        outcome = cluster.run_units(
            fetch_shard, ((s, work / "plan" / f"fetch_shard={s}.parquet", done_dir, settings,
                            work / "robots", board) for s in todo),
            "fetch", total=len(todo), done=len(finished), in_flight=limit,
            retries=cfg.shard_retries, time_limit=cfg.shard_time_limit,
            num_cpus=min(1.0, cluster.cpus() / limit), raise_failed=False, on_result=progress,
            unit="shard", tokens=lambda args: exclusive.get(str(args[0]), ()))
    finally:
        if board is not None:
            close_board(board)
    failed = {todo[i]: f"shard {todo[i]} {why}".replace(
        "its time limit of", "--shard-time-limit") for i, why in outcome.failed.items()}
    return run_stats, failed


def task_settings(cfg, oom: int) -> dict:
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
                   "dns_server": nameservers.parse_servers(cfg.dns_server), "dns_timeout": cfg.timeout,
                   "resolve": parse_overrides(cfg.resolve), "resolve_only": cfg.resolve_only,
                   "shard_time_limit": cfg.shard_time_limit},
        "threads": cfg.threads, "shard_size": cfg.fetch_shard_size, "oom_shard_count": oom,
    }


def fetch_shard(shard: int, plan_file, done_dir, settings: dict, robots_dir, board=None) -> dict:
    """Ray task: download one shard with img2dataset into done_dir/NNNNN/ in the build.

    It works in a temporary folder of the machine it runs on and puts NNNNN.tar and
    NNNNN_stats.json (img2dataset's), status.parquet (the shard's rows of fetch/status),
    hosts.parquet (its per-host counts), robots.parquet (the robots.txt rows it
    fetched itself, if any) and, last, summary.json (the proof that the shard is done)
    into done_dir/NNNNN/. A URL robots.txt rules out is never requested.
    `board` (the name of the run's board.Board actor) shares slow-downs with the
    run's other shards.
    """
    started = time.monotonic()  # the shard stops fetching at polite.stop_after of its limit
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import tempfile
    import warnings

    i2d.load()  # before anything else imports img2dataset: a worker without torch
    import cv2
    import pyarrow.parquet as pq
    from PIL import Image

    from wit_builder.stages.fetch.frontier import Frontier
    from wit_builder.stages.fetch.netguard import Fetcher, Policy
    from wit_builder.stages.fetch.polite import Shard, stop_after
    from wit_builder.stages.fetch.resizing import CvTap, Download, hashing_resizer
    from wit_builder.stages.fetch.robots import FAILED, shard_rows

    oom = settings["oom_shard_count"]
    name = shard_name(shard, oom)
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
        rows, awaited = (shard_rows(plan, robots_dir, settings["first_shard"])
                         if settings["polite"]["robots_txt"] else ([], {}))
        manners = Shard(plan, settings, rows, board, awaited, robots_dir / FAILED)
        limit = settings["polite"]["shard_time_limit"]
        fetcher = Fetcher(Policy(**{**p, "robots_directives": frozenset(p["robots_directives"])}),
                          manners.resolver, manners.limits, manners.request,
                          stop_at=started + stop_after(limit),
                          stop_note=f"the shard stopped at {stop_after(limit):g} s of "
                                    f"--shard-time-limit {limit:g} s (to keep what it finished)")
        manners.start(fetcher)
        outcomes: dict[int, tuple] = {}
        # with limited hosts, a thread takes the URL whose host can start soonest,
        # not the row img2dataset handed it (which another thread may take instead)
        frontier = (Frontier(list(enumerate(plan["url"].to_pylist())), manners.limits, manners.held)
                    if manners.limited else None)

        def fetch(index: int, url: str) -> tuple:
            if frontier is not None:
                index, url = frontier.take()
            try:
                refused = manners.refuse(url)  # robots.txt (or its host's DNS) says no: not requested
                data, status, error = (None, *refused) if refused else fetcher.fetch(url)
            finally:
                if frontier is not None:
                    manners.limits.unclaim()
            manners.outcome(url, status)
            outcomes[index] = (status, error, None if data is None else len(data))
            return index, (None if data is None else Download(index, data)), error

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
            manners.close()
        table = status_table(plan, results, outcomes, stored, shard, settings)
        pq.write_table(table, out / "status.parquet")
        statuses = table["status"].to_pylist()
        counts: dict[str, int] = {}
        for st in statuses:
            counts[st] = counts.get(st, 0) + 1
        summary = {"shard": shard, "rows": len(statuses), "success": counts.get("success", 0),
                   "statuses": counts, "bytes": sum(b for b in table["bytes"].to_pylist() if b),
                   "dns": manners.dns(), "board": manners.shared(), "limits": manners.waits()}
        pq.write_table(manners.table(), out / "hosts.parquet")
        files = [f"{name}.tar", f"{name}_stats.json", "status.parquet", "hosts.parquet"]
        robots = manners.robots_table()
        if robots is not None:  # the robots.txt of the hosts only this shard holds
            pq.write_table(robots, out / "robots.parquet")
            files.append("robots.parquet")
            summary["robots_fetched"] = robots.num_rows
        for f in files:
            storage.upload_file(out / f, final / f)
        storage.write_json(final / "summary.json", summary)
    return summary
