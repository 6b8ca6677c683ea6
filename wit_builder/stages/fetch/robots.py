"""robots.txt for the fetch stage: fetched once per origin per build, kept in the build.

Each origin's (scheme://host:port) /robots.txt is asked through the same guarded
client as the images (address guard, deadline, size cap, user agent), once: for a
host that several download shards hold, by the robots pass before the download
(`fetch_bucket` Ray tasks over the plan's origins.parquet); for a host that one shard
alone holds, by that shard (`Rules.lazily`, `Rules.prefetch`), so the pass does not
hold up the download for the many small hosts. What came back is a row of
`fetch/robots/` (view `robots`): the file, when it was fetched and until when it
holds. A download shard reads the pass's rows of its origins and asks
`Rules.verdict` before each URL. As RFC 9309 says:

- 2xx: the rules apply to `ROBOTS_AGENT` (parsed with protego); `Crawl-delay` spaces
  the host's requests;
- 4xx (404, 403, ...) or too many redirects: no robots.txt, everything is allowed;
- 5xx, 429, timeouts and connection failures: unreachable, so everything is
  disallowed for now (`robots_unavailable`, which `--retry-failed` tries again);
- a name that does not resolve: its URLs are `dns_error` without further lookups; an
  address the guard refuses: `blocked_address`.

A row holds for `CACHE_SECONDS` (24 h, RFC 9309's limit); an unreachable one for
`UNAVAILABLE_SECONDS`. A `--retry-failed` run reuses the previous fetch's rows that
still hold.
"""
from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from wit_builder.sql import literal

ROBOTS_AGENT = "wit-build"     # the product token robots.txt groups are matched against
CACHE_SECONDS = 24 * 3600
UNAVAILABLE_SECONDS = 3600
MAX_ROBOTS_BYTES = 512 * 1024  # RFC 9309: parse at least 500 KiB
_ORIGIN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^@/?#]*@)?([^/?#]*)")
# The same key in the plan's SQL (RE2 understands the pattern).
ORIGIN_SQL = ("lower(regexp_extract(url, {p}, 1)) || '://' || lower(regexp_extract(url, {p}, 2))"
              .format(p=literal(_ORIGIN.pattern)))
WAIT_FOR_ROBOTS = 120.0       # seconds a thread waits for another's fetch of the same robots.txt
POLL = 0.05                   # seconds between a shard's looks for a robots pass file it waits for
FAILED = "FAILED"             # beside the pass's files: the pass failed (Pass)
ALLOW_ALL = ("not_found", "http_error", "redirect_loop", "too_large", "not_an_image")
COLUMNS = ["origin", "state", "body", "crawl_delay", "fetched_at", "expires", "error"]


def origin_of(url: str) -> str:
    m = _ORIGIN.match(url or "")
    return f"{m.group(1).lower()}://{m.group(2).lower()}" if m else ""


def _schema():
    import pyarrow as pa
    return pa.schema([("origin", pa.string()), ("state", pa.string()), ("body", pa.string()),
                      ("crawl_delay", pa.float64()), ("fetched_at", pa.float64()),
                      ("expires", pa.float64()), ("error", pa.string())])


def table(rows: list[dict]):
    """Robots rows as a table of fetch/robots/."""
    import pyarrow as pa
    return pa.Table.from_pylist(rows, schema=_schema())


def classify(origin: str, get) -> dict:
    """One origin's row, its robots.txt asked with `get(url) -> bytes` (a
    netguard.Fetcher's get, or paced to count against the host's limits): state is
    rules, allow_all, unavailable, dns_error or blocked_address."""
    from wit_builder.errors import Failure
    now = time.time()
    row = {"origin": origin, "body": None, "crawl_delay": None, "fetched_at": now,
           "expires": now + CACHE_SECONDS, "error": None}
    try:
        body = get(origin + "/robots.txt")
    except Failure as f:
        if f.status in ALLOW_ALL:
            return {**row, "state": "allow_all", "error": str(f)}
        if f.status in ("dns_error", "blocked_address", "bad_url"):
            return {**row, "state": f.status, "error": str(f)}
        return {**row, "state": "unavailable", "error": str(f),
                "expires": now + UNAVAILABLE_SECONDS}
    except Exception as e:  # one odd origin must not take its bucket down
        return {**row, "state": "unavailable", "error": f"{type(e).__name__}: {e}",
                "expires": now + UNAVAILABLE_SECONDS}
    text = body[:MAX_ROBOTS_BYTES].decode("utf-8", "replace")
    delay = None
    try:
        from protego import Protego
        delay = Protego.parse(text).crawl_delay(ROBOTS_AGENT)
    except Exception:  # unparseable: protego is lenient, this is a last resort
        return {**row, "state": "allow_all", "error": "robots.txt could not be parsed"}
    return {**row, "state": "rules", "body": text,
            "crawl_delay": None if delay is None else float(delay)}


