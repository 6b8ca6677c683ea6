"""Guarded, polite HTTP for the fetch stage: one image URL in, bytes or a status out.

img2dataset fetches with a bare `urllib.request.urlopen`: a new connection per image,
redirects followed to any address, no size limit, every failure retried alike. Fetch
hands img2dataset's downloader `Fetcher.fetch` instead, which

- connects only to addresses it has checked (every redirect hop, at connect time, so
  a DNS answer cannot change between the check and the connection): loopback,
  private, link-local, multicast and reserved addresses are `blocked_address` unless
  the network policy allows private networks;
- resolves each host through a shared `nameservers.Resolver` (once per shard; `dns_error`)
  and keeps a shared pool of keep-alive connections per host (no more than the host's
  connection budget when `hosts.HostLimits` are given);
- sends a user agent naming the project and honours X-Robots-Tag opt-outs;
- gives every attempt a hard wall-clock deadline, connect to last byte, headers and
  redirects included, enforced before every socket read and write (a server that drips
  its body, its headers or endless `100 Continue` lines cannot hold a thread longer);
- caps the response size and the image area (read from the header, before anything
  is decoded), and recognises truncated JPEG/PNG files;
- retries only transient failures (timeouts, connection errors, 429, 5xx), with backoff.

This module holds the policy, the status sets and the `Fetcher`; its parts sit beside
it: `netguard_address` (the address guard, the URL checks), `netguard_socket` (the
deadline-aware sockets and TLS, the guarded connect, the http.client connections) and
`netguard_checks` (HTTP statuses, X-Robots-Tag, the image checks).
"""
from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin

from wit_builder.errors import Failure
from wit_builder.schemas import RETRY_NOW
from wit_builder.stages.fetch.hosts import host_of
from wit_builder.stages.fetch.netguard_address import address_problem, url_parts  # noqa: F401 (netguard.address_problem: tests)
from wit_builder.stages.fetch.netguard_checks import image_problem, is_opted_out, status_failure
from wit_builder.stages.fetch.netguard_socket import (
    HTTP,
    HTTPS,
    DeadlinePassed,
    DeadlineSSLSocket,
    getaddrinfo,
    set_deadline,
)

DEFAULT_USER_AGENT = ("wit-build/0.1 (CLIP-style image-text dataset builder; "
                      "honours X-Robots-Tag noai/noimageai; uses img2dataset)")
MAX_REDIRECTS = 10
# One attempt (connect, request, headers, body, every redirect hop) ends after this many
# times --timeout, however steadily a server drips; each single wait is --timeout.
DEADLINE_FACTOR = 2
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Policy:
    """How to fetch: the fetch flags that shape a request and what is accepted."""
    timeout: float = 10.0
    retries: int = 1
    user_agent: str = DEFAULT_USER_AGENT
    robots_directives: frozenset[str] = frozenset()   # empty: X-Robots-Tag is ignored
    allow_private_network: bool = False
    max_image_bytes: int = 50_000_000
    max_image_area: int = 89_478_485


_TLS: list[ssl.SSLContext] = []
_TLS_LOCK = threading.Lock()


def default_tls() -> ssl.SSLContext:
    """The process's TLS context for image hosts (the system's CAs, the deadline-keeping
    socket): made once, at the first https URL (loading the CAs takes ~20 ms, which a
    shard of plain-http hosts, or a second Fetcher, need not pay), shared by every
    Fetcher (an SSLContext is safe to share between threads)."""
    with _TLS_LOCK:
        if not _TLS:
            context = ssl.create_default_context()
            context.sslsocket_class = DeadlineSSLSocket
            _TLS.append(context)
        return _TLS[0]


