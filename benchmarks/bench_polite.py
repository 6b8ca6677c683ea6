"""Fetch with the politeness machinery on vs off: images/s, same URL list, same run.

The URLs are spread over many loopback hosts (names that --resolve maps to
127.0.0.2, 127.0.0.3, ...; each its own image server, in this process, with a
robots.txt), with limits high enough that none is reached, so what is measured is
what the machinery costs: the robots.txt pass and a verdict per URL, per-host slots
and connection gates, the exclusive-token scheduling of shards. "off" is
`--per-host-rps 0 --no-robots-txt`. Rounds alternate; medians shown.

    .venv/bin/python benchmarks/bench_polite.py [--hosts 240] [--per-host 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers: tests.support
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tests.support.fetch import write_selected  # noqa: E402
from wit_builder.build import cluster  # noqa: E402
from wit_builder.demo import imageserver
from wit_builder.stages.fetch import fetch

ROBOTS = "User-agent: *\nDisallow: /private/\n"


def one(build: Path, urls: list[str], resolve: list[str], a, polite: bool) -> dict:
    shutil.rmtree(build, ignore_errors=True)
    write_selected(build, urls)
    extra = (dict(per_host_rps=a.rps, per_host_connections=a.connections, robots_txt=True)
             if polite else dict(per_host_rps=0, robots_txt=False))
    cfg = fetch.Config(image_size=64, timeout=10.0, retries=0, threads=a.threads,
                       fetch_shard_size=a.shard_size, shards_in_flight=a.parallel,
                       allow_private_network=True, resolve=resolve, resolve_only=True, **extra)
    t0 = time.perf_counter()
    res = fetch.run(cfg, build)
    wall = time.perf_counter() - t0
    return {"wall": wall, "success": res.summary["success"], "img_s": res.summary["success"] / wall,
            "waited": res.summary.get("requests_waited", 0), "wait_s": res.summary.get("request_wait_s", 0.0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=240)
    p.add_argument("--per-host", type=int, default=20, help="URLs per host")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--parallel", type=int, default=2, help="shards in flight (= Ray CPUs)")
    p.add_argument("--rps", type=float, default=200.0, help="--per-host-rps when on (not reached)")
    p.add_argument("--connections", type=int, default=16, help="--per-host-connections when on")
    a = p.parse_args()
    if a.hosts > 250:
        p.error("--hosts: at most 250 (127.0.0.2-127.0.0.251)")
    servers = [imageserver.serve(host=f"127.0.0.{2 + i}", robots=ROBOTS) for i in range(a.hosts)]
    names = [f"h{i}.bench" for i in range(a.hosts)]
    resolve = [f"{n}=127.0.0.{2 + i}" for i, n in enumerate(names)]
    urls = [f"http://{n}:{s.port}/img/{1 + j % 3}-red-circle-plain-white-{j}@{96 + (j * 16) % 128}.jpg"
            for n, s in zip(names, servers) for j in range(a.per_host)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-polite-"))
    results: dict[bool, list[dict]] = {True: [], False: []}
    try:
        cluster.ensure_ray(num_cpus=a.parallel)
        one(tmp / "build", urls[:a.shard_size * a.parallel], resolve, a, True)  # warm Ray's workers
        for r in range(a.rounds):
            for polite in ((True, False) if r % 2 == 0 else (False, True)):
                got = one(tmp / "build", urls, resolve, a, polite)
                assert got["success"] == len(urls), got
                results[polite].append(got)
                held = (f"; {got['waited']:,} requests waited for a slot or connection, "
                        f"{got['wait_s']:.1f} s in all" if polite else "")
                print(f"round {r + 1} {'on ' if polite else 'off'}: {got['img_s']:.1f} img/s "
                      f"({got['wall']:.1f} s{held})", flush=True)
    finally:
        cluster.shutdown()
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    on = statistics.median(x["img_s"] for x in results[True])
    off = statistics.median(x["img_s"] for x in results[False])
    print(f"{len(urls):,} URLs over {a.hosts} hosts, {a.parallel} shards of {a.shard_size} in flight, "
          f"{a.threads} threads")
    print(f"median images/s: politeness on {on:.1f}, off {off:.1f}; ratio on/off {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
