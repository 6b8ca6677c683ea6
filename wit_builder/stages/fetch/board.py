"""One notice board per fetch run for the hosts that asked to be slowed down, so
that every shard holding a host slows down when one of them is told to.

A host's URLs sit in few shards (polite.deal), each with a share of the host's budget
(hosts.HostLimits). The limits hold across shards by construction; a slow-down does
not: a 429 or 503 (and its Retry-After) reaches only the shard that got it, and a
host given up on in one shard would be asked again by the others. So each shard
posts what changed for a host — a longer back-off, a pause until a time, a give-up —
to the run's `Board`, a Ray actor, and reads what the other shards posted: every
`INTERVAL` seconds, one call each way (`BoardClient`). A shard adopts the strictest
of its own and the posted state (hosts.HostLimits.adopt); its own answers then
let it recover, one step per answer, as before. A posted back-off halves every
HALF_LIFE seconds on the board, so a shard that starts an hour later does not begin a
host at the pace of a 429 long past; a give-up holds for the whole run.

Only changes travel, and only for hosts that were slowed. The board is a named,
detached actor that the first shard with something to post creates
(`get_if_exists`): a crawl no host slows down starts no process for it (a process
start is a second of CPU that a 2-core machine feels), and the other shards look it
up by name (half a millisecond, no process). The board keeps the latest state per
host in the order it changed, so a read costs what changed since the reader's last
one.

The board also hands out slots and connections for the hosts no shard was planned
with, which shards meet only through redirects (a CDN many sites redirect to): a
shard cannot have a share of those, so every hop there leases a slot and a
connection from the board (`Board.lease`), and the host sees --per-host-rps and
--per-host-connections for the whole cluster. A lease ends with its request, or at
the attempt's deadline if a shard dies holding it.

The driver kills the board when the download ends (`close`); one whose driver died
exits after IDLE seconds without a call. Should the actor fail, shards go on with
their own back-off.
"""
from __future__ import annotations

import os
import threading
import time

INTERVAL = 0.25           # seconds between a shard's exchanges with the board
CALL_TIMEOUT = 10.0       # seconds one exchange may take before the shard stops sharing
IDLE = 900.0              # seconds without a call after which a board exits by itself
HALF_LIFE = 30.0          # seconds: a posted back-off halves this often until posted again