class Fetcher:
    """Fetch image bytes under a `Policy`; thread-safe. Connections are kept alive in a
    pool per host shared by the threads. `resolver` (a nameservers.Resolver) answers DNS for
    every thread; `limits` (a hosts.HostLimits) spaces and bounds the requests to each
    host and is told how each went; `observer(host, status)` hears of every request.
    `stop_at` (time.monotonic()) is when the shard stops: no attempt starts after it
    and one in flight is cut there, both `shard_stopped` (`stop_note` says why)."""

    def __init__(self, policy: Policy, resolver=None, limits=None, observer=None,
                 stop_at: float | None = None, stop_note: str = "the shard stopped"):
        self.policy = policy
        self.resolver = resolver
        self.limits = limits
        self.observer = observer
        self.stop_at, self.stop_note = stop_at, stop_note
        self._idle: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._kept: set[http.client.HTTPConnection] = set()  # kept-alive, closed by close()
        self._lock = threading.Lock()
        self._tls_context: ssl.SSLContext | None = None  # default_tls(), at the first https URL

    def share_connections(self, other: "Fetcher") -> None:
        """Keep connections alive in `other`'s pool (same timeout and address rules):
        a shard's robots.txt request leaves its connection to the image requests."""
        self._idle, self._kept, self._lock = other._idle, other._kept, other._lock

    @property
    def _tls(self) -> ssl.SSLContext:
        if self._tls_context is None:
            self._tls_context = default_tls()
        return self._tls_context

    @_tls.setter
    def _tls(self, context: ssl.SSLContext) -> None:
        self._tls_context = context

    def close(self) -> None:
        with self._lock:
            for conn in self._kept:
                conn.close()
            self._kept.clear()
            self._idle.clear()

    def fetch(self, url: str) -> tuple[bytes | None, str, str | None]:
        """(image bytes, "success", None) or (None, status, error message), retried
        `policy.retries` times for transient failures."""
        last: Failure | None = None
        for attempt in range(self.policy.retries + 1):
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                return None, "shard_stopped", f"{self.stop_note} before {url[:200]} was fetched"
            try:
                data = self.paced(url)
                problem = image_problem(data, self.policy.max_image_area)
                if problem:
                    return None, problem[0], problem[1]
                return data, "success", None
            except Failure as f:
                if f.status in ("host_given_up", "host_deferred") and last is not None:
                    f = last   # the host's own answer says more than the limits' verdict
                if f.status not in RETRY_NOW or attempt == self.policy.retries or f is last:
                    return None, f.status, str(f)
                last = f
                if self.limits is None or not self.limits.limited(host_of(url)):
                    # (a limited host's slots and back-off space its tries themselves)
                    time.sleep(min(10.0, f.retry_after if f.retry_after is not None
                                   else 0.25 * 2 ** attempt))
            except Exception as e:  # one odd URL must not take its shard down
                return None, "failed", f"{type(e).__name__}: {e}"
        raise AssertionError("unreachable")

    def paced(self, url: str) -> bytes:
        """get(url) on one of its host's slots; the limits and the observer hear how it went."""
        if self.limits is None and self.observer is None:
            return self.get(url)
        host = host_of(url)
        held = self.limits.acquire(host) if self.limits is not None else None
        status, retry_after = "success", None
        try:
            return self.get(url)
        except Failure as f:
            status, retry_after = f.status, f.retry_after
            raise
        finally:
            if held is not None:
                self.limits.record(host, status, retry_after)
                held.release()
            if self.observer is not None:
                self.observer(host, status)

    def get(self, url: str) -> bytes:
        """The body of `url` after redirects, or a Failure; the whole attempt (every hop,
        connect to last byte) ends within DEADLINE_FACTOR x `policy.timeout`."""
        limit = DEADLINE_FACTOR * self.policy.timeout
        deadline = time.monotonic() + limit
        stopping = self.stop_at is not None and self.stop_at < deadline  # the shard's end comes first
        if stopping:
            deadline = self.stop_at
        seen, first, hop = set(), host_of(url), None
        try:
            for _ in range(MAX_REDIRECTS + 1):
                hop = self._hop(url, first, hop, deadline)
                try:
                    return_or_url = self._hop_request(url, seen, deadline, stopping, limit)
                except Failure as f:  # a redirect target's own answer paces that host too
                    if hop is not None:
                        self.limits.record(hop.host, f.status, f.retry_after)
                    raise
                if isinstance(return_or_url, bytes):
                    if hop is not None:
                        self.limits.record(hop.host, "success")
                    return return_or_url
                url = return_or_url
        finally:
            if hop is not None:
                hop.release()
        raise Failure("redirect_loop", f"more than {MAX_REDIRECTS} redirects")

    def _hop(self, url: str, first: str, held, deadline: float):
        """The limits' slot for a redirect hop to another host than the URL's own
        (hosts.HostLimits.hop), after freeing the previous hop's; None for the URL's host."""
        if held is not None:
            held.release()
        if self.limits is None or host_of(url) == first:
            return None
        return self.limits.hop(host_of(url), time.time() + max(0.0, deadline - time.monotonic()))

    def _hop_request(self, url: str, seen: set, deadline: float, stopping: bool, limit: float):
        """One request of get(): the body (bytes), the URL a redirect leads to, or a Failure."""
        if url in seen:
            raise Failure("redirect_loop", f"redirect loop: {url} was already visited")
        seen.add(url)
        parts, port = url_parts(url)
        try:
            resp, conn, key = self._request(parts, port, deadline)
            location = resp.getheader("Location") if 300 <= resp.status < 400 else None
            if location:
                self._release(key, conn, resp, drain=True)
                return urljoin(url, location)
            if resp.status >= 300:
                failure = status_failure(resp, url)
                self._release(key, conn, resp, drain=True)
                raise failure
            return self._body(key, conn, resp, url)
        except Failure:
            raise
        except DeadlinePassed:
            if stopping:
                raise Failure("shard_stopped", f"{self.stop_note} while {url[:200]} was "
                              "being fetched") from None
            raise Failure("timeout", f"not received whole within {DEADLINE_FACTOR} x --timeout "
                          f"= {limit:g} s (connect to last byte) from {url[:200]}") from None
        except (TimeoutError, socket.timeout):
            raise Failure("timeout", f"no answer within --timeout {self.policy.timeout:g} s "
                          f"from {url[:200]}") from None
        except ssl.SSLError as e:
            raise Failure("tls_error", f"TLS: {e}") from None
        except http.client.InvalidURL as e:
            raise Failure("bad_url", f"{url[:200]!r}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            raise Failure("connection_error", f"{type(e).__name__}: {e}") from None
        except UnicodeError as e:  # a host name IDNA cannot encode
            raise Failure("bad_url", f"{url[:200]!r}: {e}") from None

    def _connect(self, scheme: str, host: str, port: int):
        p = self.policy
        resolve = getaddrinfo if self.resolver is None else self.resolver.resolve
        return (HTTPS(host, port, p.timeout, p.allow_private_network, self._tls, resolve)
                if scheme == "https" else HTTP(host, port, p.timeout, p.allow_private_network, resolve))

    def _request(self, parts, port: int, deadline: float):
        key = (parts.scheme, parts.hostname, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": self.policy.user_agent, "Accept": "image/*,*/*;q=0.5"}
        with self._lock:
            idle = self._idle.get(key)
            conn = idle.pop() if idle else None
        for reused in ((True, False) if conn is not None else (False,)):
            if not reused:
                conn = self._connect(parts.scheme, parts.hostname, port)
            conn.deadline = deadline
            set_deadline(conn.sock, deadline)
            try:
                conn.request("GET", path, headers=headers)
                return conn.getresponse(), conn, key
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if not reused:
                    raise  # a kept-alive connection the server had closed: one fresh try
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _release(self, key, conn, resp, drain: bool = False) -> None:
        """Keep the connection for the next request if the response was read to its end."""
        if drain and (resp.length or 0) <= _CHUNK:
            try:
                resp.read(_CHUNK)
            except BaseException:
                conn.close()
                raise
        if resp.isclosed() and not resp.will_close:
            with self._lock:
                self._idle.setdefault(key, []).append(conn)
                self._kept.add(conn)
        else:
            conn.close()

    def _body(self, key, conn, resp, url: str) -> bytes:
        p = self.policy
        if p.robots_directives:
            optout = is_opted_out(resp.headers, p.robots_directives)
            if optout:
                self._release(key, conn, resp)
                raise Failure("robots_optout", f"X-Robots-Tag: {optout} from {url[:200]}")
        if resp.length is not None and resp.length > p.max_image_bytes:
            self._release(key, conn, resp)
            raise Failure("too_large", f"{resp.length:,} bytes announced, above "
                          f"--max-image-bytes {p.max_image_bytes:,}")
        chunks, size = [], 0
        while True:   # each read ends by the attempt's deadline (the socket enforces it)
            try:
                chunk = resp.read(_CHUNK)
            except BaseException:
                conn.close()   # half-read: the connection cannot serve another request
                raise
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > p.max_image_bytes:
                self._release(key, conn, resp)
                raise Failure("too_large", f"more than --max-image-bytes {p.max_image_bytes:,} bytes")
        self._release(key, conn, resp)
        return b"".join(chunks)
