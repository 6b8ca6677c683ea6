"""pool -> match -> balance at scale: 10 million synthetic captions, 500,000 queries.

Generates the inputs once under --out (Parquet files of url, caption; a finished
`queries` stage), then runs the three stages on a fresh build directory and reports
wall time per stage and peak memory. Memory is sampled every 0.2 s over this process
and all its descendants (the Ray GCS, raylet and workers, DuckDB runs in-process):
the peak of the summed RSS and of the summed PSS (shared pages, e.g. Ray's object
store, divided among the processes sharing them), plus the largest single process.

    .venv/bin/python benchmarks/bench_scale.py [--captions 10000000] [--queries 500000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_match  # noqa: E402  (the synthetic captions and query list)

FILE_ROWS = 1_000_000


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _usage(pid: int) -> tuple[int, int, float]:
    """(RSS, PSS) in bytes and CPU seconds so far of one process; zeros if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.endswith("kB\n")}
        with open(f"/proc/{pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()
        cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
        return fields.get("Rss", 0) * 1024, fields.get("Pss", 0) * 1024, cpu
    except (OSError, ValueError, IndexError):
        return 0, 0, 0.0


class MemorySampler(threading.Thread):
    """Peak summed RSS/PSS over this process tree per labelled phase, and CPU seconds
    used by the tree (last sample of each process, so exits cost < one interval)."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.phase, self.stop = every, "setup", threading.Event()
        self.peaks: dict[str, dict[str, int]] = {}
        self.cpu: dict[int, float] = {}

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            per = {p: _usage(p) for p in _descendants(me)}
            for p, (_, _, cpu) in per.items():
                self.cpu[p] = max(self.cpu.get(p, 0.0), cpu)
            rss, pss = sum(u[0] for u in per.values()), sum(u[1] for u in per.values())
            top = max((u[0] for u in per.values()), default=0)
            peak = self.peaks.setdefault(self.phase, {"rss": 0, "pss": 0, "largest_process": 0})
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            peak["largest_process"] = max(peak["largest_process"], top)
            time.sleep(self.every)


def make_inputs(out: Path, n_captions: int, n_queries: int) -> tuple[list[Path], list[str]]:
    """Parquet pool files of FILE_ROWS rows and the query list (cached under out)."""
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    vocab = bench_match.vocabulary()
    files = []
    for i in range(0, n_captions, FILE_ROWS):
        n = min(FILE_ROWS, n_captions - i)
        path = inputs / f"pool-{i // FILE_ROWS:03d}-{n}-head20x40.parquet"   # (generator version)
        if not path.exists():
            ids = pa.array(np.arange(i, i + n)).cast(pa.string())
            urls = pc.binary_join_element_wise("http://img.example/", ids, ".jpg", "")
            pq.write_table(pa.table({"url": urls, "caption": bench_match.captions(
                n, seed=1000 + i // FILE_ROWS, vocab=vocab)}), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
        files.append(path)
    queries = bench_match.queries(n_queries, vocab=vocab).to_pylist()
    return files, queries


def write_queries(build: Path, queries: list[str]) -> None:
    """A finished queries stage (the contract's columns) holding `queries`."""
    from wit_builder.build.stage import StageOutput, run_stage

    def work(ctx):
        n = len(queries)
        pq.write_table(pa.table({
            "query_id": pa.array(np.arange(n, dtype=np.int32)),
            "query": pa.array(queries, pa.string()),
            "sources": pa.array([["wiki_unigram"]] * n, pa.list_(pa.string())),
            "wiki_count": pa.array(np.full(n, 100, np.int64)),
            "pmi": pa.array(np.zeros(n)), "pageviews": pa.array(np.zeros(n, np.int64)),
        }), ctx.output("queries") / "queries.parquet")
        return StageOutput(rows=n)
    run_stage(build, "queries", {"bench": len(queries)}, work, outputs=["queries"],
              views={"queries": "queries/*.parquet"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--per-query", type=int, default=20_000)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "scale"))
    ap.add_argument("--reuse-build", action="store_true",
                    help="keep the build directory: finished stages with the same settings "
                         "are skipped (e.g. to rerun only balance with another --per-query)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The machine is shared: other people's processes must not make Ray's memory
    # monitor kill ours. What this run itself uses is measured below.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    from wit_builder.build.cluster import ensure_ray, shutdown
    from wit_builder.stages.balance import balance
    from wit_builder.stages.match import match
    from wit_builder.stages.pool import pool

    out = Path(args.out)
    sampler = MemorySampler()
    sampler.start()
    t0 = time.time()
    files, queries = make_inputs(out, args.captions, args.queries)
    print(f"inputs: {len(files)} Parquet files, {args.captions:,} captions, "
          f"{len(queries):,} queries ({time.time() - t0:.0f} s, cached for reruns)", flush=True)
    build = out / "build"
    if not args.reuse_build:
        shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True, exist_ok=True)
    write_queries(build, queries)
    ensure_ray()
    report: dict = {"captions": args.captions, "queries": len(queries), "cpus": os.cpu_count(),
                    "stages": {}}
    start = time.time()
    steps = [("pool", lambda: pool.run(pool.Config(pool=[str(f) for f in files],
                                                   memory_limit=args.memory_limit), build)),
             ("match", lambda: match.run(match.Config(), build)),
             ("balance", lambda: balance.run(balance.Config(per_query=args.per_query,
                                                            memory_limit=args.memory_limit), build))]
    for name, step in steps:
        sampler.phase = name
        t, cpu = time.time(), sampler.cpu_seconds()
        res = step()
        time.sleep(2 * sampler.every)
        cpu = sampler.cpu_seconds() - cpu
        report["stages"][name] = {"seconds": round(time.time() - t, 1), "rows": res.rows,
                                  "cpu_seconds": round(cpu, 1), "summary": res.summary}
        print(f"[{name}] {res.rows:,} rows in {time.time() - t:.0f} s wall, {cpu:.0f} CPU-s "
              f"over the process tree{' (already done: skipped)' if res.skipped else ''}",
              flush=True)
        for k, v in res.summary.items():
            if len(str(v)) < 200:
                print(f"    {k}: {v}", flush=True)
    report["wall_seconds"] = round(time.time() - start, 1)
    report["cpu_seconds"] = round(sum(st["cpu_seconds"] for st in report["stages"].values()), 1)
    time.sleep(0.5)
    sampler.stop.set()
    sampler.join()
    shutdown()
    gb = 1 << 30
    report["peak_memory_gb"] = {phase: {k: round(v / gb, 2) for k, v in p.items()}
                                for phase, p in sampler.peaks.items()}
    overall = {k: max(p[k] for p in sampler.peaks.values()) / gb for k in ("rss", "pss")}
    print(f"pool -> match -> balance: {report['wall_seconds']:.0f} s wall, "
          f"{report['cpu_seconds']:.0f} CPU-s, for "
          f"{args.captions:,} captions x {len(queries):,} queries on {os.cpu_count()} CPUs")
    for phase, p in report["peak_memory_gb"].items():
        print(f"    peak memory during {phase:8s}: {p['pss']:.2f} GB PSS, {p['rss']:.2f} GB RSS "
              f"summed over the process tree; largest process {p['largest_process']:.2f} GB")
    print(f"peak memory overall: {overall['pss']:.2f} GB PSS / {overall['rss']:.2f} GB RSS "
          f"({'under' if overall['rss'] < 8 else 'OVER'} 8 GB)")
    (out / f"scale-per-query-{args.per_query}.json").write_text(
        json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
