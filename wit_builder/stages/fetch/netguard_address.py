"""The address guard of netguard: which addresses fetch may connect to, and which URLs
it will request at all (http(s) with a host, no space or control character)."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from wit_builder.errors import Failure

# Space, control characters and DEL: never valid in a URL, and http.client refuses them.
_BAD_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")

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



def url_parts(url: str):
    """(urlsplit(url), port) of a URL fetch may request, or a `bad_url` Failure."""
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
    return parts, port
