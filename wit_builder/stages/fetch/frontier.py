"""The order a shard's download threads take its URLs in, when its hosts are limited.

img2dataset's `Downloader` hands its threads the shard's rows in their order, and a
thread whose URL's host has no free slot yet sleeps until it has one (hosts.HostLimits:
a host's slots of this shard are `stride / rps` seconds apart). With the limits
reached that sleep is the politeness; with hosts that are idle it is waste: a thread
waits up to a whole slot period while other hosts of the shard could start now.

`Frontier` keeps the shard's URLs in one queue per host (in the plan's order) and
the hosts in two heaps: those that can start a request now, by their next URL's
place in the plan, and those that cannot yet, by when they can (`HostLimits.ready`:
its next slot of this shard, after the requests already handed out, later while its
connections are all taken). A thread takes the next URL of the first host that can
start now (checked again as it is taken; a host found waiting moves to the second
heap), else that of the host that can start soonest, and claims that host's next
slot (`HostLimits.claim`), so the next thread is given another host. Each take costs
a few heap steps and `ready` calls, whatever the number of hosts. This is the frontier of a polite crawler (Heritrix's and
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

NOW = 0.002      # seconds: a host whose slot starts this soon counts as free now
HELD = 0.02      # seconds: when a held host is looked at again


class Frontier:
    """The shard's (index, url) rows, handed out by `take`: in their order, except that
    a row whose host cannot start yet is passed over for a later one whose host can;
    every row is handed out once."""

    def __init__(self, rows: list[tuple[int, str]], limits: HostLimits, held=None):
        """`held(host)`: True while the host's URLs must wait for something else (its
        robots.txt rules from the robots pass): such a host counts as not ready."""
        self.limits, self.held = limits, held
        self._queues: dict[str, deque] = {}
        for index, url in rows:
            self._queues.setdefault(host_of(url), deque()).append((index, url))
        # free: (first row not handed out, host) -- the plan's order (the first URL of
        # every host, then the second...) goes round the hosts; waiting: (when, host)
        self._free = [(q[0][0], host) for host, q in self._queues.items()]
        heapq.heapify(self._free)
        self._waiting: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[int, str]:
        """The next row to fetch (see the module doc); IndexError once all are handed
        out. The calling thread holds a claim on its host's next slot until it asks for
        it (HostLimits.acquire) or drops it (HostLimits.unclaim)."""
        with self._lock:
            now = time.time()
            soon = now + NOW
            while self._waiting and self._waiting[0][0] <= soon:  # due again
                host = heapq.heappop(self._waiting)[1]
                heapq.heappush(self._free, (self._queues[host][0][0], host))
            host = None
            for _ in range(len(self._free)):  # bounded: each turn moves a host to waiting
                _, candidate = heapq.heappop(self._free)
                ready = self.limits.ready(candidate, now)
                if self.held is not None and self.held(candidate):
                    ready = max(ready, now + HELD)
                if ready <= soon:
                    host = candidate
                    break
                heapq.heappush(self._waiting, (ready, candidate))
            if host is None:
                if not self._waiting:
                    raise IndexError("the frontier is empty: every row was handed out")
                host = heapq.heappop(self._waiting)[1]  # the soonest
            queue = self._queues[host]
            row = queue.popleft()
            self.limits.claim(host)
            if queue:  # back among the free: the next take checks when it can start
                heapq.heappush(self._free, (queue[0][0], host))
            else:
                del self._queues[host]
            return row
