"""Guarded, polite HTTP for the fetch stage: one image URL in, bytes or a status out.

img2dataset fetches with a bare `urllib.request.urlopen`: a new connection per image,
redirects followed to any address, no size limit, every failure retried alike. Fetch
hands img2dataset's downloader `Fetcher.fetch` instead, which

- connects only to addresses it has checked (every redirect hop, at connect time, so
  a DNS answer cannot change between the check and the connection): loopback,
  private, link-local, multicast and reserved addresses are `blocked_address` unless
  the network policy allows private networks;
- resolves each host through a shared `hosts.Resolver` (once per shard; `dns_error`)
  and keeps a shared pool of keep-alive connections per host (no more than the host's
  connection budget when `hosts.HostLimits` are given);
- sends a user agent naming the project and honours X-Robots-Tag opt-outs;
- gives every attempt a hard wall-clock deadline, connect to last byte, headers and
  redirects included, enforced before every socket read and write (a server that drips
  its body, its headers or endless `100 Continue` lines cannot hold a thread longer);
- caps the response size and the image area (read from the header, before anything
  is decoded), and recognises truncated JPEG/PNG files;
- retries only transient failures (timeouts, connection errors, 429, 5xx), with backoff.
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from .errors import Failure  # noqa: F401 (netguard.Failure: where fetch's callers look)
from .hosts import host_of

DEFAULT_USER_AGENT = ("wit-build/0.1 (CLIP-style image-text dataset builder; "
                      "honours X-Robots-Tag noai/noimageai; uses img2dataset)")
# X-Robots-Tag directives addressed to these tokens (or to no token) apply to us.
ROBOTS_TOKENS = ("wit", "wit-build", "img2dataset")
# Failures worth trying again later; everything else is a property of the URL.
TRANSIENT = frozenset({"timeout", "connection_error", "rate_limited", "server_error", "shard_failed",
                       "dns_error", "robots_unavailable", "host_given_up", "host_deferred",
                       "shard_stopped"})
# Of those, what is worth trying again within the same shard (a DNS failure is cached
# for the shard, a given-up host stays given up).
RETRY_NOW = frozenset({"timeout", "connection_error", "rate_limited", "server_error"})
MAX_REDIRECTS = 10
# One attempt (connect, request, headers, body, every redirect hop) ends after this many
# times --timeout, however steadily a server drips; each single wait is --timeout.
DEADLINE_FACTOR = 2
# Space, control characters and DEL: never valid in a URL, and http.client refuses them.
_BAD_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")
_TOKEN = re.compile(r"[a-z0-9._-]+")
_VALUED_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
_CHUNK = 1 << 16
_PNG_END = b"IEND\xaeB`\x82"


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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """(form, IPv4 address) an IPv6 address carries inside it: IPv4-mapped (::ffff:a.b.c.d),
    6to4 (2002:aabb:ccdd::/48) or NAT64 (64:ff9b::a.b.c.d); None for any other address."""
    if addr.ipv4_mapped is not None:
        return "IPv4-mapped", addr.ipv4_mapped
    if addr.sixtofour is not None:
        return "6to4", addr.sixtofour
    if addr in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_problem(ip: str) -> str | None:
    """Why fetch must not connect to `ip` ("loopback", "private", ...), or None if public.

    An IPv6 form that carries an IPv4 address (mapped, 6to4, NAT64) is judged by that
    address ("loopback (6to4 of 127.0.0.1)"); deprecated site-local fec0::/10 is refused.
    """
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None:
            problem = address_problem(str(inner[1]))
            if problem is None or inner[0] == "IPv4-mapped":
                return problem
            return f"{problem} ({inner[0]} of {inner[1]})"
        if addr.is_site_local:
            return "site-local"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private"):
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if addr.is_global else "non-global"


class DeadlinePassed(TimeoutError):
    """An attempt ran past its wall-clock deadline (raised from a socket read or write)."""


class _Deadline:
    """Socket mixin: before every read and write, the timeout becomes the smaller of the
    per-wait timeout (`step`) and what is left until `deadline` (None: no deadline).

    http.client reads headers and body through `recv_into` one buffer at a time, so a
    server that keeps sending a little (a byte every 0.1 s, endless `100 Continue`
    lines) meets the deadline inside the read that crosses it, not after it."""
    deadline: float | None = None
    step: float | None = None

    def _arm(self) -> bool:
        """Set the timeout for the next wait; True if the deadline (not `step`) bounds it."""
        if self.deadline is None:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("deadline passed")
        super().settimeout(left if self.step is None else min(self.step, left))
        return self.step is None or left <= self.step

    def _wait(self, op, *a, **k):
        by_deadline = self._arm()
        try:
            return op(*a, **k)
        except TimeoutError:
            if by_deadline:
                raise DeadlinePassed("deadline passed") from None
            raise

    def recv(self, *a, **k):
        return self._wait(super().recv, *a, **k)

    def recv_into(self, *a, **k):
        return self._wait(super().recv_into, *a, **k)

    def send(self, *a, **k):
        return self._wait(super().send, *a, **k)

    def sendall(self, *a, **k):
        return self._wait(super().sendall, *a, **k)


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    def read(self, *a, **k):
        return self._wait(super().read, *a, **k)

    def do_handshake(self, *a, **k):
        return self._wait(super().do_handshake, *a, **k)


def _getaddrinfo(host: str, port: int) -> list:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def guarded_connect(host: str, port: int, timeout: float, allow_private: bool,
                    deadline: float | None = None, resolve=_getaddrinfo) -> socket.socket:
    """A TCP connection to `host`, made only to addresses that passed `address_problem`;
    every later read and write on it ends by `deadline` (time.monotonic()) if given.
    `resolve(host, port)` gives the addresses (getaddrinfo's form): the ones checked
    are the ones connected to."""
    try:
        infos = resolve(host, port)
    except socket.gaierror as e:
        raise Failure("dns_error", f"cannot resolve {host}: {e.strerror or e}") from None
    if not allow_private:
        for *_, sockaddr in infos:
            problem = address_problem(sockaddr[0])
            if problem:
                raise Failure("blocked_address", f"{host} is or resolves to {sockaddr[0]}, a "
                              f"{problem} address (--allow-private-network fetches it)")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = _DeadlineSocket(family, kind, proto)
        sock.step, sock.deadline = timeout, deadline
        left = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if left <= 0:
            sock.close()
            raise DeadlinePassed("deadline passed before connecting")
        sock.settimeout(left)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error or OSError(f"no address for {host}")


def _set_deadline(sock, deadline: float | None) -> None:
    if isinstance(sock, _Deadline):
        sock.deadline = deadline


class _HTTP(http.client.HTTPConnection):
    def __init__(self, host, port, timeout, allow_private, resolve=_getaddrinfo):
        super().__init__(host, port, timeout=timeout)
        self.allow_private = allow_private
        self.resolve = resolve
        self.deadline: float | None = None

    def connect(self):
        self.sock = guarded_connect(self.host, self.port, self.timeout, self.allow_private,
                                    self.deadline, self.resolve)


class _HTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, timeout, allow_private, context, resolve=_getaddrinfo):
        super().__init__(host, port, timeout=timeout, context=context)
        self.allow_private = allow_private
        self.resolve = resolve
        self.tls = context
        self.deadline: float | None = None

    def connect(self):
        sock = guarded_connect(self.host, self.port, self.timeout, self.allow_private,
                               self.deadline, self.resolve)
        sock.deadline = None   # the TLS socket below takes over the deadline
        tls = self.tls.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        tls.step, tls.deadline = self.timeout, self.deadline
        tls.do_handshake()
        self.sock = tls


def is_opted_out(headers: http.client.HTTPMessage, directives: frozenset[str]) -> str | None:
    """The X-Robots-Tag value that forbids use by us, or None.

    A value is `[token:] directive, directive...`; one addressed to another crawler's
    token does not apply. Directives that take a value (`max-snippet: 20`) are no token.
    """
    for value in headers.get_all("X-Robots-Tag") or []:
        head, colon, rest = value.partition(":")
        head = head.strip().lower()
        if colon and _TOKEN.fullmatch(head) and head not in _VALUED_DIRECTIVES:
            if head not in ROBOTS_TOKENS:
                continue
            value = rest
        if any(d.split(":")[0].strip().lower() in directives for d in value.split(",")):
            return value.strip()
    return None


def image_problem(data: bytes, max_area: int) -> tuple[str, str] | None:
    """(status, message) if `data` is no image fetch accepts, read from headers only."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            (width, height), fmt = im.size, im.format
    except Image.DecompressionBombError as e:
        return "too_large", f"decompression bomb, not decoded: {e}"
    except Exception:  # UnidentifiedImageError, or a plugin choking on a malformed header
        return "not_an_image", f"not an image ({len(data):,} bytes starting {data[:24]!r})"
    if width * height > max_area:
        return "too_large", (f"image is {width}x{height} = {width * height:,} pixels, above "
                             f"--max-image-area {max_area:,} (not decoded)")
    if (fmt == "JPEG" and not _jpeg_complete(data)) or (fmt == "PNG" and data.rfind(_PNG_END) < 0):
        return "truncated", f"{fmt} data ends before the end of the image ({len(data):,} bytes)"
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True if an end-of-image marker follows the first scan (markers cannot occur inside
    entropy-coded data, and an EXIF thumbnail's EOI sits before the first scan)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
        elif marker == 0xD9:
            return True
        else:
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker == 0xDA:
                return data.find(b"\xff\xd9", i + 2 + length) >= 0
            i += 2 + length
    return False


def _status_failure(resp: http.client.HTTPResponse, url: str) -> Failure:
    code, reason = resp.status, resp.reason
    msg = f"HTTP {code} {reason} from {url}"
    if code in (404, 410):
        return Failure("not_found", msg)
    if code == 429:
        retry_after = resp.getheader("Retry-After", "")
        return Failure("rate_limited", msg, float(retry_after) if retry_after.isdigit() else None)
    if code == 408:
        return Failure("timeout", msg)
    if code >= 500:
        return Failure("server_error", msg)
    return Failure("http_error", msg)


class Fetcher:
    """Fetch image bytes under a `Policy`; thread-safe. Connections are kept alive in a
    pool per host shared by the threads. `resolver` (a hosts.Resolver) answers DNS for
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
        self._tls = ssl.create_default_context()
        self._tls.sslsocket_class = _DeadlineSSLSocket

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
                data = self._limited(url)
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

    def _limited(self, url: str) -> bytes:
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
        seen = set()
        for _ in range(MAX_REDIRECTS + 1):
            if url in seen:
                raise Failure("redirect_loop", f"redirect loop: {url} was already visited")
            seen.add(url)
            bad = _BAD_URL_CHAR.search(url)
            if bad:
                raise Failure("bad_url", f"{url[:200]!r}: a URL cannot hold {bad.group()!r} "
                              f"(a space or control character; percent-encode it, e.g. %20)")
            try:
                parts = urlsplit(url)
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError as e:
                raise Failure("bad_url", f"{url[:200]!r}: {e}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Failure("bad_url", f"{url[:200]!r}: only http(s) URLs with a host are fetched")
            try:
                resp, conn, key = self._request(parts, port, deadline)
                location = resp.getheader("Location") if 300 <= resp.status < 400 else None
                if location:
                    self._release(key, conn, resp, drain=True)
                    url = urljoin(url, location)
                    continue
                if resp.status >= 300:
                    failure = _status_failure(resp, url)
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
        raise Failure("redirect_loop", f"more than {MAX_REDIRECTS} redirects")

    def _connect(self, scheme: str, host: str, port: int):
        p = self.policy
        resolve = _getaddrinfo if self.resolver is None else self.resolver.resolve
        return (_HTTPS(host, port, p.timeout, p.allow_private_network, self._tls, resolve)
                if scheme == "https" else _HTTP(host, port, p.timeout, p.allow_private_network, resolve))

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
            _set_deadline(conn.sock, deadline)
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
