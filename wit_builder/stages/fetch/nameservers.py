"""DNS for the fetch stage: a shard's shared cache, and asking name servers directly.

`Resolver` resolves each host once per shard and shares the answer (and a failure)
among the shard's threads for `--dns-cache-ttl` seconds; netguard's address guard
checks the very addresses it returns, and the connection is made to them.

`DirectLookup` is there because the system resolver (getaddrinfo) does not say how
long an answer may be kept: fetch therefore asks the name servers itself (dnspython): those of /etc/resolv.conf by
default, or `--dns-server ADDR[:PORT]`. A name in /etc/hosts, an address literal and
`localhost` are answered as the system would, without a query; `--dns-server system`
(or a machine without /etc/resolv.conf) uses getaddrinfo for every name.

A lookup returns what `socket.getaddrinfo(host, port, type=SOCK_STREAM)` would (A
records first, then AAAA) and the seconds the answer may be kept, or raises
socket.gaierror: EAI_NONAME for a name that does not exist or has no address,
EAI_AGAIN when no server answered.
"""

import ipaddress
import socket
import threading
import time

from wit_builder.errors import WitError

SYSTEM = "system"


def parse_servers(entries: list[str], flag: str = "--dns-server") -> list[tuple[str, int]] | None:
    """[(address, port)] from ADDR, ADDR:PORT or [V6]:PORT entries; None for
    "system" (getaddrinfo); [] for none given (the servers of /etc/resolv.conf)."""
    if any(e.strip().lower() == SYSTEM for e in entries):
        if len(entries) > 1:
            raise WitError(f"{flag} {SYSTEM} cannot be combined with servers")
        return None
    out = []
    for entry in entries:
        text = entry.strip()
        host, port = text, 53
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else (rest or 53)
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            ipaddress.ip_address(host)
            port = int(port)
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise WitError(f"{flag} {entry!r}: give a server's address, e.g. 10.0.0.2, "
                           f"10.0.0.2:5353 or [2001:db8::53]:53, or {SYSTEM}") from None
        out.append((host, port))
    return out


def hosts_file(path: str = "/etc/hosts") -> dict[str, list[str]]:
    """/etc/hosts as {lower-case name: [addresses]} (empty where it cannot be read)."""
    names: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            names.setdefault(name.lower(), []).append(fields[0])
    return names


class DirectLookup:
    """A and AAAA queries to `servers` (None: those of /etc/resolv.conf), each
    within `timeout` seconds in all."""

    def __init__(self, servers: list[tuple[str, int]], timeout: float = 5.0,
                 hosts: dict[str, list[str]] | None = None):
        import dns.nameserver
        import dns.resolver
        if servers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
        else:
            self._resolver = dns.resolver.Resolver()  # raises where resolv.conf is missing
        self._resolver.lifetime = self.timeout = timeout
        self._resolver.cache = None
        self.hosts = hosts_file() if hosts is None else hosts

    def lookup(self, host: str, port: int) -> tuple[list, float | None]:
        """(getaddrinfo-like answer, seconds it may be kept: None = the caller's default)."""
        name = host.strip("[]").lower().rstrip(".")
        if name in self.hosts or name == "localhost" or _literal(name):
            return socket.getaddrinfo(self.hosts.get(name, [name])[0], port,
                                      type=socket.SOCK_STREAM), None
        import dns.exception
        import dns.resolver
        answer, ttls = [], []
        deadline = time.monotonic() + self.timeout
        for rdtype, family in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                got = self._resolver.resolve(name + ".", rdtype, raise_on_no_answer=False,
                                             search=False,
                                             lifetime=max(0.1, deadline - time.monotonic()))
            except dns.resolver.NXDOMAIN:
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such name (NXDOMAIN)") from None
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
                raise socket.gaierror(socket.EAI_AGAIN, f"{host}: no DNS server answered ({e})") from None
            except dns.exception.DNSException as e:
                raise socket.gaierror(socket.EAI_FAIL, f"{host}: {e}") from None
            if got.rrset is None:
                continue
            ttls.append(max(0.0, got.expiration - time.time()))
            for r in got.rrset:
                addr = (r.address, port) if family == socket.AF_INET else (r.address, port, 0, 0)
                answer.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr))
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: the name has no address records")
        return answer, min(ttls)


