"""The frontier (frontier.Frontier) vs the plan's order, with per-host limits that bind.

One shard's threads fetch its URLs through real hosts.HostLimits (the slots and
connection gates a download shard uses), in two orders, same run: "plan" hands each
thread the next row in the plan's order (what img2dataset's Downloader does); "frontier"
hands it the row whose host can start soonest. A fetch is a sleep of 0.1-0.3 s (seeded,
the same for both), so what is measured is the scheduling only, not the network. Both
must keep every host's requests at least its slot period apart; the run checks it.

    .venv/bin/python benchmarks/bench_frontier.py [--hosts 200] [--per-host 3] [--rps 2]
        [--stride 2] [--threads 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wit_builder.stages.fetch.budgets import HostBudget, grid_offset  # noqa: E402
from wit_builder.stages.fetch.frontier import Frontier  # noqa: E402
from wit_builder.stages.fetch.hosts import HostLimits, host_of  # noqa: E402


def one(a, frontier: bool) -> tuple[float, dict[str, list[float]]]:
    hosts = [f"h{i}.test" for i in range(a.hosts)]
    # the plan's order goes round the hosts: every host's first URL, then the second...
    urls = [f"http://{h}/{j}.jpg" for j in range(a.per_host) for h in hosts]
    rng = random.Random(0)
    cost = {u: rng.uniform(0.1, 0.3) for u in urls}
    budgets = {h: HostBudget(1.0 / a.rps, a.stride, i % a.stride, max(1, a.connections // a.stride),
                             grid_offset(h)) for i, h in enumerate(hosts)}
    limits = HostLimits(budgets)
    order = Frontier(list(enumerate(urls)), limits) if frontier else None
    starts: dict[str, list[float]] = {h: [] for h in hosts}
    lock = threading.Lock()

    def fetch(row: tuple[int, str]) -> None:
        if order is not None:
            row = order.take()
        url = row[1]
        try:
            with limits.acquire(host_of(url)):
                with lock:
                    starts[host_of(url)].append(time.time())
                time.sleep(cost[url])
        finally:
            if order is not None:
                limits.unclaim()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        list(pool.map(fetch, enumerate(urls)))
    return time.perf_counter() - t0, starts


def check(starts: dict[str, list[float]], gap: float) -> float:
    """The smallest gap between two requests to one host; fails if under the period."""
    low = min((b - a for ts in starts.values() for a, b in zip(sorted(ts), sorted(ts)[1:])),
              default=gap)
    assert low >= gap - 0.01, f"two requests to one host {low:.3f} s apart, period {gap:.3f} s"
    return low


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=200)
    p.add_argument("--per-host", type=int, default=3, help="URLs per host")
    p.add_argument("--rps", type=float, default=2.0, help="--per-host-rps")
    p.add_argument("--stride", type=int, default=2, help="shards sharing each host")
    p.add_argument("--connections", type=int, default=4, help="--per-host-connections")
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    gap = a.stride / a.rps
    print(f"{a.hosts} hosts x {a.per_host} URLs, rps {a.rps:g} shared by {a.stride} shards "
          f"(one request per host every {gap:g} s here), {a.threads} threads, fetches 0.1-0.3 s")
    walls: dict[bool, list[float]] = {False: [], True: []}
    for r in range(a.rounds):
        for frontier in (False, True):
            wall, starts = one(a, frontier)
            low = check(starts, gap)
            walls[frontier].append(wall)
            print(f"round {r + 1} {'frontier' if frontier else 'plan    '}: {wall:.2f} s "
                  f"(closest two requests to a host: {low:.3f} s)", flush=True)
    plan, front = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"median: plan order {plan:.2f} s, frontier {front:.2f} s; speed-up {plan / front:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