def fetch_all(work, first_shard: int, settings: dict, prev, retries: int, time_limit: float) -> None:
    """The robots pass of a fetch run: the origins of work/plan/origins.parquet, a Ray
    task per bucket, into work/robots/FFFFF-BBBBB.parquet (F: the run's first shard, so
    a retry's files do not clash with the last run's). Finished buckets are kept."""
    import pyarrow.parquet as pq

    from wit_builder.build import cluster
    with (work / "plan" / "origins.parquet").open("rb") as f:
        table = pq.read_table(f)
    buckets: dict[int, list[str]] = {}
    for origin, b in zip(table["origin"].to_pylist(), table["robots_bucket"].to_pylist()):
        buckets.setdefault(b, []).append(origin)
    out = work / "robots"
    todo = [b for b in sorted(buckets) if not bucket_file(out, first_shard, b).exists()]
    if not todo:
        return
    previous = sorted((prev / "robots").glob("*.parquet"), key=str) \
        if prev is not None and (prev / "robots").exists() else None
    if len(todo) == 1:  # one bucket (up to 2,000 origins): here, without a round of Ray tasks
        fetch_bucket(buckets[todo[0]], bucket_file(out, first_shard, todo[0]), settings, previous)
        return
    cluster.ensure_ray()
    # no CPU of their own: the download's shards hold the CPUs meanwhile (Pass), and some
    # wait for these files
    cluster.run_units(fetch_bucket, ((buckets[b], bucket_file(out, first_shard, b), settings,
                                      previous) for b in todo),
                      "fetch: robots.txt", total=len(todo), done=len(buckets) - len(todo),
                      retries=retries, time_limit=time_limit, unit="bucket", num_cpus=0)


def bucket_file(robots_dir, first_shard: int, bucket: int):
    return robots_dir / f"{first_shard:05d}-{bucket:05d}.parquet"


