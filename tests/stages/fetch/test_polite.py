"""A polite crawler: per-host limits across shards, robots.txt, back-off, DNS, opt-outs.

Many "hosts" are names that --resolve maps to different 127.0.0.x addresses, each
served by its own image server, which logs every request's start and end.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from tests.support.fetch import write_selected
from wit_builder.build import catalog
from wit_builder.build.stage import committed
from wit_builder.demo import imageserver
from wit_builder.io import uid_of
from wit_builder.stages.fetch import fetch
from wit_builder.stages.fetch.hosts import host_of
from wit_builder.stages.fetch.nameservers import Resolver
from wit_builder.stages.fetch.robots import Rules

SCENE = "1-red-circle-plain-white-{}"


def fast(**kw) -> fetch.Config:
    base = dict(image_size=32, timeout=5.0, retries=0, threads=4, fetch_shard_size=8,
                shards_in_flight=4, allow_private_network=True, resolve_only=True)
    return fetch.Config(**{**base, **kw})


@contextlib.contextmanager
def hosts(n: int, robots: dict[int, str | int] | None = None):
    """n image servers on 127.0.0.2.. , named h0.test, h1.test, ...; yields
    [(name, server)] and the --resolve entries."""
    robots = robots or {}
    servers = [imageserver.serve(host=f"127.0.0.{2 + i}", robots=robots.get(i)) for i in range(n)]
    try:
        named = [(f"h{i}.test", s) for i, s in enumerate(servers)]
        yield named, [f"{name}=127.0.0.{2 + i}" for i, (name, _) in enumerate(named)]
    finally:
        for s in servers:
            s.stop()


def url(name: str, srv, path: str) -> str:
    return f"http://{name}:{srv.port}{path}"


def statuses(build) -> dict[str, dict]:
    return {r["url"]: r for r in pq.read_table(committed(build, "fetch") / "status").to_pylist()}


def most_in_a_second(times: list[float]) -> int:
    """The most requests that started within any window [t, t + 1 s)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


@pytest.mark.slow
def test_per_host_limits_hold_across_shards_in_flight(build, ray_cluster):
    """5 hosts x 11 URLs in shards of 6 (each host in 2-3 shards), 4 shards in flight
    on 2 Ray workers: every host sees at most --per-host-rps requests (+1) in any
    second and at most --per-host-connections at once, and every image arrives."""
    rps, conns = 2.0, 2
    with hosts(5) as (named, resolve):
        urls = [url(name, srv, f"/img/{SCENE.format(i)}.jpg") for name, srv in named for i in range(11)]
        uids = write_selected(build, urls)
        res = fetch.run(fast(per_host_rps=rps, per_host_connections=conns, resolve=resolve,
                             fetch_shard_size=6), build)
        logs = {name: [r for r in srv.requests() if r[2] != "/robots.txt"] for name, srv in named}
    rows = statuses(build)
    assert len(rows) == len(uids) and {r["status"] for r in rows.values()} == {"success"}
    spread = Counter(len({r["fetch_shard"] for r in rows.values() if host_of(r["url"]) == name})
                     for name, _ in named)
    assert res.summary["shards"] == 10 and max(spread) == 3  # some hosts in more shards than conns
    for name, log in logs.items():
        assert len(log) == 11, name
        assert most_in_a_second([start for start, _, _ in log]) <= rps + 1, name
        assert most_at_once([(start, end) for start, end, _ in log]) <= conns, name
    done = [s for s in (committed(build, "fetch") / "hosts").glob("*.parquet")]
    assert len(done) == res.summary["shards"]
    assert res.summary["hosts"] == 5 and res.summary["requests"] == len(urls)
    assert res.summary["dns_failure_rate"] == 0
    # shards really ran side by side (the limits held across them, not one after another)
    spans = [(s["start_time"], s["end_time"]) for s in (
        json.loads(f.read_text()) for f in (committed(build, "fetch") / "shards").glob("*_stats.json"))]
    print("shards at once", most_at_once(spans), "seconds", res.seconds)
    assert most_at_once(spans) >= 2