def decayed(backoff: int, posted: float, now: float) -> int:
    """A back-off posted at `posted` as it stands at `now`: the shards that posted it
    have been winning it back by their own answers since, and a shard that starts
    later must not begin a long-quiet host at its worst pace."""
    return max(1, backoff >> min(16, int(max(0.0, now - posted) // HALF_LIFE)))


class Board:
    """The Ray actor (see the module doc): host -> (seq, back-off, posted at, paused
    until, given-up reason; times by the board's wall clock), newest change last."""

    def __init__(self, idle: float = IDLE):
        self.seq = 0
        self.hosts: dict[str, tuple[int, int, float, float, str | None]] = {}
        self.next_free: dict[str, float] = {}           # leased hosts: their next slot
        self.leases: dict[str, dict[int, float]] = {}   # leased hosts: open leases' ends
        self.lease_id = 0
        self.last_call = time.monotonic()
        threading.Thread(target=self._expire, args=(idle,), daemon=True).start()

    def _expire(self, idle: float) -> None:
        while True:  # ends with the process: by the driver's kill, or here when idle
            time.sleep(min(60.0, idle / 4))
            if time.monotonic() - self.last_call > idle:
                os._exit(0)

    def exchange(self, posts: list[tuple[str, int, float, str | None]], since: int) -> tuple[int, list]:
        """Merge `posts` (host, back-off, paused until, given up) and return (the
        board's sequence number, the hosts' states changed after `since`)."""
        self.last_call, now = time.monotonic(), time.time()
        for host, backoff, paused, given_up in posts:
            old = self.hosts.pop(host, None)
            if old is not None:
                backoff, paused = max(backoff, decayed(old[1], old[2], now)), max(paused, old[3])
                given_up = old[4] or given_up
            self.seq += 1
            self.hosts[host] = (self.seq, backoff, now, paused, given_up)  # moved to the end
        news = []
        for host, (seq, backoff, posted, paused, given_up) in reversed(self.hosts.items()):
            if seq <= since:
                break
            news.append((host, decayed(backoff, posted, now), paused, given_up))
        return self.seq, news


    def lease(self, host: str, interval: float, connections: int, until: float) -> tuple[float | None, int]:
        """A slot and a connection on `host` for the whole cluster, for a host no shard
        was planned with (a redirect target): (start time, lease id), or (None, 0)
        while `connections` leases are open. Slots are `interval` apart, times the
        host's posted back-off, and not before its pause; a lease ends by `release` or
        at `until` (the attempt's deadline), whichever comes first."""
        self.last_call, now = time.monotonic(), time.time()
        open_ = {k: end for k, end in self.leases.get(host, {}).items() if end > now}
        self.leases[host] = open_
        if len(open_) >= connections:
            return None, 0
        state = self.hosts.get(host)
        backoff, paused = (decayed(state[1], state[2], now), state[3]) if state else (1, 0.0)
        start = max(now, self.next_free.get(host, 0.0), paused)
        self.next_free[host] = start + interval * backoff
        self.lease_id += 1
        open_[self.lease_id] = until
        return start, self.lease_id

    def release(self, host: str, lease: int) -> None:
        self.leases.get(host, {}).pop(lease, None)

    def paused(self, host: str) -> float:
        """Until when `host` is paused (0: it is not): asked by a shard that waited for
        its leased slot, since a 429 may have come in meanwhile."""
        self.last_call = time.monotonic()
        state = self.hosts.get(host)
        return state[3] if state and state[3] > time.time() else 0.0


def name_for(run: str) -> str:
    """The board's actor name for one download (a fresh one per attempt)."""
    return f"wit-fetch-board-{run}"


def close(name: str) -> None:
    """Kill the board `name`, if a shard created it (the driver, when the download ends)."""
    import ray
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:  # no host was slowed: no board was made
        pass


class BoardClient:
    """A shard's side of the board named `name`: `post` queues a host's new state; a
    thread sends the queue and adopts the others' news into `limits` every INTERVAL
    seconds (creating the board with the first post); `close` sends what is left and
    stops it."""

    def __init__(self, name: str, limits, interval: float = INTERVAL):
        self.name, self.limits, self.interval = name, limits, interval
        self.board = None
        self.seq = 0
        self.posted = self.adopted = 0
        self.broken: str | None = None
        self._queue: list[tuple[str, int, float, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wit-host-board", daemon=True)
        self._thread.start()

    def post(self, host: str, backoff: int, paused_until: float, given_up: str | None,
             now: bool = False) -> None:
        """Queue a host's new state for the next exchange; `now`: send it at once (a
        host paced by the board's leases, whose next lease must see it)."""
        if now and self.board is not None and self.broken is None:
            try:
                self.board.exchange.remote([(host, backoff, paused_until, given_up)], 1 << 62)
                return
            except Exception:  # sent with the next exchange instead
                pass
        with self._lock:
            self._queue.append((host, backoff, paused_until, given_up))

    def paused(self, host: str) -> float:
        """Board.paused (0 if the board cannot answer)."""
        import ray
        try:
            return ray.get(self.board.paused.remote(host), timeout=CALL_TIMEOUT)
        except Exception:
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self.broken is None:
            self.sync()

    def sync(self) -> None:
        import ray
        with self._lock:
            posts, self._queue = self._queue, []
        try:
            if self.board is None and not self._find(create=bool(posts)):
                return  # no shard has posted anything yet
            self.seq, news = ray.get(self.board.exchange.remote(posts, self.seq), timeout=CALL_TIMEOUT)
        except Exception as e:  # the board is gone: this shard keeps its own back-off
            self.broken = f"{type(e).__name__}: {e}"[:300]
            return
        self.posted += len(posts)
        self.adopted += self.limits.adopt(news)

    def lease(self, host: str, interval: float, connections: int, until: float):
        """Board.lease from a fetch thread (the board is made if need be); None if the
        board cannot answer (the caller then uses the shard's own share)."""
        import ray
        if self.broken is not None:
            return None
        try:
            if self.board is None:
                self._find(create=True)
            return ray.get(self.board.lease.remote(host, interval, connections, until), timeout=CALL_TIMEOUT)
        except Exception as e:  # the board is gone: this shard keeps its own limits
            self.broken = f"{type(e).__name__}: {e}"[:300]
            return None

    def release(self, host: str, lease: int) -> None:
        try:
            self.board.release.remote(host, lease)  # not waited for: the lease also expires
        except Exception:
            pass

    def _find(self, create: bool) -> bool:
        import ray
        if create:
            self.board = ray.remote(Board).options(
                name=self.name, get_if_exists=True, lifetime="detached", num_cpus=0,
                max_restarts=0).remote()
            return True
        try:
            self.board = ray.get_actor(self.name)
        except ValueError:
            return False
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT + 1)
        if self.broken is None and self._queue:
            self.sync()