class Pass:
    """The robots pass (fetch_all) on a thread of the driver while the download runs.
    A shard that needs one of the pass's origins waits for its bucket's file
    (Rules.awaiting); should the pass fail, it writes FAILED beside them (so no shard
    waits on), and `wait` raises its error once the download is over."""

    def __init__(self, work, first_shard: int, settings: dict, prev, retries: int, time_limit: float):
        from wit_builder import storage
        self.failed = work / "robots" / FAILED
        storage.remove(self.failed)  # an earlier attempt's
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wit-robots-pass", daemon=True,
                                        args=(work, first_shard, settings, prev, retries, time_limit))
        self._thread.start()

    def _run(self, *args) -> None:
        from wit_builder import storage
        try:
            fetch_all(*args)
        except BaseException as e:  # raised in the driver's thread by wait()
            self.error = e
            storage.write_bytes(self.failed, f"{type(e).__name__}: {e}".encode())

    def wait(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


def shard_rows(plan, robots_dir, first_shard: int) -> tuple[list[dict], dict[int, object]]:
    """The robots pass's rows of a download shard's origins (its plan rows name their
    buckets) that are written already, and {bucket: file} of those still to come."""
    buckets = {b for b in plan["robots_bucket"].to_pylist() if b is not None}
    files = {b: bucket_file(robots_dir, first_shard, b) for b in sorted(buckets)}
    there = {b for b, f in files.items() if f.exists()}
    return (read_rows([files[b] for b in sorted(there)], set(plan["origin"].to_pylist())),
            {b: f for b, f in files.items() if b not in there})


def fetch_bucket(origins: list[str], out, settings: dict, previous: list | None = None) -> dict:
    """Ray task: the robots rows of `origins` into `out` (a Parquet file in the build).
    Rows of `previous` (fetch/robots files of the fetch being retried) that still hold
    are kept instead of fetched again."""
    import pyarrow.parquet as pq

    from wit_builder import storage
    from wit_builder.stages.fetch.nameservers import resolver
    from wit_builder.stages.fetch.netguard import Fetcher, Policy
    if out.exists():
        return {"origins": len(origins)}
    kept = _still_valid(previous, origins) if previous else {}
    p = settings["policy"]
    fetcher = Fetcher(Policy(timeout=p["timeout"], retries=0, user_agent=p["user_agent"],
                             allow_private_network=p["allow_private_network"],
                             max_image_bytes=MAX_ROBOTS_BYTES), resolver(settings["polite"]))
    todo = [o for o in origins if o not in kept]
    try:
        with ThreadPoolExecutor(max(1, min(settings["threads"], len(todo) or 1))) as pool:
            rows = list(kept.values()) + list(pool.map(lambda o: classify(o, fetcher.get), todo))
    finally:
        fetcher.close()
    with storage.writing(out) as local:  # whole or not at all: a shard may be waiting for it
        pq.write_table(table(rows), local)
    return {"origins": len(origins), "fetched": len(todo)}


def read_rows(files, origins: set[str]) -> list[dict]:
    """The rows of `origins` in robots files (build locations)."""
    import pyarrow.parquet as pq
    if not origins:
        return []
    rows = []
    for f in files:
        with f.open("rb") as fh:
            rows += [r for r in pq.read_table(fh).to_pylist() if r["origin"] in origins]
    return rows


def _unavailable(origin: str, error: str) -> dict:
    """A shard's verdict row for an origin whose robots.txt did not reach it (not
    written to fetch/robots/: a retry asks again)."""
    return {"origin": origin, "state": "unavailable", "error": error}


def _still_valid(previous: list, origins: list[str]) -> dict[str, dict]:
    now = time.time()
    return {r["origin"]: r for r in read_rows(previous, set(origins))
            if r["expires"] > now and r["state"] != "unavailable"}


class Rules:
    """The robots rows of one shard's origins, asked per URL.

    An origin with no row (one whose host only this shard holds: the robots pass did
    not fetch it) gets one from `fetch(origin) -> row` (see `lazily`) when its first
    URL is asked about, once: the shard's other threads that ask meanwhile wait for
    that answer, and threads on other hosts go on. `fetched` lists those rows (the
    shard's file of fetch/robots/); `on_delay(origin, seconds, since)` hears of a
    Crawl-delay one sets (`since`: when its request started)."""

    def __init__(self, rows: list[dict]):
        self._rows = {r["origin"]: r for r in rows}
        self._parsed: dict[str, object] = {}
        self._fetch = self._on_delay = None
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.fetched: list[dict] = []
        self._files: dict = {}            # awaiting: the pass's files still to come
        self._bucket_of: dict[str, int] = {}
        self._failed, self._until = None, 0.0
        self._arrived: dict[int, threading.Event] = {}
        self._done: set[int] = set()        # buckets read (or given up on)
        self._missing: dict[int, str] = {}  # bucket -> why its file did not come

    def lazily(self, fetch, on_delay=None) -> None:
        self._fetch, self._on_delay = fetch, on_delay

    def awaiting(self, files: dict, bucket_of: dict[str, int | None], failed, until: float) -> None:
        """The robots pass is still writing `files` ({bucket: file}; `bucket_of`: origin
        -> bucket): a URL of one of their origins waits for its file (looked for every
        POLL s until `until`, wall clock, or until the pass writes `failed`); that file's
        rows then serve the shard's other threads too."""
        self._files, self._failed, self._until = files, failed, until
        self._bucket_of = {o: b for o, b in bucket_of.items() if b in files}

    def prefetch(self, origins, threads: int) -> ThreadPoolExecutor | None:
        """Start fetching the rows `origins` lack, and reading the pass's files as they
        come (awaiting), on `threads` threads of their own (the shard's downloads start
        meanwhile; a URL whose robots.txt is on its way waits for it). Returns the pool,
        to shut down with the shard (None: nothing to fetch)."""
        todo = sorted(o for o in set(origins)
                      if o not in self._rows and o not in self._bucket_of and o != "://")
        if self._fetch is None or not (todo or self._files):
            return None
        pool = ThreadPoolExecutor(max(1, min(threads, len(todo) + len(self._files))),
                                  thread_name_prefix="wit-robots")
        for bucket in sorted(self._files):  # read as soon as the pass writes them
            pool.submit(self._await_bucket, bucket)
        for origin in todo:
            pool.submit(self._row, origin)
        return pool

    def crawl_delays(self) -> dict[str, float]:
        """origin -> Crawl-delay seconds, for the origins whose robots.txt sets one."""
        return {o: r["crawl_delay"] for o, r in self._rows.items() if r.get("crawl_delay")}

    def waiting_on(self, origin: str) -> bool:
        """True while `origin`'s row is one the pass has not delivered yet."""
        bucket = self._bucket_of.get(origin)
        return bucket is not None and bucket not in self._done

    def _await_bucket(self, bucket: int) -> None:
        """Until the pass's file of `bucket` is read (or given up on): one thread looks
        for it, the others wait for that one."""
        with self._lock:
            arrived = self._arrived.get(bucket)
            mine = arrived is None
            if mine:
                arrived = self._arrived[bucket] = threading.Event()
        if mine:
            try:
                self._load(bucket)
            finally:
                self._done.add(bucket)
                arrived.set()
        else:
            arrived.wait(timeout=max(0.0, self._until - time.time()) + 10 * POLL)

    def _from_pass(self, origin: str, bucket: int) -> dict:
        """`origin`'s row from the pass's file of `bucket`, once it is there."""
        self._await_bucket(bucket)
        return self._rows.get(origin) or _unavailable(
            origin, self._missing.get(bucket, "the robots pass wrote no row for it"))

    def _load(self, bucket: int) -> None:
        """Wait for the pass's file of `bucket` and take its rows (and Crawl-delays)."""
        f = self._files[bucket]
        for _ in range(max(1, math.ceil((self._until - time.time()) / POLL)) + 1):  # bounded: the shard's end
            rows = None
            if f.exists():
                mine = {o for o, b in self._bucket_of.items() if b == bucket}
                try:
                    rows = read_rows([f], mine)
                except Exception as e:  # the pass writes whole files; look again, bounded
                    self._missing[bucket] = f"{f}: unreadable ({type(e).__name__}: {str(e)[:200]})"
            if rows is not None:
                for r in rows:
                    if r.get("crawl_delay") and self._on_delay is not None:
                        self._on_delay(r["origin"], r["crawl_delay"], 0.0)
                with self._lock:
                    for r in rows:
                        self._rows.setdefault(r["origin"], r)
                self._missing.pop(bucket, None)
                return
            if self._failed is not None and self._failed.exists():
                self._missing[bucket] = f"the robots pass failed ({self._failed.read_text()[:300]})"
                return
            time.sleep(POLL)
        self._missing.setdefault(bucket, "the robots pass had not fetched it by the shard's time limit")

    def _row(self, origin: str) -> dict | None:
        row = self._rows.get(origin)
        if row is not None or origin == "://":
            return row
        bucket = self._bucket_of.get(origin)
        if bucket is not None:
            return self._from_pass(origin, bucket)
        if self._fetch is None:
            return None
        with self._lock:
            row = self._rows.get(origin)
            waiting = self._pending.get(origin)
            if row is None and waiting is None:
                mine = self._pending[origin] = threading.Event()
        if row is not None:
            return row
        if waiting is not None:  # another thread is fetching it (bounded by its deadline)
            waiting.wait(timeout=WAIT_FOR_ROBOTS)
            return self._rows.get(origin) or _unavailable(
                origin, f"its robots.txt was still being fetched after {WAIT_FOR_ROBOTS:g} s")
        since, row = time.time(), None
        try:
            row = self._fetch(origin)  # classify: never raises
            if row.get("crawl_delay") and self._on_delay is not None:  # before any URL of it goes
                self._on_delay(origin, row["crawl_delay"], since)
        finally:
            with self._lock:
                if row is not None:
                    self._rows[origin] = row
                    self.fetched.append(row)
                del self._pending[origin]
            mine.set()
        return row

    def verdict(self, url: str) -> tuple[str, str] | None:
        """(status, error) if `url` must not be requested, else None."""
        origin = origin_of(url)
        row = self._row(origin)
        if row is None or row["state"] == "allow_all":
            return None
        state = row["state"]
        if state == "unavailable":
            return "robots_unavailable", (f"{origin}/robots.txt is unreachable ({row['error']}); "
                                          "disallowed for now (RFC 9309), --retry-failed tries again")
        if state in ("dns_error", "blocked_address", "bad_url"):
            return state, row["error"]
        rp = self._parsed.get(origin)
        if rp is None:
            from protego import Protego
            rp = self._parsed[origin] = Protego.parse(row["body"] or "")
        if not rp.can_fetch(url, ROBOTS_AGENT):
            return "robots_disallowed", f"{origin}/robots.txt disallows {url[:200]} for {ROBOTS_AGENT}"
        return None