@pytest.mark.slow
def test_robots_txt_cases(build, ray_cluster):
    rules = {0: "User-agent: *\nDisallow: /mirror/private/\n",
             1: "User-agent: otherbot\nDisallow: /\n\nUser-agent: wit-build\nDisallow: /mirror/nowit/\n",
             2: 503, 3: 404, 4: "User-agent: *\nCrawl-delay: 1\n"}
    with hosts(5, rules) as (named, resolve):
        (n0, s0), (n1, s1), (n2, s2), (n3, s3), (n4, s4) = named
        img = f"/img/{SCENE.format(0)}.jpg"
        cases = {
            url(n0, s0, img): "success", url(n0, s0, f"/mirror/private{img}"): "robots_disallowed",
            url(n1, s1, img): "success", url(n1, s1, f"/mirror/nowit{img}"): "robots_disallowed",
            url(n2, s2, img): "robots_unavailable", url(n3, s3, img): "success",
        }
        delayed = [url(n4, s4, f"/img/{SCENE.format(i)}.jpg") for i in range(4)]
        write_selected(build, list(cases) + delayed)
        res = fetch.run(fast(per_host_rps=0, resolve=resolve), build)
        assert s0.hits(f"/mirror/private{img}") == 0 and s1.hits(f"/mirror/nowit{img}") == 0
        assert s2.hits(img) == 0                            # robots.txt 503: nothing requested
        assert all(s.hits("/robots.txt") == 1 for _, s in named)   # once per origin
        starts = [t for t, _, p in s4.requests() if p != "/robots.txt"]
    rows = statuses(build)
    for u, want in cases.items():
        assert rows[u]["status"] == want, (u, rows[u]["error"])
    assert "RFC 9309" in rows[url(n2, s2, img)]["error"]
    assert {rows[u]["status"] for u in delayed} == {"success"}
    assert len(starts) == 4 and most_in_a_second(starts) <= 2   # Crawl-delay: 1 (+1)
    robots = catalog.query(build, "SELECT origin, state, crawl_delay FROM robots ORDER BY origin").to_pylist()
    assert [r["state"] for r in robots] == ["rules", "rules", "unavailable", "allow_all", "rules"]
    assert robots[4]["crawl_delay"] == 1.0
    assert res.summary["failures_by_status"] == {"robots_disallowed": 2, "robots_unavailable": 1}
    # --no-robots-txt: nothing is asked of robots.txt
    with hosts(1, {0: "User-agent: *\nDisallow: /\n"}) as (named, resolve):
        (name, srv), = named
        write_selected(build, [url(name, srv, f"/img/{SCENE.format(1)}.jpg")], tag="t2")
        fetch.run(fast(per_host_rps=0, resolve=resolve, robots_txt=False), build)
        assert srv.hits("/robots.txt") == 0
    assert {r["status"] for r in statuses(build).values()} == {"success"}


@pytest.mark.slow
def test_429_slows_the_host_and_a_failing_host_is_given_up(build, ray_cluster):
    with hosts(2) as (named, resolve):
        (busy, s0), (down, s1) = named
        flaky = [url(busy, s0, f"/flaky/1/img/{SCENE.format(i)}.jpg") for i in range(3)]
        broken = [url(down, s1, f"/status/500/{i}.jpg") for i in range(6)]
        write_selected(build, flaky + broken)
        res = fetch.run(fast(per_host_rps=10, retries=2, host_give_up_after=3, resolve=resolve,
                             fetch_shard_size=100), build)
        log0 = [r for r in s0.requests() if r[2] != "/robots.txt"]
        hits_down = sum(s1.hits(f"/status/500/{i}.jpg") for i in range(6))
        asked = {u for u in broken if s1.hits(u)}
    rows = statuses(build)
    assert {rows[u]["status"] for u in flaky} == {"success"}   # slowed down, and still arrived
    # every 429 (Retry-After: 1) is followed by a pause of a second before the next request
    seen: Counter = Counter()
    for i, (start, end, path) in enumerate(sorted(log0)):
        seen[path] += 1
        if seen[path] == 1:    # /flaky/1/...: the first request of each path is the 429
            later = [s for s, _, _ in log0 if s > end]
            assert not later or min(later) >= end + 0.95, (path, min(later) - end)
    assert hits_down == 3     # given up after 3 failures in a row (retries count)
    for u in broken:          # what was asked keeps the host's answer; the rest is given up
        assert rows[u]["status"] == ("server_error" if u in asked else "host_given_up"), u
    assert "--host-give-up-after" in next(rows[u]["error"] for u in broken
                                          if rows[u]["status"] == "host_given_up")
    assert res.summary["rate_limited_429"] >= 3
    assert down in res.summary["top_failing_hosts"]


