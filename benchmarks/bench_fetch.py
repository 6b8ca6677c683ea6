"""Fetch vs the `img2dataset` command: images/s and CPU seconds per image, same run.

Both download the same URL list from one loopback image server (its own process, not
counted) with the same resize settings, threads per shard, samples per shard and
parallelism (img2dataset's multiprocessing distributor with N processes; wit's Ray
with N shards in flight on an N-CPU local Ray). Each side is timed as the command a
user runs, start-up included. CPU is everything the command and its descendants used:
this process becomes their subreaper, so Ray's and img2dataset's helpers that outlive
their parents are reaped here and counted.

    .venv/bin/python benchmarks/bench_fetch.py [--images 4000] [--rounds 2]
    .venv/bin/python benchmarks/bench_fetch.py --images 2000 --sizes 512,640,768,896,1024 --image-size 256

The first serves small images (96-224 px, stored at 64): the per-request overhead
dominates. The second serves web-size originals stored at fetch's default 256 px:
decoding and resizing dominate, which wit halves by decoding JPEGs at reduced scale.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wit_builder.build.stage import StageOutput, committed, run_stage
from wit_builder.demo import drawing, imageserver
from wit_builder.io import uid_of

PR_SET_CHILD_SUBREAPER = 36
BIN = Path(sys.executable).parent


def url_list(base: str, n: int, sizes: list[int]) -> list[str]:
    scenes = [f"{k}-{c}-{t}-{tex}-{bg}-{seed}"
              for seed in range(10_000) for k, c, t, tex, bg in [(
                  1 + seed % 3, list(drawing.COLORS)[seed % 10], "circle star square heart".split()[seed % 4],
                  drawing.TEXTURES[seed % 4], list(drawing.BACKGROUNDS)[seed % 7])]]
    return [f"{base}/img/{scenes[i]}@{sizes[i % len(sizes)]}.jpg" for i in range(n)]


def warm(urls: list[str]) -> None:
    """Ask for every URL once so the server's render cache is hot for both sides."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def get(u):
        with urllib.request.urlopen(u, timeout=30) as r:
            return len(r.read())
    with ThreadPoolExecutor(16) as ex:
        total = sum(ex.map(get, urls))
    print(f"warmed {len(urls):,} URLs ({total / 1e6:.1f} MB)")


def measured(cmd: list[str], env: dict, server_pid) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and every descendant); `server_pid` (one
    pid or a set) are servers of the benchmark's own, not counted."""
    servers = {server_pid} if isinstance(server_pid, int) else set(server_pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampled: dict[int, float] = {}
    while proc.poll() is None:  # a cross-check: CPU per descendant as last seen in /proc
        sampled.update(_tree_cpu(servers))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed with exit status {proc.returncode}")
    deadline = time.monotonic() + 180
    while True:  # reap orphaned helpers (Ray workers, raylet...) so their CPU is counted
        left = [p for p in _children() if p not in servers]
        if not left:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"helpers of {cmd[0]} still running after 3 minutes: {left}")
        for pid in left:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"    {Path(cmd[0]).name}: CPU {cpu:.1f} s reaped, >= {sum(sampled.values()):.1f} s "
          f"seen in /proc over {len(sampled)} processes", flush=True)
    return wall, max(cpu, sum(sampled.values()))


def _procs() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) for every process."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (parent, _) in _procs().items() if parent == me]


def _tree_cpu(skip: set[int]) -> dict[int, float]:
    """CPU seconds of each descendant of this process (but those in `skip`, the servers)."""
    procs, tree, frontier = _procs(), {}, {os.getpid()}
    while frontier:
        frontier = {p for p, (parent, _) in procs.items() if parent in frontier and p not in skip}
        tree.update({p: procs[p][1] for p in frontier})
    return tree


def shard_span(folder: Path) -> tuple[int, float]:
    """(successes, seconds from the first shard's start to the last shard's end) from the
    `NNNNN_stats.json` files img2dataset's downloader writes on both sides."""
    stats = [json.loads(p.read_text()) for p in folder.glob("*_stats.json")]
    return (sum(s["successes"] for s in stats),
            max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats))


def run_img2dataset(urls_file: Path, out: Path, a, env, server_pid) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "img2dataset"), "--url_list", str(urls_file), "--input_format", "parquet",
           "--url_col", "url", "--caption_col", "text", "--output_format", "webdataset",
           "--output_folder", str(out), "--processes_count", str(a.parallel),
           "--thread_count", str(a.threads), "--number_sample_per_shard", str(a.shard_size),
           "--image_size", str(a.image_size), "--resize_mode", "border", "--encode_format", "jpg",
           "--encode_quality", "95", "--timeout", "10", "--retries", "0", "--extract_exif", "False",
           "--compute_hash", "sha256", "--distributor", "multiprocessing", "--enable_wandb", "False"]
    wall, cpu = measured(cmd, env, server_pid)
    ok, span = shard_span(out)
    return {"wall": wall, "cpu": cpu, "success": ok, "span": span}


