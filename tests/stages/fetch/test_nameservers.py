"""Fetch asks DNS servers itself, so each answer is kept for its own TTL.

A real DNS server on loopback (UDP, answers built with dnspython) maps test names to
127.0.0.x addresses with chosen TTLs and logs every query.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter

import pytest

from tests.stages.fetch.test_polite import SCENE, fast, hosts, statuses, url
from tests.support.fetch import write_selected
from wit_builder.errors import WitError
from wit_builder.stages.fetch import fetch, nameservers
from wit_builder.stages.fetch.nameservers import Resolver


@contextlib.contextmanager
def dns_server(records: dict[str, tuple[str, int]], answer: bool = True):
    """A DNS server on 127.0.0.1: records maps a name to (address, ttl); an unknown
    name is NXDOMAIN. With answer=False it reads queries and never replies. Yields
    (port, Counter of (name, type) queried)."""
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    asked: Counter = Counter()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(wire)
            q = query.question[0]
            name, rdtype = q.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(q.rdtype)
            asked[(name, rdtype)] += 1
            if not answer:
                continue
            reply = dns.message.make_response(query)
            if name not in records:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                addr, ttl = records[name]
                family = "AAAA" if ":" in addr else "A"
                if family == rdtype:
                    reply.answer.append(dns.rrset.from_text(q.name, ttl, "IN", rdtype, addr))
            sock.sendto(reply.to_wire(), peer)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    try:
        yield sock.getsockname()[1], asked
    finally:
        stop.set()
        worker.join(5)
        sock.close()


def test_answers_live_their_own_ttl_and_failures_say_why():
    records = {"short.test": ("127.0.0.2", 1), "long.test": ("127.0.0.3", 3600),
               "six.test": ("::1", 600)}
    with dns_server(records) as (port, asked):
        lookup = nameservers.DirectLookup([("127.0.0.1", port)], timeout=2.0,
                                          hosts={"pinned.test": ["127.0.0.9"]})
        res = Resolver(ttl=300.0, direct=lookup)
        assert res.resolve("short.test", 80)[0][4] == ("127.0.0.2", 80)
        assert res.resolve("long.test", 80)[0][4] == ("127.0.0.3", 80)
        six = res.resolve("six.test", 443)
        assert six[0][0] == socket.AF_INET6 and six[0][4][:2] == ("::1", 443)
        for _ in range(5):  # the shard's other threads: from the cache
            res.resolve("short.test", 80), res.resolve("long.test", 80)
        assert asked[("short.test", "A")] == 1 and asked[("long.test", "A")] == 1
        deadline = time.monotonic() + 10
        while asked[("short.test", "A")] == 1 and time.monotonic() < deadline:
            time.sleep(0.3)
            res.resolve("short.test", 80), res.resolve("long.test", 80)
        assert asked[("short.test", "A")] == 2      # its 1 s TTL ran out: asked again
        assert asked[("long.test", "A")] == 1       # kept (at most --dns-cache-ttl)
        with pytest.raises(socket.gaierror) as e:
            res.resolve("nowhere.test", 80)
        assert e.value.errno == socket.EAI_NONAME and "NXDOMAIN" in str(e.value)
        with pytest.raises(socket.gaierror):
            res.resolve("nowhere.test", 80)         # the failure is cached too
        assert asked[("nowhere.test", "A")] == 1
        # /etc/hosts names, address literals and localhost: answered without a query
        assert res.resolve("pinned.test", 80)[0][4] == ("127.0.0.9", 80)
        assert res.resolve("127.0.0.5", 80)[0][4] == ("127.0.0.5", 80)
        assert not any(name in ("pinned.test", "127.0.0.5") for name, _ in asked)
        assert res.lookups == 7 and res.failures == 1
        assert lookup.lookup("Long.Test.", 80)[0][0][4] == ("127.0.0.3", 80)  # an FQDN, any case
    with dns_server({}, answer=False) as (port, asked):
        lookup = nameservers.DirectLookup([("127.0.0.1", port)], timeout=0.5, hosts={})
        with pytest.raises(socket.gaierror) as e:
            Resolver(direct=lookup).resolve("silent.test", 80)
        assert e.value.errno == socket.EAI_AGAIN and "no DNS server answered" in str(e.value)


def test_dns_server_setting():
    assert nameservers.parse_servers([]) == []
    assert nameservers.parse_servers(["system"]) is None
    assert nameservers.parse_servers(["10.0.0.2", "10.0.0.3:5353", "[2001:db8::53]:53"]) == [
        ("10.0.0.2", 53), ("10.0.0.3", 5353), ("2001:db8::53", 53)]
    for bad in (["dns.example"], ["10.0.0.2:0"], ["10.0.0.2:x"], ["system", "10.0.0.2"]):
        with pytest.raises(WitError, match="--dns-server"):
            nameservers.parse_servers(bad)
    with pytest.raises(WitError, match="--dns-server"):
        fetch.check(fetch.Config(dns_server=["resolver.local"]))


@pytest.mark.slow
def test_fetch_asks_the_dns_server_once_per_host_per_shard(build, ray_cluster):
    """No --resolve: the image servers' names come from a DNS server on loopback; each
    shard asks for each of its hosts once, and every image arrives."""
    with hosts(2) as (named, _), dns_server(
            {name: (f"127.0.0.{2 + i}", 300) for i, (name, _) in enumerate(named)}) as (port, asked):
        urls = [url(name, srv, f"/img/{SCENE.format(i)}.jpg") for name, srv in named for i in range(6)]
        write_selected(build, urls)
        res = fetch.run(fast(resolve_only=False, dns_server=[f"127.0.0.1:{port}"], per_host_rps=0,
                             robots_txt=False, fetch_shard_size=100), build)
    rows = statuses(build)
    assert {rows[u]["status"] for u in urls} == {"success"}
    assert {k: v for k, v in asked.items() if k[1] == "A"} == {("h0.test", "A"): 1, ("h1.test", "A"): 1}
    assert res.summary["dns_lookups"] == 2
