"""A host's budget in one download shard: its slots (`HostBudget`) from the plan's
columns (polite.deal: the shards holding the host and this shard's class among
them) and --per-host-rps, --per-host-connections or a robots.txt Crawl-delay.
hosts.HostLimits spends them; docs/fetch.md, "Politeness at scale", explains the
design."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass


@dataclass
class HostBudget:
    """This shard's share of one host: the host's request slots are `interval` seconds
    apart cluster-wide, slot j at (j + offset) x interval, and this shard may use those
    numbered `phase` mod `stride`, through at most `connections` connections; or, for a
    host this shard alone holds (`alone`), any instant at least `interval` after its
    last request."""
    interval: float
    stride: int = 1
    phase: int = 0
    connections: int = 1
    offset: float = 0.0   # in [0, 1): the host's own (grid_offset), so hosts' slots interleave
    alone: bool = False   # no other shard holds the host: its slots need no grid

    def first_slot(self, t: float, at_least: float = 0) -> float:
        """The first slot of this shard's class at or after wall-clock `t` (and `at_least`).
        A host no other shard holds has no grid to keep to: its next slot is `t` itself
        once `interval` has passed since the last (a fractional slot number), so a
        request to an idle host starts at once."""
        if self.alone:
            return max(at_least, t / self.interval - self.offset)
        k = max(math.ceil(at_least), math.ceil(t / self.interval - self.offset))
        return k + (self.phase - k) % self.stride

    def start(self, k: int) -> float:
        return (k + self.offset) * self.interval


def grid_offset(host: str) -> float:
    """Where in its interval `host`'s slot grid starts, the same on every machine (a
    hash of the name): with one grid for all hosts, every slot of a shard would open at
    the same instants and a free thread would wait for the next of them whatever host
    it took."""
    return zlib.crc32(host.encode()) / 2 ** 32


def shard_budgets(rows, rps: float, connections: int,
                  delays: dict[str, float] | None = None) -> dict[str, HostBudget]:
    """Each host's budget in one shard (budget_for) from the plan's columns host,
    host_shards and host_slot; with rps 0 only hosts with a Crawl-delay (`delays`)
    are limited."""
    out: dict[str, HostBudget] = {}
    delays = delays or {}
    for host, shards, slot in zip(rows["host"].to_pylist(), rows["host_shards"].to_pylist(),
                                  rows["host_slot"].to_pylist()):
        if host not in out:
            b = budget_for(host, shards, slot, rps, connections, delays.get(host, 0.0))
            if b is not None:
                out[host] = b
    return out


def budget_for(host: str, shards: int, slot: int, rps: float, connections: int,
               delay: float = 0.0) -> HostBudget | None:
    """`host`'s budget in a shard, from the plan: the shards holding the host (m =
    min(that, connections) of them at once at most) and this shard's class among them
    (`slot`, 0..m-1). The host's slots are 1/rps apart, or its robots.txt Crawl-delay
    if longer; None: not limited (rps 0 and no Crawl-delay)."""
    interval = max(1.0 / rps if rps > 0 else 0.0, delay)
    if interval <= 0:
        return None
    stride = max(1, min(shards, connections))
    # a host in one shard only is paced there alone; one in several keeps to the grid
    # (its classes interleave, and shards of one class that run one after the other
    # carry on where the last stopped)
    return HostBudget(interval, stride, slot % stride, max(1, connections // stride),
                      grid_offset(host), alone=shards == 1)