def run_wit(build: Path, table: pa.Table, a, env, server_pid) -> dict:
    shutil.rmtree(build, ignore_errors=True)

    def work(ctx):
        pq.write_table(table, ctx.output("selected") / "part-0.parquet")
        return StageOutput(rows=table.num_rows)
    run_stage(build, "balance", {"bench": table.num_rows}, work, outputs=["selected"],
              views={"selected": "selected/*.parquet"})
    cmd = [str(BIN / "wit-build"), "fetch", "--out", str(build), "--allow-private-network",
           "--shards-in-flight", str(a.parallel), "--threads", str(a.threads),
           "--fetch-shard-size", str(a.shard_size), "--image-size", str(a.image_size),
           "--resize-mode", "border", "--encode-format", "jpg", "--encode-quality", "95",
           "--timeout", "10", "--retries", "0",
           # one loopback host and img2dataset has no per-host limits: compare downloaders
           # (robots.txt, the DNS cache and the plan stay on; bench_polite.py prices the limits)
           "--per-host-rps", "0", *a.wit_flags.split()]
    wall, cpu = measured(cmd, {**env, "RAY_ADDRESS": ""}, server_pid)
    fetched = committed(build, "fetch")
    ok, span = shard_span(fetched / "shards")
    statuses = pq.read_table(fetched / "status", columns=["status"])["status"].to_pylist()
    assert statuses.count("success") == ok, "status rows and shard stats disagree"
    return {"wall": wall, "cpu": cpu, "success": ok, "span": span}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=2, help="runs per side (alternating); medians shown")
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--parallel", type=int, default=2, help="img2dataset processes = wit shards in flight")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--sizes", default="96,128,160,192,224",
                   help="pixel sizes of the served JPEGs, in turn (web-size: 512,640,768,896,1024)")
    p.add_argument("--wit-flags", default="",
                   help="more flags for wit-build fetch, e.g. '--no-reduced-decode'")
    a = p.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled",
           "RAY_AUTH_MODE": "disabled"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        with imageserver.ServerProcess() as srv:
            urls = url_list(srv.base_url, a.images, [int(x) for x in a.sizes.split(",")])
            texts = [f"a picture {i}" for i in range(len(urls))]
            table = pa.table({"uid": [uid_of(u, t) for u, t in zip(urls, texts)], "url": urls,
                              "text": texts, "query_ids": pa.array([[0]] * len(urls), pa.list_(pa.int32())),
                              "selected_by": pa.array([0] * len(urls), pa.int32())})
            pq.write_table(table.select(["url", "text"]), tmp / "urls.parquet")
            warm(urls)
            runs: dict[str, list[dict]] = {"img2dataset": [], "wit": []}
            for r in range(a.rounds):
                order = ["img2dataset", "wit"] if r % 2 == 0 else ["wit", "img2dataset"]
                for side in order:
                    res = (run_img2dataset(tmp / "urls.parquet", tmp / "i2d-out", a, env, srv.proc.pid)
                           if side == "img2dataset" else run_wit(tmp / "build", table, a, env, srv.proc.pid))
                    runs[side].append(res)
                    print(f"round {r + 1} {side:12s} {res['success']:,} images in {res['wall']:.1f} s "
                          f"= {res['success'] / res['wall']:.1f} img/s (shards running: "
                          f"{res['span']:.1f} s = {res['success'] / res['span']:.1f} img/s), "
                          f"CPU {res['cpu']:.1f} s = {1000 * res['cpu'] / max(1, res['success']):.2f} ms/img",
                          flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {side: {"ips": statistics.median(x["success"] / x["wall"] for x in rs),
                  "span_ips": statistics.median(x["success"] / x["span"] for x in rs),
                  "cpi": statistics.median(x["cpu"] / max(1, x["success"]) for x in rs)}
           for side, rs in runs.items()}
    print(f"\n{a.images:,} URLs, {a.threads} threads, {a.shard_size} per shard, {a.parallel} in parallel, "
          f"served {a.sizes} px, stored {a.image_size}px border jpg q95")
    print(f"{'':12s} {'images/s':>9s} {'(shards running)':>17s} {'CPU ms/image':>13s}")
    for side, m in med.items():
        print(f"{side:12s} {m['ips']:9.1f} {m['span_ips']:17.1f} {1000 * m['cpi']:13.2f}")
    w, i = med["wit"], med["img2dataset"]
    print(f"ratio wit/img2dataset: images/s {w['ips'] / i['ips']:.2f} end to end, "
          f"{w['span_ips'] / i['span_ips']:.2f} while shards run (target >= 1.0); "
          f"CPU per image {w['cpi'] / i['cpi']:.2f} (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
