"""The frontier's order (a host that can start now goes before one that has to wait)
and the slot a take books for its thread; real HostLimits, wall-clock slots placed
tens of seconds apart so the order does not depend on how fast the test runs."""
from __future__ import annotations

import time

import pytest

from wit_builder.stages.fetch.budgets import HostBudget
from wit_builder.stages.fetch.frontier import Frontier
from wit_builder.stages.fetch.hosts import HostLimits


def budget_starting_in(seconds: float, interval: float = 100.0) -> HostBudget:
    """A one-shard budget whose next slot opens `seconds` from now."""
    return HostBudget(interval, offset=((time.time() + seconds) / interval) % 1.0)


def rows(*urls: str) -> list[tuple[int, str]]:
    return list(enumerate(urls))


def test_a_host_free_now_goes_before_one_whose_slot_is_far():
    limits = HostLimits({"a.test": budget_starting_in(50)})
    f = Frontier(rows("http://a.test/1", "http://a.test/2", "http://c.test/1", "http://c.test/2"), limits)
    taken = [f.take()[0] for _ in range(4)]
    limits.unclaim()
    assert taken == [2, 3, 0, 1]  # c is not limited: both of its rows before a's
    with pytest.raises(IndexError, match="every row was handed out"):
        f.take()


def test_among_hosts_that_must_wait_the_soonest_goes_first_and_a_take_books_its_slot():
    limits = HostLimits({"a.test": budget_starting_in(50), "b.test": budget_starting_in(20)})
    before = limits.ready("b.test")
    assert time.time() + 15 < before < time.time() + 25
    f = Frontier(rows("http://a.test/1", "http://a.test/2", "http://b.test/1"), limits)
    assert f.take() == (2, "http://b.test/1")
    # b's slot is this thread's now: the next request to b would get the one after it
    assert limits.ready("b.test") == pytest.approx(before + 100.0)
    assert limits._hosts["b.test"].claimed == 1
    assert f.take()[0] == 0  # a later take drops the unused booking
    assert limits._hosts["b.test"].claimed == 0 and limits._hosts["a.test"].claimed == 1
    assert f.take()[0] == 1
    limits.unclaim()
    assert limits._hosts["a.test"].claimed == 0


def test_rows_keep_the_plan_order_when_every_host_is_free():
    limits = HostLimits({})
    urls = [f"http://h{i % 3}.test/{i}" for i in range(9)]
    f = Frontier(rows(*urls), limits)
    assert [f.take()[0] for _ in range(9)] == list(range(9))


def test_a_booked_slot_is_the_one_acquire_uses():
    limits = HostLimits({"a.test": budget_starting_in(0.3, interval=0.5)})
    slot = limits.ready("a.test")
    limits.claim("a.test")
    t0 = time.time()
    with limits.acquire("a.test"):
        started = time.time()
    assert started == pytest.approx(slot, abs=0.05) and started - t0 < 0.45
    assert limits._hosts["a.test"].claimed == 0
    assert limits.ready("a.test") == pytest.approx(slot + 0.5)


def test_a_host_only_this_shard_holds_starts_at_once_when_idle_and_keeps_its_interval():
    limits = HostLimits({"a.test": HostBudget(0.4, offset=0.5, alone=True)})
    starts = []
    for _ in range(3):
        t0 = time.time()
        with limits.acquire("a.test"):
            starts.append(time.time())
        if len(starts) == 1:
            assert starts[0] - t0 < 0.05  # no grid slot to wait for
    assert [round(b - a, 1) for a, b in zip(starts, starts[1:])] == [0.4, 0.4]
    time.sleep(0.5)  # idle for longer than the interval: the next request goes at once
    t0 = time.time()
    with limits.acquire("a.test"):
        assert time.time() - t0 < 0.05
    # on the grid (another shard holds the host too) an idle host waits for its slot
    grid = HostLimits({"b.test": budget_starting_in(0.3, interval=100.0)})
    assert grid.ready("b.test") - time.time() > 0.2


def test_a_host_held_back_goes_after_the_others_until_released():
    limits, held = HostLimits({}), {"a.test"}
    f = Frontier(rows("http://a.test/1", "http://c.test/1", "http://a.test/2", "http://c.test/2"),
                 limits, held=lambda host: host in held)
    assert [f.take()[0] for _ in range(2)] == [1, 3]  # a's robots.txt rules not in yet
    held.clear()
    time.sleep(0.03)  # past HELD: a is looked at again
    assert [f.take()[0] for _ in range(2)] == [0, 2]
