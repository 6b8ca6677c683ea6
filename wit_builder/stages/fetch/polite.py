"""The fetch stage's politeness, in the plan and in each download shard.

Plan side (DuckDB, once per run): `exclude` drops the pairs the opt-out lists name;
`deal` lays the pairs out over the download shards so that each host's URLs sit in
few, consecutively numbered shards (run at about the same time), gives every row its
host's shard count and this shard's slot among them, and lists the shards that must
not run at once (`exclusive`); `origins` lists the robots.txt origins that the robots
pass fetches before the download (those of hosts in several shards), in buckets.

Shard side: `Shard` holds what a download shard needs: the robots verdicts of its
origins, the shared DNS cache, its share of each host's budget (hosts.HostLimits),
its link to the run's board of slowed-down hosts (board.BoardClient), and the
per-host counts that end up in `fetch/hosts/` (view `hosts`).
docs/fetch.md, "Politeness at scale", explains the design.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter

from wit_builder.sql import literal
from wit_builder.stages.fetch.board import BoardClient
from wit_builder.stages.fetch.budgets import HostBudget, budget_for, shard_budgets
from wit_builder.stages.fetch.hosts import HostLimits, host_of
from wit_builder.stages.fetch.nameservers import resolver
from wit_builder.stages.fetch.netguard import Fetcher, Policy
from wit_builder.stages.fetch.robots import MAX_ROBOTS_BYTES, ORIGIN_SQL, Rules, classify, table

# Same host rule as hosts.host_of (RE2).
HOST_SQL = ("lower(coalesce(regexp_extract(url, "
            "'^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\\[[^\\]]*\\]|[^:/?#]*)', 1), ''))")
ORIGINS_PER_TASK = 2000      # robots.txt origins fetched by one Ray task
BLOCKS_PER_SHARD = 16        # runs of host-sorted URLs that make up one shard
HOST_COLUMNS = ["host", "requests", "success", "rate_limited", "server_error", "robots_disallowed",
                "dns_error", "failed"]


def exclude(con, domains: list[str], urls: list[str], where: dict[str, str]) -> int:
    """Move the rows of temp table `pairs` (with host) that the lists name into temp
    table `excluded` (with error); returns how many."""
    con.execute("CREATE TEMP TABLE ex_domains (d VARCHAR)")
    con.execute("CREATE TEMP TABLE ex_urls (u VARCHAR)")
    if domains:
        con.executemany("INSERT INTO ex_domains VALUES (?)", [[d] for d in sorted(set(domains))])
    if urls:
        con.executemany("INSERT INTO ex_urls VALUES (?)", [[u] for u in sorted(set(urls))])
    dom, url = where.get("exclude_domains", ""), where.get("exclude_urls", "")
    con.execute(f"""CREATE TEMP TABLE excluded AS
        WITH hit AS ({domain_hits("pairs", "ex_domains", "d")})
        SELECT p.*, CASE WHEN u.u IS NOT NULL THEN {literal('excluded by --exclude-urls ' + url)}
                         ELSE {literal('excluded by --exclude-domains ' + dom + ' (')} || hit.domain || ')' END
                    AS error
        FROM pairs p LEFT JOIN hit USING (host) LEFT JOIN ex_urls u ON p.url = u.u
        WHERE hit.domain IS NOT NULL OR u.u IS NOT NULL""")
    n = con.execute("SELECT count(*) FROM excluded").fetchall()[0][0]
    if n:
        con.execute("DELETE FROM pairs WHERE uid IN (SELECT uid FROM excluded)")
    return n


def domain_hits(table: str, domains: str, column: str) -> str:
    """SQL: (host, domain) for the hosts of `table` that are `domains`.`column` or a
    subdomain of one. Every suffix of every distinct host is joined to the list: no
    host x domain loop, so millions of hosts and long lists stay a hash join."""
    return f"""SELECT host, min(suffix) AS domain FROM (
                 SELECT host, array_to_string(parts[i:], '.') AS suffix FROM (
                   SELECT host, string_split(host, '.') AS parts,
                          unnest(generate_series(1, len(string_split(host, '.')))) AS i
                   FROM (SELECT DISTINCT host FROM {table} WHERE host <> '')))
               JOIN {domains} ON suffix = {column} GROUP BY 1"""


def layout(n_rows: int, shard_size: int) -> tuple[int, int]:
    """(shards, block): rows in host order go block by block to shards 0, 1, ..., n-1,
    0, 1, ...; n = ceil(rows / shard_size), as many shards as whole shards need (an
    extra, part-empty shard would leave CPUs idle in the last wave), and the largest
    block up to about shard_size / BLOCKS_PER_SHARD with which no shard gets more than
    `shard_size` rows (block 1 always fits)."""
    if n_rows == 0:
        return 0, 1
    rounds = max(1, min(BLOCKS_PER_SHARD, shard_size // 8))
    n = math.ceil(n_rows / shard_size)
    for block in range(math.ceil(n_rows / (n * rounds)), 0, -1):  # bounded by the first block
        if math.ceil(math.ceil(n_rows / block) / n) * block <= shard_size:
            return n, block
    return n, 1


def deal(con, n_shards: int, block: int, offset: int, dest: str, every_origin: bool = False) -> None:
    """COPY temp table `pairs` (with host, origin) to `dest`, partitioned by
    fetch_shard, with host_shards, host_slot, the in-shard order `ord` (the first URL
    of every host, then the second, ...) and robots_bucket (see `origins`, which makes
    temp table `origins` here)."""
    con.execute(f"""CREATE TEMP TABLE dealt AS
        WITH d AS (SELECT *, (row_number() OVER (ORDER BY hash(host), host, uid) - 1) // {block}
                     AS blk FROM pairs),
             e AS (SELECT *, blk % {n_shards} AS shard,
                          least({n_shards}, max(blk) OVER w - min(blk) OVER w + 1) AS host_shards,
                          (blk - min(blk) OVER w) % {n_shards} AS host_slot
                   FROM d WINDOW w AS (PARTITION BY host)),
             f AS (SELECT *, row_number() OVER (PARTITION BY shard, host ORDER BY uid) AS host_rank FROM e)
        SELECT uid, url, text, selected_by, query_ids, ({offset} + shard)::INTEGER AS fetch_shard,
               host, origin, host_shards::INTEGER AS host_shards, host_slot::INTEGER AS host_slot,
               row_number() OVER (PARTITION BY shard ORDER BY host_rank, hash(host), host, uid) AS ord
        FROM f""")
    con.execute("DROP TABLE pairs")
    origins(con, every_origin)
    con.execute(f"""COPY (SELECT d.*, o.robots_bucket FROM dealt d LEFT JOIN origins o USING (origin))
        TO {dest} (FORMAT parquet, PARTITION_BY (fetch_shard))""")


def exclusive(con, dest_glob: str, connections: int) -> dict[int, list[str]]:
    """fetch_shard -> tokens: two shards sharing a token must not run at once. A host
    in more shards than --per-host-connections has `connections` slot classes, and only
    one shard of each class runs at a time (so its budget shares stay whole)."""
    rows = con.execute(f"""SELECT DISTINCT fetch_shard, host || '#' || (host_slot % {connections})
        FROM read_parquet({dest_glob}) WHERE host_shards > {connections} ORDER BY 1, 2""").fetchall()
    out: dict[int, list[str]] = {}
    for shard, token in rows:
        out.setdefault(int(shard), []).append(token)
    return out


def origins(con, every_origin: bool = False, per_task: int = ORIGINS_PER_TASK) -> None:
    """Temp table `origins`: the robots.txt origins the robots pass fetches before the
    download, in buckets of `per_task`. Those are the origins of hosts that several
    shards hold (host_shards > 1 in temp table `dealt`), or all with `every_origin` (a
    retry, which mostly reuses the last fetch's rows); the shard that alone holds a
    host fetches its robots.txt itself, when its first URL comes up (robots.Rules)."""
    shared = "" if every_origin else "AND host_shards > 1"
    con.execute(f"""CREATE TEMP TABLE origins AS SELECT origin,
        ((dense_rank() OVER (ORDER BY origin) - 1) // {per_task})::INTEGER AS robots_bucket
        FROM (SELECT DISTINCT origin FROM dealt WHERE origin <> '://' {shared})""")


def no_origins(con) -> None:
    """Temp table `origins`, empty: a plan with no pairs to fetch."""
    con.execute("CREATE TEMP TABLE origins (origin VARCHAR, robots_bucket INTEGER)")


def add_host_columns(con) -> None:
    con.execute(f"CREATE TEMP TABLE pairs2 AS SELECT *, {HOST_SQL} AS host, {ORIGIN_SQL} AS origin "
                "FROM pairs")
    con.execute("DROP TABLE pairs")
    con.execute("ALTER TABLE pairs2 RENAME TO pairs")


def stop_after(limit: float) -> float:
    """Seconds into a shard at which it stops fetching (`shard_stopped`, `host_deferred`)
    so that it can store what it finished before the driver's --shard-time-limit: 80%
    of the limit, leaving at least min(10 s, half the limit) to write the shard."""
    return limit - max(0.2 * limit, min(0.5 * limit, 10.0))


class Shard:
    """Politeness for one download shard (see the module docstring)."""

    def __init__(self, plan, settings: dict, robots_rows: list[dict], board=None,
                 awaited: dict | None = None, pass_failed=None):
        """`robots_rows`: the robots pass's rows of the shard's origins written so far;
        `awaited`: {bucket: file} of the pass's files still to come (and `pass_failed`,
        where the pass says it failed), for Rules.awaiting."""
        p = settings["polite"]
        self.resolver = resolver(p)
        self.rules = Rules(robots_rows) if p["robots_txt"] else None
        delays: dict[str, float] = {}
        for origin, delay in (self.rules.crawl_delays() if self.rules else {}).items():
            delays[host_of(origin)] = max(delay, delays.get(host_of(origin), 0.0))
        budgets = shard_budgets(plan, p["per_host_rps"], p["per_host_connections"], delays)
        deadline = time.time() + stop_after(p["shard_time_limit"])
        rps, conns = p["per_host_rps"], p["per_host_connections"]
        others = HostBudget(1.0 / rps, 1, 0, conns) if rps > 0 else None  # redirect targets
        self.limits = (HostLimits(budgets, p["host_give_up_after"], deadline, others)
                       if budgets or others or p["host_give_up_after"] or self.rules else None)
        self.limited = bool(budgets)  # some hosts have slots: their URLs go in a frontier.Frontier
        self.board = None  # the run's board (a Ray actor), if any: slow-downs shared across shards
        if board is not None and self.limits is not None:
            self.board = self.limits.board = BoardClient(board, self.limits)
        self._robots = self._prefetch = None  # the robots.txt this shard fetches itself
        self._host_origins: dict[str, set[str]] = {}
        if self.rules is not None:
            pol = settings["policy"]
            self._robots = Fetcher(Policy(timeout=pol["timeout"], retries=0, user_agent=pol["user_agent"],
                                          allow_private_network=pol["allow_private_network"],
                                          max_image_bytes=MAX_ROBOTS_BYTES), self.resolver, self.limits)
            places = {h: (n, k) for h, n, k in zip(plan["host"].to_pylist(), plan["host_shards"].to_pylist(),
                                                    plan["host_slot"].to_pylist())}

            def slowed(origin: str, delay: float, since: float) -> None:  # a Crawl-delay come in
                host = host_of(origin)
                n, k = places.get(host, (1, 0))
                self.limits.slow_to(host, budget_for(host, n, k, rps, conns, delay), since)

            # a robots.txt request is one of its host's requests: on its slots
            self.rules.lazily(lambda origin: classify(origin, self._robots.paced), slowed)
            if awaited:
                self.rules.awaiting(awaited, dict(zip(plan["origin"].to_pylist(),
                                                      plan["robots_bucket"].to_pylist())),
                                    pass_failed, deadline)
            # a quarter of the download threads: a robots.txt is small, and these run
            # beside the image downloads
            self._origins, self._threads = plan["origin"].to_pylist(), max(1, settings["threads"] // 4)
            for host, origin in zip(plan["host"].to_pylist(), self._origins):
                self._host_origins.setdefault(host, set()).add(origin)
        self.counts: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def start(self, images: Fetcher) -> None:
        """Start fetching the robots.txt of the origins only this shard holds (while
        img2dataset sets up and the first images come in), on the connections of
        `images`, the shard's image Fetcher."""
        if self._robots is not None:
            self._robots.share_connections(images)
            self._prefetch = self.rules.prefetch(self._origins, self._threads)

    def held(self, host: str) -> bool:
        """True while a robots.txt rule of `host` is still to come from the robots pass
        (frontier.Frontier gives its threads other hosts meanwhile)."""
        return self.rules is not None and any(self.rules.waiting_on(o) for o in self._host_origins.get(host, ()))

    def close(self) -> None:
        """Send the last slow-downs to the board and stop exchanging."""
        if self._prefetch is not None:  # at the shard's end: every row it needed is in
            self._prefetch.shutdown(wait=True, cancel_futures=True)
        if self._robots is not None:
            self._robots.close()
        if self.board is not None:
            self.board.close()

    def robots_table(self):
        """The robots rows of the origins this shard fetched itself (None if none)."""
        rows = [] if self.rules is None else self.rules.fetched
        return table(rows) if rows else None

    def shared(self) -> dict:
        """What this shard told the board and took from it."""
        b = self.board
        return {} if b is None else {"posted": b.posted, "adopted": b.adopted,
                                     **({"broken": b.broken} if b.broken else {})}

    def waits(self) -> dict:
        """How long this shard's requests waited for their hosts' slots and connections."""
        lim = self.limits
        return {} if lim is None else {"waited_s": round(lim.waited_s, 3), "waited": lim.waited}

    def refuse(self, url: str) -> tuple[str, str] | None:
        """(status, error) if robots.txt (or its host's DNS) rules `url` out."""
        return None if self.rules is None else self.rules.verdict(url)

    def request(self, host: str, status: str) -> None:
        """Fetcher's observer: one request to `host` answered `status`."""
        with self._lock:
            c = self.counts.setdefault(host, Counter())
            c["requests"] += 1
            if status in ("rate_limited", "server_error"):
                c[status] += 1

    def outcome(self, url: str, status: str) -> None:
        """The final status of one of the shard's URLs."""
        with self._lock:
            c = self.counts.setdefault(host_of(url), Counter())
            c["urls"] += 1
            if status in ("success", "robots_disallowed", "dns_error"):
                c[status] += 1

    def table(self):
        """The shard's rows of fetch/hosts: one per host (requests and their 429s and
        5xx; the URLs' final outcomes)."""
        import pyarrow as pa
        cols: dict[str, list] = {c: [] for c in HOST_COLUMNS}
        for host in sorted(self.counts):
            c = self.counts[host]
            cols["host"].append(host)
            for name in HOST_COLUMNS[1:-1]:
                cols[name].append(c[name])
            cols["failed"].append(c["urls"] - c["success"])
        return pa.table({c: pa.array(v, pa.string() if c == "host" else pa.int64())
                         for c, v in cols.items()})

    def dns(self) -> dict:
        return {"lookups": self.resolver.lookups, "failures": self.resolver.failures}


def adopt(ctx, plan: dict, prev, status_out, with_status) -> dict[str, int]:
    """At the fetch commit: the excluded pairs' status rows, this run's robots rows
    and, for a retry, the previous fetch's robots and hosts rows. Returns the
    excluded count as {status: n}."""
    import pyarrow.parquet as pq
    first = plan["shards"][0] if plan["shards"] else 0
    with (ctx.work / "plan" / "excluded.parquet").open("rb") as f:
        rows = pq.read_table(f)
    if rows.num_rows:
        n = rows.num_rows
        pq.write_table(with_status(rows, {"status": ["excluded"] * n, "error": rows["error"].to_pylist()}),
                       status_out / f"excluded-{first:05d}.parquet")
    robots_dir = ctx.work / "robots"
    mine: set[str] = set()  # the origins this run has robots rows for (fetched or kept)
    if robots_dir.exists():
        for f in sorted(robots_dir.glob("*.parquet"), key=str):
            with f.open("rb") as fh:
                mine.update(pq.read_table(fh, columns=["origin"])["origin"].to_pylist())
            ctx.adopt(f, f"fetch/robots/{f.name}")
    if prev is not None:
        if (prev / "hosts").exists():
            for f in sorted((prev / "hosts").glob("*.parquet"), key=str):
                ctx.adopt(f, f"fetch/hosts/{f.name}", copy=True)
        _keep_other_robots(ctx, prev, mine)
    return {"excluded": rows.num_rows} if rows.num_rows else {}


def _keep_other_robots(ctx, prev, mine: set[str]) -> None:
    """A retry's robots rows: the previous fetch's, except the origins this run has
    rows of its own for (one row per origin in the `robots` view)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    if not (prev / "robots").exists():
        return
    out = ctx.output("fetch") / "robots"
    for f in sorted((prev / "robots").glob("*.parquet"), key=str):
        if not mine:
            ctx.adopt(f, f"fetch/robots/{f.name}", copy=True)
            continue
        with f.open("rb") as fh:
            table = pq.read_table(fh)
        table = table.filter(pc.invert(pc.is_in(table["origin"], pa.array(sorted(mine)))))
        if table.num_rows:
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out / f"kept-{f.name}")


def figures(glob, dns_lookups: int, remote=None, scratch=None, top: int = 5) -> dict:
    """This run's per-host figures for the summary, from its shards' hosts rows."""
    from wit_builder import storage
    from wit_builder.build import catalog
    if not list(glob.parent.parent.glob("*/hosts.parquet")):
        return {}
    con = catalog.scratch(scratch, remote=remote)
    try:
        con.execute(f"""CREATE TEMP TABLE h AS SELECT host, sum(requests) AS requests,
            sum(success) AS success, sum(rate_limited) AS rate_limited,
            sum(robots_disallowed) AS robots_disallowed, sum(dns_error) AS dns_error,
            sum(failed) AS failed FROM read_parquet({storage.sql_path(glob)}) GROUP BY host""")
        hosts, requests, limited, robots, dns_failed = con.execute(
            "SELECT count(*), coalesce(sum(requests), 0), coalesce(sum(rate_limited), 0), "
            "coalesce(sum(robots_disallowed), 0), count(*) FILTER (WHERE dns_error > 0) FROM h").fetchall()[0]
        worst = con.execute(f"SELECT host, failed, requests FROM h WHERE failed > 0 "
                            f"ORDER BY failed DESC, host LIMIT {top}").fetchall()
    finally:
        con.close()
    return {"hosts": hosts, "requests": int(requests), "rate_limited_429": int(limited),
            "robots_disallowed": int(robots), "dns_lookups": dns_lookups,
            "dns_failure_rate": round(dns_failed / hosts, 4) if hosts else None,
            "top_failing_hosts": ", ".join(f"{h} {f:,} failed of {r:,} requested" for h, f, r in worst)
            or "none"}