def _literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def direct(servers: list[tuple[str, int]] | None, timeout: float) -> DirectLookup | None:
    """The direct lookup for fetch's --dns-server setting, or None for getaddrinfo
    (`system`, or no /etc/resolv.conf to read the servers from)."""
    if servers is None:
        return None
    import dns.resolver
    try:
        return DirectLookup(servers, timeout)
    except (dns.resolver.NoResolverConfiguration, OSError):  # no resolv.conf, or no server in it
        return None


class Resolver:
    """One lookup per host for a shard's threads, answers and failures cached.

    With `direct` (nameservers.DirectLookup) the name servers are asked and an answer
    lives its own TTL, at most `ttl` seconds and at least 1; without, getaddrinfo
    answers, which tells no TTL, and an answer lives `ttl` seconds. A failure lives
    `negative_ttl`. `overrides` maps host names to
    addresses (`--resolve NAME=ADDR`, as curl's): those are never looked up; with
    `only_overrides` no other name is looked up either (it fails as unknown).
    """

    def __init__(self, ttl: float = 300.0, negative_ttl: float = 60.0,
                 overrides: dict[str, str] | None = None, only_overrides: bool = False,
                 direct=None):
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.direct = direct
        self.overrides = {k.lower(): v for k, v in (overrides or {}).items()}
        self.only_overrides = only_overrides
        self._cache: dict[tuple[str, int], tuple[float, object]] = {}
        self._pending: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self.lookups = 0       # distinct resolutions made (not cache hits)
        self.failures = 0      # of which failed
        self.failed_hosts: set[str] = set()

    def resolve(self, host: str, port: int) -> list:
        """getaddrinfo's answer for (host, port), from the cache when fresh; raises
        socket.gaierror (cached too) when the name does not resolve."""
        key = (host.lower(), port)
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[0] > time.monotonic():
                    answer = hit[1]
                    break
                waiting = self._pending.get(key)
                if waiting is None:
                    self._pending[key] = threading.Event()
                    answer = None
                    break
            waiting.wait(60)   # another thread is resolving this host: share its answer
        if answer is None:
            answer = self._lookup(key)
        if isinstance(answer, socket.gaierror):
            raise answer
        return answer  # type: ignore[return-value]

    def _lookup(self, key: tuple[str, int]):
        host, port = key
        try:
            if host in self.overrides or self.only_overrides:
                # numeric only: never a DNS query (an unlisted name fails here, EAI_NONAME)
                answer = socket.getaddrinfo(self.overrides.get(host, host.strip("[]")), port,
                                            type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
                ttl = self.ttl
            elif self.direct is not None:
                answer, own = self.direct.lookup(host, port)
                ttl = self.ttl if own is None else min(self.ttl, max(1.0, own))
            else:
                answer = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                ttl = self.ttl
        except socket.gaierror as e:
            answer, ttl = e, self.negative_ttl
        except BaseException:  # not a DNS answer (a name IDNA cannot encode): let waiters retry
            with self._lock:
                self._pending.pop(key).set()
            raise
        with self._lock:
            self.lookups += 1
            if isinstance(answer, socket.gaierror):
                self.failures += 1
                self.failed_hosts.add(host)
            self._cache[key] = (time.monotonic() + ttl, answer)
            self._pending.pop(key).set()
        return answer


def parse_overrides(entries: list[str], flag: str = "--resolve") -> dict[str, str]:
    """`NAME=ADDR` entries -> {name: addr}; the address must be an IP address."""
    out = {}
    for e in entries:
        name, eq, addr = e.partition("=")
        try:
            ipaddress.ip_address(addr.strip())
        except ValueError:
            raise WitError(f"{flag} {e!r}: give NAME=ADDRESS, e.g. images.test=127.0.0.2") from None
        if not eq or not name.strip():
            raise WitError(f"{flag} {e!r}: give NAME=ADDRESS, e.g. images.test=127.0.0.2")
        out[name.strip().lower()] = addr.strip()
    return out


def resolver(polite: dict) -> Resolver:
    """The DNS cache a shard (or a robots.txt task) shares among its threads."""
    lookup = None if polite["resolve_only"] else direct(polite["dns_server"], polite["dns_timeout"])
    return Resolver(polite["dns_cache_ttl"], overrides=polite["resolve"],
                    only_overrides=polite["resolve_only"], direct=lookup)
