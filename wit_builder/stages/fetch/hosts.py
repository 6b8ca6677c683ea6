"""Per-host limits of the fetch stage (the DNS cache a shard shares is
nameservers.Resolver).

- `HostLimits` holds one shard's share of each host's cluster-wide budget (see
  docs/fetch.md, "Per-host limits"): requests start only on the host's time slots
  that belong to this shard, through at most the shard's share of connections;
  429/503 slow the host down (Retry-After honoured), and a host that keeps failing
  is given up on (`host_given_up`) instead of eating the shard's time limit.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from wit_builder.errors import Failure
from wit_builder.stages.fetch.budgets import HostBudget

# scheme://[userinfo@]host[:port] -> host (brackets kept for IPv6); the plan's SQL twin
# is HOST_SQL in fetch.py.
_HOST = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)")
# Failures that say the host (not the URL) is in trouble: enough in a row and the
# host is given up on for the rest of the shard.
HOST_FAILURES = frozenset({"timeout", "connection_error", "server_error", "rate_limited", "tls_error"})
MAX_BACKOFF = 64     # a host slowed down by 429/503 uses at most every 64th of its slots
MAX_PAUSE = 600.0    # seconds: the longest Retry-After honoured
LATE = 0.005         # seconds: how late a booked slot (claim) may still be used
WAITED = 0.001       # seconds: a shorter wait for a slot is not counted as one
LEASE_POLL = 0.02    # seconds between asks for a cluster-wide connection to a redirect target


def host_of(url: str) -> str:
    """The lower-case host of `url` ('' if it has none)."""
    m = _HOST.match(url or "")
    return m.group(1).lower() if m else ""


@dataclass
class _Host:
    budget: HostBudget | None        # None: not limited (only its failures are counted)
    gate: threading.BoundedSemaphore | None
    next_slot: float = 0   # the first slot number not yet given (fractional for `alone` hosts)
    backoff: int = 1                 # use every backoff-th of this shard's slots
    paused_until: float = 0.0        # wall-clock time (Retry-After)
    failures_in_a_row: int = 0
    given_up: str | None = None
    leased: bool = False             # a redirect target paced by the board's leases
    in_use: int = 0                  # connections held now
    claimed: int = 0                 # slots booked (claim) and not yet used or dropped
    epoch: int = 0                   # bumped when the budget changes: older bookings lapse
    counts: Counter = field(default_factory=Counter)


class HostLimits:
    """One shard's per-host limits. `budgets` gives each host's share (hosts not in
    it are not limited, but still given up on after `give_up_after` failures in a
    row); `deadline` (wall clock) is when a request that has not started is no longer
    worth waiting for: it fails `host_deferred` so the shard ends in time.
    `others` is the share a host the shard was not planned with gets when a
    redirect leads there (see hop)."""

    def __init__(self, budgets: dict[str, HostBudget], give_up_after: int = 0,
                 deadline: float | None = None, others: HostBudget | None = None):
        self._hosts = {h: _Host(b, threading.BoundedSemaphore(b.connections))
                       for h, b in budgets.items()}
        self.give_up_after = give_up_after
        self.deadline = deadline
        self.others = others
        self.board = None   # a board.BoardClient: slow-downs shared with the run's other shards
        self._lock = threading.Lock()
        self._local = threading.local()  # .claim: (_Host, slot) booked for this thread (claim)
        self.waited_s = 0.0  # seconds requests waited for a connection and a slot, summed
        self.waited = 0      # requests that waited more than WAITED

    def acquire(self, host: str, until: float | None = None) -> "_Held":
        """Wait for a connection and a time slot of `host`; raises errors.Failure if
        the host was given up on or its next slot is past the deadline (or past
        `until`, wall clock: `timeout` if no connection is free by then)."""
        h = self._host(host)
        if h.given_up:
            raise Failure("host_given_up", h.given_up)
        if h.budget is None or h.gate is None:
            return _Held(self, host, None)
        asked = time.monotonic()
        if not h.gate.acquire(timeout=None if until is None else max(0.0, until - time.time())):
            raise Failure("timeout", f"{host}: no connection free before the image's deadline "
                          "(a redirect led there; --per-host-connections)")
        last = self.deadline if until is None else min(until, self.deadline or until)
        with self._lock:
            h.in_use += 1
        try:
            for _ in range(1000):  # bounded: each turn waits for a slot at least
                with self._lock:
                    b = h.budget
                    # a request starts at its slot's start, or a booked slot's (claim)
                    # at most LATE after; never later in a slot (a grace of half a slot
                    # let the limits test see rps + 2 in a second)
                    now = time.time()
                    k = self._drop_claim(h)
                    if (k is None or b.start(k) < now - min(LATE, b.interval / 4)
                            or b.start(k) < h.paused_until):
                        k = b.first_slot(max(now, h.paused_until), h.next_slot)
                        h.next_slot = k + b.stride * h.backoff
                    start = b.start(k)
                if last is not None and start > last:
                    raise Failure("host_deferred", f"{host}: its next request slot is past the "
                                  f"{'shard' if last == self.deadline else 'image'}'s time budget "
                                  "(--per-host-rps); --retry-failed fetches it later")
                wait = start - time.time()
                if wait > 0:
                    time.sleep(wait)
                if h.given_up:
                    raise Failure("host_given_up", h.given_up)
                if h.paused_until <= start:  # no Retry-After came in while waiting
                    break
        except BaseException:
            self._free(h)
            raise
        waited = time.monotonic() - asked
        if waited > WAITED:
            with self._lock:
                self.waited_s += waited
                self.waited += 1
        return _Held(self, host, h)

    def _free(self, h: _Host) -> None:
        with self._lock:
            h.in_use -= 1
        h.gate.release()

    def ready(self, host: str, now: float | None = None) -> float:
        """About when (wall clock) a request to `host` asked for at `now` (wall clock;
        default: now) would start:
        its next slot of this shard's class not yet given or claimed, or later if its
        connections are all taken. An estimate, for frontier.Frontier's order, read
        without the lock (acquire enforces the limits). 0 for a host without a budget."""
        h = self._hosts.get(host)
        if h is None or h.budget is None or h.given_up:
            return 0.0
        b = h.budget
        t = max(time.time() if now is None else now, h.paused_until)
        start = max(t, b.start(h.next_slot)) if b.alone else b.start(b.first_slot(t, h.next_slot))
        # one request beyond the connections waits for one to end too (about a slot
        # of the class: a guess)
        ahead = h.in_use + h.claimed + 1 - b.connections
        return start + b.stride * h.backoff * ahead * b.interval if ahead > 0 else start

    def claim(self, host: str) -> None:
        """Book `host`'s next slot for the calling thread's next acquire of it (so a
        thread that takes a URL at its host's slot does not miss the slot on the way
        to acquire); a later claim, or `unclaim`, drops it unused."""
        h = self._hosts.get(host)
        with self._lock:
            self._drop_claim()
            if h is None or h.budget is None or h.given_up:
                return
            b = h.budget
            k = b.first_slot(max(time.time(), h.paused_until), h.next_slot)
            h.next_slot = k + b.stride * h.backoff
            h.claimed += 1
            self._local.claim = (h, k, h.epoch)

    def unclaim(self) -> None:
        """Drop the calling thread's booked slot if acquire did not use it (its URL was
        refused, or failed before asking): that slot goes unused."""
        with self._lock:
            self._drop_claim()

    def _drop_claim(self, h: _Host | None = None) -> int | None:
        """(Holding the lock) the calling thread's booked slot, taken off its host's
        count: returns it if it is `h`'s (else None)."""
        got = getattr(self._local, "claim", None)
        if got is None:
            return None
        got[0].claimed -= 1
        self._local.claim = None
        return got[1] if got[0] is h and got[2] == h.epoch else None

    def slow_to(self, host: str, budget: HostBudget, since: float) -> None:
        """A Crawl-delay learned while the shard runs (robots.Rules): `host`'s requests
        from now on on `budget` (its budget_for with that delay) if that is slower, the
        next no sooner than one interval after `since` (when its robots.txt was asked)."""
        h = self._host(host)
        with self._lock:
            b = h.budget
            if b is not None and b.interval >= budget.interval:
                return
            due = since + budget.interval if b is None else max(since + budget.interval, b.start(h.next_slot))
            h.budget = budget
            h.gate = h.gate or threading.BoundedSemaphore(budget.connections)
            h.next_slot = budget.first_slot(due)
            h.epoch += 1

    def hop(self, host: str, until: float) -> "_Held":
        """A slot for a redirect hop to `host`, another host than the URL's, by wall
        clock `until` (the image's deadline): on this shard's share of the host where
        the plan gave it one, else leased from the run's board (board.Board.lease: the
        whole per-host budget, for the whole cluster), else — no board, or it failed —
        on a share of its own (`others`: the whole per-host budget, in this shard)."""
        h = self._host(host)
        if h.budget is None and self.others is not None and self.board is not None:
            held = self._lease(host, h, until)
            if held is not None:
                return held
        if h.budget is None and self.others is not None:
            with self._lock:
                if h.budget is None:
                    h.gate = threading.BoundedSemaphore(self.others.connections)
                    h.budget = self.others
        return self.acquire(host, until)

    def _lease(self, host: str, h: _Host, until: float) -> "_Held | None":
        """A cluster-wide slot and connection on `host` from the board (None: the board
        cannot answer); waits for a free connection by `until` at most."""
        b = self.others
        for _ in range(100_000):  # bounded: each turn waits 20 ms at least (the deadline ends it)
            if h.given_up:
                raise Failure("host_given_up", h.given_up)
            got = self.board.lease(host, b.interval, b.connections, until)
            if got is None:
                return None
            start, lease = got
            if start is None:
                if time.time() + LEASE_POLL > until:
                    raise Failure("timeout", f"{host}: no connection free before the image's deadline "
                                  "(a redirect led there; --per-host-connections, cluster-wide)")
                time.sleep(LEASE_POLL)
                continue
            h.leased = True
            if start > until:
                self.board.release(host, lease)
                raise Failure("host_deferred", f"{host}: its next request slot is past the image's "
                              "time budget (--per-host-rps, cluster-wide); --retry-failed fetches it later")
            if start > time.time():
                time.sleep(start - time.time())
                paused = self.board.paused(host)  # a 429 may have come in while waiting
                if paused:
                    self.board.release(host, lease)
                    time.sleep(max(0.0, min(paused, until) - time.time()))
                    continue
            return _Held(self, host, None, lease)
        raise Failure("timeout", f"{host}: no connection free (--per-host-connections, cluster-wide)")

    def _host(self, host: str) -> _Host:
        h = self._hosts.get(host)
        if h is None:
            with self._lock:
                h = self._hosts.setdefault(host, _Host(None, None))
        return h

    def limited(self, host: str) -> bool:
        """True if `host`'s requests are spaced by a budget (retries need no pause of their own)."""
        h = self._hosts.get(host)
        return h is not None and h.budget is not None

    def record(self, host: str, status: str, retry_after: float | None = None) -> None:
        """Adapt to what one request to `host` gave (and post a slow-down or a give-up
        to the board, if there is one)."""
        h = self._host(host)
        with self._lock:
            before = (h.backoff, h.paused_until, h.given_up)
            h.counts["requests"] += 1
            h.counts[status] += 1
            slowed = status in ("rate_limited", "server_error")
            if (h.budget is not None or h.leased) and slowed:
                h.backoff = min(MAX_BACKOFF, h.backoff * 2)
                if retry_after:
                    h.paused_until = max(h.paused_until, time.time() + min(retry_after, MAX_PAUSE))
            elif (h.budget is not None or h.leased) and h.backoff > 1:
                h.backoff -= 1          # recover slowly: one step per answer that was not 429/5xx
            if status in HOST_FAILURES:
                h.failures_in_a_row += 1
                if self.give_up_after and h.failures_in_a_row >= self.give_up_after and not h.given_up:
                    h.given_up = (f"{host}: given up on after {h.failures_in_a_row} failures in "
                                  f"a row (last: {status}; --host-give-up-after)")
            else:
                h.failures_in_a_row = 0
            stricter = (h.backoff > before[0] or h.paused_until > before[1]
                        or (h.given_up is not None and before[2] is None))
            if stricter and self.board is not None:
                self.board.post(host, h.backoff, h.paused_until, h.given_up, now=h.leased)

    def adopt(self, news: list[tuple[str, int, float, str | None]]) -> int:
        """Take on the slow-downs other shards posted (board.Board) for the hosts this
        shard holds: the stricter back-off and pause, their give-up. Returns how many
        hosts it made stricter (a shard's own posts come back too, and change nothing)."""
        n = 0
        with self._lock:
            for host, backoff, paused_until, given_up in news:
                h = self._hosts.get(host)
                if h is None:
                    continue
                before = (h.backoff, h.paused_until, h.given_up)
                if h.budget is not None:
                    h.backoff = max(h.backoff, min(MAX_BACKOFF, backoff))
                    h.paused_until = max(h.paused_until, paused_until)
                if given_up and not h.given_up:
                    h.given_up = given_up
                n += (h.backoff, h.paused_until, h.given_up) != before
        return n


class _Held:
    """A granted request: release() (or the with-block's end) frees the connection
    (this shard's, or the board's lease)."""

    def __init__(self, limits: HostLimits, host: str, h: _Host | None, lease: int | None = None):
        self.limits, self.host, self.h, self.lease = limits, host, h, lease

    def release(self) -> None:
        if self.h is not None:
            self.limits._free(self.h)
            self.h = None
        if self.lease is not None:
            self.limits.board.release(self.host, self.lease)
            self.lease = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()