def test_exclusion_lists_and_dns_errors(build, ray_cluster, tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("# opted out\nOptedOut.test\n*.gone.test\n")
    urls_file = tmp_path / "urls.txt"
    with hosts(1) as (named, resolve):
        (name, srv), = named
        keep = [url(name, srv, f"/img/{SCENE.format(i)}.jpg") for i in range(3)]
        dropped_url = url(name, srv, f"/img/{SCENE.format(9)}.jpg")
        urls_file.write_text(dropped_url + "\n")
        by_domain = ["http://optedout.test/a.jpg", "http://img.optedout.test/b.jpg",
                     "http://x.gone.test/c.jpg"]
        unknown = [f"http://nowhere{i % 2}.test/{i}.jpg" for i in range(6)]  # not in --resolve
        write_selected(build, keep + [dropped_url] + by_domain + unknown)
        res = fetch.run(fast(per_host_rps=0, resolve=resolve, robots_txt=False, fetch_shard_size=100,
                             exclude_domains=str(domains), exclude_urls=str(urls_file)), build)
        assert srv.hits(f"/img/{SCENE.format(9)}.jpg") == 0
    rows = statuses(build)
    assert {rows[u]["status"] for u in keep} == {"success"}
    assert {rows[u]["status"] for u in by_domain + [dropped_url]} == {"excluded"}
    assert "--exclude-domains" in rows[by_domain[1]]["error"] and "optedout.test" in rows[by_domain[1]]["error"]
    assert "--exclude-urls" in rows[dropped_url]["error"]
    assert {rows[u]["status"] for u in unknown} == {"dns_error"}
    assert res.summary["failures_by_status"] == {"dns_error": 6, "excluded": 4}
    assert res.summary["dns_lookups"] == 3          # one shard, three names: each once
    assert res.summary["dns_failure_rate"] == round(2 / 3, 4)
    got = catalog.query(build, "SELECT count(*) AS n FROM samples WHERE status = 'excluded'")
    assert got["n"].to_pylist() == [4]
    # the data card shows the per-host figures and the DNS failure rate
    from wit_builder.app.report import write_report
    page = write_report(build).read_text()
    facts = json.loads((build / "reports" / "facts.json").read_text())
    assert facts["dns_failure_rate"] == round(2 / 3, 4) and facts["hosts"] == 3
    assert "<h2>Hosts</h2>" in page and "nowhere0.test" in page


def test_resolver_answers_each_name_once_for_all_threads():
    resolver = Resolver(overrides={"a.test": "127.0.0.5"}, only_overrides=True)
    answers = []

    def ask():
        answers.append(resolver.resolve("A.test", 80)[0][4][0])
    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["127.0.0.5"] * 16 and resolver.lookups == 1
    for _ in range(3):
        with pytest.raises(OSError):
            resolver.resolve("other.test", 80)
    assert resolver.lookups == 2 and resolver.failures == 1 and resolver.failed_hosts == {"other.test"}


def test_policy_mistakes_are_one_line(build, tmp_path, capsys):
    from wit_builder.app.cli import main
    write_selected(build, ["http://a.test/x.jpg"])
    assert main(["fetch", "--out", str(build), "--resolve", "a.test=nowhere"]) == 2
    assert "NAME=ADDRESS" in capsys.readouterr().err
    assert main(["fetch", "--out", str(build), "--exclude-domains", str(tmp_path / "nope.txt")]) == 2
    assert "--exclude-domains" in capsys.readouterr().err
    assert main(["fetch", "--out", str(build), "--per-host-connections", "0"]) == 2
    assert "--per-host-connections" in capsys.readouterr().err


@pytest.mark.slow
def test_robots_txt_of_a_host_in_one_shard_is_fetched_by_that_shard(build, ray_cluster):
    """A host that several shards hold gets its robots.txt from the robots pass, before
    the download; one that a single shard holds, from that shard, when its first URL
    comes up: either way once, its rules applied, one row per origin in `robots`."""
    with hosts(3, {1: "User-agent: *\nDisallow: /mirror/private/\n"}) as (named, resolve):
        (n0, s0), (n1, s1), (n2, s2) = named
        img = "/img/" + SCENE + ".jpg"
        banned = url(n1, s1, "/mirror/private" + img.format(99))
        urls = ([url(n0, s0, img.format(i)) for i in range(14)] + [url(n1, s1, img.format(20)), banned]
                + [url(n2, s2, img.format(30))])
        write_selected(build, urls)
        res = fetch.run(fast(per_host_rps=50, resolve=resolve, fetch_shard_size=6), build)
        assert [s.hits("/robots.txt") for _, s in named] == [1, 1, 1]
        assert s1.hits("/mirror/private" + img.format(99)) == 0
    rows = statuses(build)
    assert rows[banned]["status"] == "robots_disallowed"
    assert res.summary["failures_by_status"] == {"robots_disallowed": 1}
    spread = {name: len({r["fetch_shard"] for r in rows.values() if host_of(r["url"]) == name})
              for name, _ in named}
    assert spread[n0] >= 3 and spread[n2] == 1
    files = {f.name: {r["origin"] for r in pq.read_table(f).to_pylist()}
             for f in (committed(build, "fetch") / "robots").glob("*.parquet")}
    passed = set().union(*(o for name, o in files.items() if "-" in name))  # the pass: FFFFF-BBBBB
    in_shards = [o for name, o in files.items() if "-" not in name]        # a shard's: NNNNN
    several = {f"http://{name}:{s.port}" for name, s in named if spread[name] > 1}
    assert passed == several and f"http://{n0}:{s0.port}" in passed
    assert sorted(o for got in in_shards for o in got) == sorted(
        f"http://{name}:{s.port}" for name, s in named if spread[name] == 1)
    robots = catalog.query(build, "SELECT origin, state FROM robots ORDER BY origin").to_pylist()
    assert [r["state"] for r in robots] == ["allow_all", "rules", "allow_all"]


def test_a_shard_fetches_each_missing_robots_txt_once_and_paces_its_host_first():
    """Threads asking about one origin's URLs at once: one fetch, the others wait for
    it; its Crawl-delay reaches the limits before any of them has its verdict."""
    calls, delays, verdicts = [], [], []

    def fetch_row(origin):
        calls.append(origin)
        time.sleep(0.2)
        return {"origin": origin, "state": "rules", "body": "User-agent: *\nDisallow: /no/\n",
                "crawl_delay": 3.0, "fetched_at": 0.0, "expires": 1e12, "error": None}

    rules = Rules([{"origin": "http://known.test", "state": "allow_all", "crawl_delay": None}])
    rules.lazily(fetch_row, lambda origin, delay, since: delays.append((origin, delay, len(verdicts))))
    pool = rules.prefetch(["http://known.test", "http://new.test", "://"], threads=2)
    ask = [f"http://new.test/{'no' if i % 2 else 'yes'}/{i}.jpg" for i in range(8)]
    threads = [threading.Thread(target=lambda u=u: verdicts.append((u, rules.verdict(u)))) for u in ask]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    pool.shutdown(wait=True)
    assert calls == ["http://new.test"] and delays == [("http://new.test", 3.0, 0)]
    assert sorted(u for u, v in verdicts if v is not None) == sorted(ask[1::2])
    assert [r["origin"] for r in rules.fetched] == ["http://new.test"]
    assert rules.verdict("http://known.test/no/1.jpg") is None and calls == ["http://new.test"]


def test_a_shard_waits_for_the_robots_pass_file_of_its_origin_or_its_failure(tmp_path):
    """An origin the robots pass is still fetching: its URLs wait for the pass's file
    (and take their rules from it); should the pass fail, they are robots_unavailable."""
    import pyarrow as pa

    from wit_builder.stages.fetch import robots
    row = {"origin": "http://big.test", "state": "rules", "body": "User-agent: *\nDisallow: /no/\n",
           "crawl_delay": 2.0, "fetched_at": 0.0, "expires": 1e12, "error": None}
    later = robots.bucket_file(tmp_path, 0, 0)
    delays = []
    rules = Rules([])
    rules.lazily(lambda origin: pytest.fail(f"{origin} belongs to the pass"),
                 lambda origin, delay, since: delays.append((origin, delay)))
    rules.awaiting({0: later, 1: robots.bucket_file(tmp_path, 0, 1)},
                   {"http://big.test": 0, "http://other.test": 1, "http://alone.test": None},
                   tmp_path / robots.FAILED, time.time() + 30)
    assert rules.waiting_on("http://big.test") and not rules.waiting_on("http://alone.test")
    half = tmp_path / "half.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=robots._schema()), half)
    later.write_bytes(half.read_bytes()[:20])  # half written: looked at again
    threading.Timer(0.3, lambda: os.replace(half, later)).start()  # then whole, as the pass does
    t0 = time.time()
    assert rules.verdict("http://big.test/yes/1.jpg") is None
    assert 0.25 < time.time() - t0 < 5 and not rules.waiting_on("http://big.test")
    assert rules.verdict("http://big.test/no/1.jpg")[0] == "robots_disallowed"
    assert delays == [("http://big.test", 2.0)] and rules.fetched == []
    (tmp_path / robots.FAILED).write_text("RuntimeError: bucket 1 failed every try")
    status, error = rules.verdict("http://other.test/a.jpg")
    assert status == "robots_unavailable" and "the robots pass failed (RuntimeError" in error


@pytest.mark.slow
def test_retry_failed_reuses_the_robots_txt_it_fetched(build, ray_cluster):
    """--retry-failed asks no robots.txt again while the build's copy is fresh: its
    rules still apply (a disallowed URL is still never requested) and only the
    transient failure is fetched again."""
    with hosts(2, {0: "User-agent: *\nDisallow: /mirror/private/\n"}) as (named, resolve):
        (name, srv), (other, srv2) = named
        img = f"/img/{SCENE.format(3)}.jpg"
        good, banned = url(name, srv, img), url(name, srv, f"/mirror/private{img}")
        flaky = url(name, srv, f"/status/503/{SCENE.format(4)}.jpg")
        write_selected(build, [good, banned, flaky, url(other, srv2, img)])
        fetch.run(fast(per_host_rps=0, resolve=resolve), build)
        assert srv.hits("/robots.txt") == 1 and srv2.hits("/robots.txt") == 1
        retry = fetch.run(fast(per_host_rps=0, resolve=resolve, retry_failed=True), build)
        assert srv.hits("/robots.txt") == 1                      # the cached copy served the retry
        assert srv2.hits("/robots.txt") == 1 and srv2.hits(img) == 1  # nothing to retry there
        assert srv.hits(flaky) == 2 and srv.hits(good) == 1
        assert srv.hits(f"/mirror/private{img}") == 0
    rows = statuses(build)
    assert retry.summary["retried"] == 1
    assert [rows[u]["status"] for u in (good, banned, flaky)] == [
        "success", "robots_disallowed", "server_error"]
    # one row per origin: the retried host's (kept by the retry) and the other's (from the first run)
    robots = catalog.query(build, "SELECT origin, state FROM robots ORDER BY origin").to_pylist()
    assert [(r["origin"].split("://")[1].split(":")[0], r["state"]) for r in robots] == [
        ("h0.test", "rules"), ("h1.test", "allow_all")]


def redirected_to_a_fourth(build, target: str = "/img/" + SCENE + ".jpg", per_host: int = 4,
                           **cfg) -> tuple[list[str], dict, list]:
    """Fetch `per_host` URLs of each of three hosts that all redirect to a fourth host
    holding no URL of its own (its path `target`, numbered); (the URLs, their status
    rows, the fourth's log of those requests)."""
    with hosts(4) as (named, resolve):
        (name4, tsrv) = named[3]
        urls = [url(name, srv, f"/away/{name4}:{tsrv.port}" + target.format(10 * n + i))
                for n, (name, srv) in enumerate(named[:3]) for i in range(per_host)]
        write_selected(build, urls)
        fetch.run(fast(resolve=resolve, robots_txt=False, **cfg), build)
        log = [r for r in tsrv.requests() if r[2].startswith(target.split("{")[0])]
    return urls, statuses(build), log


@pytest.mark.slow
def test_redirects_to_another_host_count_against_that_host(build, ray_cluster):
    """Three hosts redirect every image to a fourth that holds no URL of its own: one
    shard asks the fourth no faster than --per-host-rps (+1 in a second) and through
    no more than --per-host-connections, where the three together would send 3 x rps."""
    rps, conns = 2.0, 2
    urls, rows, log = redirected_to_a_fourth(build, per_host_rps=rps, per_host_connections=conns,
                                             fetch_shard_size=100)
    assert {rows[u]["status"] for u in urls} == {"success"}
    assert len(log) == len(urls)
    assert most_in_a_second([start for start, _, _ in log]) <= rps + 1
    assert most_at_once([(start, end) for start, end, _ in log]) <= conns


@pytest.mark.slow
def test_a_redirect_target_keeps_its_limits_across_shards(build, ray_cluster):
    """Three hosts in 4 shards running at once redirect every image to a fourth that
    no shard was planned with: each hop leases a slot and a connection from the run's
    board, so the fourth sees --per-host-rps (+1 in a second) and --per-host-connections
    for the whole cluster, where 4 shards with a share each would send 4 x rps."""
    rps, conns = 2.0, 1
    urls, rows, log = redirected_to_a_fourth(build, per_host_rps=rps, per_host_connections=conns,
                                             fetch_shard_size=3, shards_in_flight=4, timeout=10.0)
    assert {rows[u]["status"] for u in urls} == {"success"}
    assert len({r["fetch_shard"] for r in rows.values()}) == 4
    assert len(log) == len(urls)
    assert most_in_a_second([start for start, _, _ in log]) <= rps + 1
    assert most_at_once([(start, end) for start, end, _ in log]) <= conns


@pytest.mark.slow
def test_a_redirect_target_s_429_pauses_it_for_the_whole_cluster(build, ray_cluster):
    """Four shards in flight each hop to a fourth host that answers 429 with
    Retry-After: 3: the target's own answer pauses it on the board, so no shard asks
    it again until the 3 s are over (after the moment the post takes to travel)."""
    urls, rows, log = redirected_to_a_fourth(build, per_host_rps=5.0, per_host_connections=4,
                                             fetch_shard_size=1, shards_in_flight=4,
                                             target="/pause/3/{}.jpg", per_host=1)
    assert {rows[u]["status"] for u in urls} == {"rate_limited"}
    assert len({r["fetch_shard"] for r in rows.values()}) == 3 and len(log) == 3
    starts = sorted(start for start, _, _ in log)
    ends = sorted(end for _, end, _ in log)
    for end, later in zip(ends, starts[1:]):
        assert later >= end + 2.5, [s - ends[0] for s in starts]


def test_the_board_passes_slow_downs_between_shards(ray_cluster):
    """Two shards' limits share a host through the run's board (a real Ray actor): a
    429 with Retry-After and the back-off it causes in one shard, and a give-up, are
    taken on by the other shard at its next exchange; a shard's own posts change
    nothing when they come back, and a host the other shard lacks is left alone. The
    board exists only once a shard had something to post, and closing it kills it."""
    import time
    import uuid

    import ray

    from wit_builder.stages.fetch import board as boards
    from wit_builder.stages.fetch.budgets import HostBudget
    from wit_builder.stages.fetch.hosts import HostLimits
    name = boards.name_for(uuid.uuid4().hex[:12])
    try:
        a = HostLimits({"h.test": HostBudget(0.5, 2, 0, 1), "x.test": HostBudget(0.5, 2, 0, 1)}, 3)
        b = HostLimits({"h.test": HostBudget(0.5, 2, 1, 1)}, 3)
        a.board, b.board = boards.BoardClient(name, a, interval=60), boards.BoardClient(name, b, interval=60)
        a.record("x.test", "success")                         # nothing to share
        a.board.sync()
        b.board.sync()
        with pytest.raises(ValueError):                       # so no board was started
            ray.get_actor(name)
        before = time.time()
        a.record("h.test", "rate_limited", retry_after=30)   # the host said: wait 30 s
        a.board.sync()
        b.board.sync()
        hb, ha = b._hosts["h.test"], a._hosts["h.test"]
        assert (hb.backoff, hb.paused_until) == (ha.backoff, ha.paused_until) == (2, ha.paused_until)
        assert ha.paused_until >= before + 30
        assert (a.board.posted, b.board.adopted, "x.test" in b._hosts) == (1, 1, False)
        for _ in range(3):                                     # given up on in shard b
            b.record("h.test", "server_error")
        b.board.sync()
        a.board.sync()
        assert ha.given_up and "given up on after 3 failures" in ha.given_up
        assert a.board.adopted == 1  # b's give-up (its own 429 came back and changed nothing)
        with pytest.raises(Exception, match="given up on"):
            a.acquire("h.test")
        a.board.close()
        b.board.close()
        # the board's order: a reader gets only what changed after its last read
        handle = ray.get_actor(name)
        seq, news = ray.get(handle.exchange.remote([], 0))
        assert {h for h, *_ in news} == {"h.test"}
        assert ray.get(handle.exchange.remote([], seq)) == (seq, [])
    finally:
        boards.close(name)
    for _ in range(100):  # bounded: the kill takes effect within moments
        try:
            ray.get_actor(name)
        except ValueError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{name} still alive after close")


@pytest.mark.slow
def test_a_429_in_one_shard_pauses_the_host_in_every_shard(build, ray_cluster):
    """One host's 16 URLs in 2 shards that run side by side; two of them answer 429
    with Retry-After: 6. Through the run's board, the other shard waits out the pause
    as well: none of its requests starts from 3 s after the 429 (the first post starts
    the board, a process) until the 6 s are over (without the board it went on at its
    own pace), and its images still arrive."""
    with hosts(1) as (named, resolve):
        (name, srv), = named
        images = [url(name, srv, f"/img/{SCENE.format(i)}.jpg") for i in range(14)]
        # the first pause sorts first (uid order: first in its shard, asked at the start),
        # so the other shard surely has images left to wait with
        first = next(u for u in (url(name, srv, f"/pause/6/{k}.jpg") for k in range(10_000))
                     if uid_of(u, f"caption 0 for {u.rsplit('/', 1)[-1]}") < min(
                         uid_of(v, f"caption {i} for {v.rsplit('/', 1)[-1]}") for i, v in enumerate(images, 2)))
        pauses = [first, url(name, srv, "/pause/6/last.jpg")]
        write_selected(build, pauses + images)
        res = fetch.run(fast(per_host_rps=2, per_host_connections=2, resolve=resolve,
                             fetch_shard_size=8), build)
        log = [r for r in srv.requests() if r[2] != "/robots.txt"]
    rows = statuses(build)
    shard_of = {u.split(f":{srv.port}", 1)[1]: r["fetch_shard"] for u, r in rows.items()}
    assert {rows[u]["status"] for u in images} == {"success"}
    assert {rows[u]["status"] for u in pauses} == {"rate_limited"}
    assert len({r["fetch_shard"] for r in rows.values()}) == 2
    spans = [(s["start_time"], s["end_time"]) for s in (
        json.loads(f.read_text()) for f in (committed(build, "fetch") / "shards").glob("*_stats.json"))]
    assert most_at_once(spans) == 2
    waited_out = 0
    for _, end, path in [r for r in log if r[2].startswith("/pause/")]:
        others = [start for start, _, p in log if shard_of[p] != shard_of[path] and start > end]
        assert not [t for t in others if end + 3 <= t < end + 5.9], (path, [t - end for t in others])
        waited_out += any(t >= end + 5.9 for t in others)  # the other shard had work left after
    assert waited_out >= 1
    assert res.summary["slowdowns_shared"] >= 1


def test_a_posted_back_off_fades_and_a_give_up_stays():
    """On the board, a back-off halves every HALF_LIFE seconds since it was posted (a
    shard that starts later does not begin a long-quiet host at its worst pace), a
    new post merges with what is left of the old one, and a give-up never fades."""
    from wit_builder.stages.fetch import board as boards
    b = boards.Board()
    b.exchange([("slow.test", 64, 0.0, None), ("dead.test", 8, 0.0, "dead.test: given up")], 0)
    assert sorted(b.exchange([], 0)[1]) == [("dead.test", 8, 0.0, "dead.test: given up"),
                                            ("slow.test", 64, 0.0, None)]
    for host in ("slow.test", "dead.test"):  # posted 2 minutes ago: four half-lives
        seq, backoff, posted, paused, given_up = b.hosts[host]
        b.hosts[host] = (seq, backoff, posted - 4 * boards.HALF_LIFE, paused, given_up)
    assert sorted(b.exchange([], 0)[1]) == [("dead.test", 1, 0.0, "dead.test: given up"),
                                            ("slow.test", 4, 0.0, None)]
    seq, news = b.exchange([("slow.test", 2, 5.0, None)], 0)   # max(2, what is left: 4)
    assert news[0] == ("slow.test", 4, 5.0, None) and seq == 3
    assert boards.decayed(64, 0.0, 10 * 3600) == 1


def test_board_leases_space_a_redirect_target_for_the_whole_cluster():
    """Board.lease: slots `interval` apart whoever asks, no more open leases than the
    connections, a lease freed by release or by its end, and the host's posted
    back-off and pause applied to the slots."""
    import time

    from wit_builder.stages.fetch import board as boards
    b = boards.Board()
    now = time.time()
    s1, l1 = b.lease("cdn.test", 0.5, 2, now + 60)
    s2, l2 = b.lease("cdn.test", 0.5, 2, now + 60)
    assert s2 - s1 == pytest.approx(0.5) and l1 != l2
    assert b.lease("cdn.test", 0.5, 2, now + 60) == (None, 0)       # both connections open
    b.release("cdn.test", l1)
    s3, _ = b.lease("cdn.test", 0.5, 2, time.time() - 1)              # a lease that has ended
    assert s3 - s2 == pytest.approx(0.5)
    s4, _ = b.lease("cdn.test", 0.5, 2, now + 60)                    # the ended one is not counted
    assert s4 is not None and s4 - s3 == pytest.approx(0.5)
    b.exchange([("cdn.test", 4, now + 30, None)], 0)                 # a 429: back-off 4, paused 30 s
    b.leases["cdn.test"].clear()
    s5, _ = b.lease("cdn.test", 0.5, 2, now + 60)
    s6, _ = b.lease("cdn.test", 0.5, 2, now + 60)
    assert s5 >= now + 30 and s6 - s5 == pytest.approx(2.0)


def test_a_board_left_idle_exits_by_itself(ray_cluster):
    """A board whose driver died (nobody calls it any more) exits after its idle time,
    leases and pause checks counting as calls like exchanges."""
    import time

    import ray

    from wit_builder.stages.fetch.board import Board
    board = ray.remote(num_cpus=0, max_restarts=0)(Board).remote(1.0)
    for _ in range(8):  # busy for ~2 s with lease and pause calls only: it stays
        assert ray.get(board.lease.remote("cdn.test", 0.01, 100, time.time() + 60))[0] is not None
        assert ray.get(board.paused.remote("cdn.test")) == 0.0
        time.sleep(0.25)
    time.sleep(3.0)  # idle: 1 s, checked every 0.25 s (a call would count as use)
    try:
        with pytest.raises(ray.exceptions.RayError):
            ray.get(board.paused.remote("cdn.test"), timeout=10)
    finally:
        ray.kill(board)
