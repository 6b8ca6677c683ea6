"""The order a shard's download threads take its URLs in, when its hosts are limited.

img2dataset's `Downloader` hands its threads the shard's rows in their order, and a
thread whose URL's host has no free slot yet sleeps until it has one (hosts.HostLimits:
a host's slots of this shard are `stride / rps` seconds apart). With the limits
reached that sleep is the politeness; with hosts that are idle it is waste: a thread
waits up to a whole slot period while other hosts of the shard could start now.

`Frontier` keeps the shard's URLs in one queue per host (in the plan's order) and a
heap of the hosts by when each could start a request (`HostLimits.ready`: its next
slot of this shard, after the requests already handed out, later while its
connections are all taken). A thread takes the URL of the host that can start
soonest and claims that host's next slot (`HostLimits.claim`), so the next thread is
given another host. This is the frontier of a polite crawler (Heritrix's and
Nutch's per-host queues, ordered by when each host may be asked next); like theirs
it only orders the work: the slots and connection limits are HostLimits.acquire's,
unchanged, whatever order the URLs come in.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import deque

from wit_builder.stages.fetch.hosts import HostLimits, host_of

PROBES = 32      # hosts looked at per take at most
NOW = 0.002      # seconds: a host whose slot starts this soon counts as free now


class Frontier:
    """The shard's (index, url) rows, handed out by `take`: in their order, except that
    a row whose host cannot start yet is passed over for a later one whose host can;
    every row is handed out once."""

    def __init__(self, rows: list[tuple[int, str]], limits: HostLimits):
        self.limits = limits
        self._queues: dict[str, deque] = {}
        for index, url in rows:
            self._queues.setdefault(host_of(url), deque()).append((index, url))
        # the hosts by their first row not handed out: the plan's order (the first
        # URL of every host, then the second...) goes round the hosts
        self._heap = [(q[0][0], host) for host, q in self._queues.items()]
        heapq.heapify(self._heap)
        self._lock = threading.Lock()

    def take(self) -> tuple[int, str]:
        """The next row to fetch: the first whose host is free within NOW among the
        first PROBES hosts in order, else the one of those that is free soonest. The
        calling thread holds a claim on its host's next slot until it asks for it
        (HostLimits.acquire) or drops it (HostLimits.unclaim)."""
        with self._lock:
            now = time.time()
            looked: list[tuple[float, tuple[int, str]]] = []
            for _ in range(PROBES):
                if not self._heap:
                    break
                entry = heapq.heappop(self._heap)
                ready = self.limits.ready(entry[1])
                looked.append((ready, entry))
                if ready <= now + NOW:
                    break
            if not looked:
                raise IndexError("the frontier is empty: every row was handed out")
            best = min(range(len(looked)), key=lambda i: looked[i][0])
            for i, (_, entry) in enumerate(looked):
                if i != best:
                    heapq.heappush(self._heap, entry)
            host = looked[best][1][1]
            queue = self._queues[host]
            row = queue.popleft()
            self.limits.claim(host)
            if queue:
                heapq.heappush(self._heap, (queue[0][0], host))
            else:
                del self._queues[host]
            return row
