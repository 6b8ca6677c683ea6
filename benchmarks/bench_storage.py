"""The demo world's pool -> publish with the build on local disk and in S3, same run.

Both sides run the same six commands a user runs (`wit-build pool`, `match`, `balance`,
`fetch`, `curate`, `publish`), start-up included, on a generated world whose images a
loopback image server serves (a fresh server per side on one port, so both meet the
same web). The S3 side keeps its build and its pool file in moto's S3 server on
127.0.0.1. Each command is timed for wall and CPU (the command and every descendant:
Ray's workers are reaped here and counted); the image and S3 servers are processes of
their own and not counted, but the S3 server's CPU is shown beside. Requests to S3 are
counted from the server's request log, by method, per stage; bytes are what each
stage left in the bucket.

    .venv/bin/python benchmarks/bench_storage.py [--size demo] [--rounds 1]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the tests' helpers: tests.support
import bench_fetch  # noqa: E402  (measured: wall and CPU of a command and its descendants)

from tests.support.s3 import S3Server  # noqa: E402
from wit_builder import storage  # noqa: E402
from wit_builder.demo import imageserver
from wit_builder.demo.world import make_world, write_pool  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = ["pool", "match", "balance", "fetch", "curate", "publish"]


def commands(pool: str, out: str) -> dict[str, list[str]]:
    """Each stage's command, with pipelines/demo.toml's settings."""
    stages = {
        "pool": ["pool", "--pool", pool],
        "match": ["match", "--case-sensitive"],
        "balance": ["balance", "--per-query", "150", "--seed", "0", "--mode", "cap"],
        "fetch": ["fetch", "--image-size", "64", "--resize-mode", "border", "--encode-quality",
                  "90", "--timeout", "2", "--retries", "0", "--threads", "16",
                  "--fetch-shard-size", "500", "--allow-private-network", "--per-host-rps", "0",
                  "--host-give-up-after", "0"],
        "curate": ["curate", "--min-side", "32", "--max-aspect", "3", "--min-caption-words", "3",
                   "--near-dup-bits", "10"],
        "publish": ["publish", "--shard-size", "500", "--seed", "0"],
    }
    return {k: v + ["--out", out] for k, v in stages.items()}


def queries_command(world, out: str) -> list[str]:
    return ["queries", "--wiki", str(world.wiki_dump), "--wordnet", str(world.wordnet_dir),
            "--pageviews", str(world.pageviews), "--min-freq", str(world.min_freq),
            "--min-views", str(world.pageview_min), "--out", out]


def requests(log: Path, start: int) -> tuple[Counter, int]:
    """Requests by method in the S3 server's log from byte `start` on; and the log's end."""
    text = log.read_bytes()[start:].decode("utf-8", "replace")
    methods = Counter(re.findall(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) /', text))
    return methods, start + len(text.encode())


def bucket_bytes(url: str) -> dict[str, int]:
    """Bytes under each top-level folder of a build."""
    loc = storage.location(url)
    out: Counter = Counter()
    for path, info in loc.fs.find(loc.path, detail=True).items():
        top = path[len(loc.path) + 1:].split("/", 1)[0]
        out[top] += int(info.get("size") or 0)
    return dict(out)


def run_side(side: str, pool: str, out: str, env: dict, servers: set[int],
             s3: S3Server | None, log: Path | None) -> dict:
    stats = {}
    for stage, argv in commands(pool, out).items():
        pos = log.stat().st_size if log else 0
        s3_cpu = _cpu(s3.proc.pid) if s3 else 0.0
        wall, cpu = bench_fetch.measured([str(BIN / "wit-build"), *argv], env, servers)
        stats[stage] = {"wall": wall, "cpu": cpu}
        if s3:
            stats[stage]["s3_cpu"] = _cpu(s3.proc.pid) - s3_cpu
            stats[stage]["requests"] = requests(log, pos)[0]
        print(f"  {side:5s} {stage:8s} wall {wall:6.1f} s  CPU {cpu:6.1f} s"
              + (f"  (S3 server CPU {stats[stage]['s3_cpu']:.1f} s, requests "
                 f"{dict(stats[stage]['requests'])})" if s3 else ""), flush=True)
    return stats


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="demo", choices=["test", "small", "demo"])
    p.add_argument("--rounds", type=int, default=1, help="rounds (alternating sides); medians shown")
    p.add_argument("--keep", help="keep the world and builds in this folder")
    a = p.parse_args()
    ctypes.CDLL(None).prctl(bench_fetch.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="bench-storage-"))
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "s3.log"
    s3 = S3Server(log=log)
    env = {**os.environ, **s3.env, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
           "RAY_AUTH_MODE": "disabled", "XDG_CACHE_HOME": str(tmp / "cache")}
    env.pop("RAY_ADDRESS", None)
    os.environ.update({k: v for k, v in s3.env.items()})
    try:
        with imageserver.ServerProcess() as srv:
            port = srv.port
            world = make_world(tmp / "world", size=a.size, seed=0, base_url=srv.base_url)
        write_pool(world, f"http://127.0.0.1:{port}")
        bucket = s3.bucket("bench")
        storage.location(bucket).fs.put_file(str(world.pool_parquet), "bench/inputs/pool.parquet")
        print(f"world {a.size}: {world.root}")
        runs: dict[str, list[dict]] = {"local": [], "s3": []}
        for r in range(a.rounds):
            for side in (["local", "s3"] if r % 2 == 0 else ["s3", "local"]):
                out = str(tmp / "local-build") if side == "local" else f"{bucket}/build-{r}"
                if side == "local":
                    shutil.rmtree(out, ignore_errors=True)
                pool = str(world.pool_parquet) if side == "local" else f"{bucket}/inputs/pool.parquet"
                subprocess.run([str(BIN / "wit-build"), *queries_command(world, out)], env=env,
                               check=True, capture_output=True)  # not timed: the same on both sides
                with imageserver.ServerProcess(port=port) as srv:
                    runs[side].append(run_side(side, pool, out, env, {srv.proc.pid, s3.proc.pid},
                                               s3 if side == "s3" else None, log if side == "s3" else None))
                if side == "s3":
                    runs[side][-1]["bytes"] = bucket_bytes(out)
    finally:
        s3.stop()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\npool -> publish, {a.size} world, median of {a.rounds} round(s)")
    print(f"{'stage':8s} {'local wall':>10s} {'S3 wall':>8s} {'ratio':>6s} {'local CPU':>10s} "
          f"{'S3 CPU':>7s} {'ratio':>6s} {'S3 server CPU':>14s}  S3 requests")
    totals = {k: 0.0 for k in ("lw", "sw", "lc", "sc", "srv")}
    for stage in STAGES:
        lw = statistics.median(r[stage]["wall"] for r in runs["local"])
        sw = statistics.median(r[stage]["wall"] for r in runs["s3"])
        lc = statistics.median(r[stage]["cpu"] for r in runs["local"])
        sc = statistics.median(r[stage]["cpu"] for r in runs["s3"])
        srv = statistics.median(r[stage]["s3_cpu"] for r in runs["s3"])
        req = runs["s3"][0][stage]["requests"]
        for k, v in zip(totals, (lw, sw, lc, sc, srv)):
            totals[k] += v
        print(f"{stage:8s} {lw:10.1f} {sw:8.1f} {sw / lw:6.2f} {lc:10.1f} {sc:7.1f} {sc / lc:6.2f} "
              f"{srv:14.1f}  {', '.join(f'{m} {n}' for m, n in sorted(req.items()))}")
    t = totals
    print(f"{'total':8s} {t['lw']:10.1f} {t['sw']:8.1f} {t['sw'] / t['lw']:6.2f} {t['lc']:10.1f} "
          f"{t['sc']:7.1f} {t['sc'] / t['lc']:6.2f} {t['srv']:14.1f}")
    print("bytes in the bucket by folder: " + ", ".join(
        f"{k} {v / 1e6:.2f} MB" for k, v in sorted(runs["s3"][0]["bytes"].items())))
    print(f"ratio S3/local: wall {t['sw'] / t['lw']:.2f}, CPU {t['sc'] / t['lc']:.2f} "
          f"(target <= 1.3; the S3 server's own CPU is not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
