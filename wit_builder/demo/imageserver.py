"""A real HTTP image server on 127.0.0.1 whose images are a function of the URL path.

Every image is drawn with Pillow on request from a *scene* written in the path
(`/img/3-red-circle-striped-sky-17.jpg`: three red striped circles against the sky,
layout seed 17), so nothing is stored on disk and any process can predict the bytes
a URL serves. Other routes misbehave on purpose (404/500/429, slow, truncated, HTML,
1x1, decompression bomb, redirect loop, X-Robots-Tag opt-out); they wrap another
path, so they compose: `/slow/2/mirror/a/img/1-blue-star-plain-white-5.png`.
docs/world.md lists the routes. The scenes are drawn by wit_builder/demo/drawing.py;
wit_builder/demo/replyserver.py sends the replies, slowly when a route says so.

    with serve() as srv:                     # background thread, random free port
        urllib.request.urlopen(srv.url("/img/1-red-circle-plain-white-0.jpg"))
        srv.hits("/img/1-red-circle-plain-white-0.jpg")   # -> 1

`python -m wit_builder.demo.imageserver --port P [--root DIR] [--port-file F]` serves the
same routes from a process of its own (its counts are at `/_stats`).
"""
from __future__ import annotations

import argparse
import functools
import json
import mimetypes
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wit_builder.demo.drawing import DEFAULT_PX, FORMATS, Scene, draw_scene, encode
from wit_builder.demo.replyserver import DRIPS, Reply, ReplyServer

MAX_PX = 1024
MAX_SLOW = 30.0          # seconds: the slow route never sleeps longer than this
MAX_BOMB_PIXELS = 40_000 ** 2
IMG_NAME = re.compile(r"^(?P<spec>[a-z0-9_-]+?)(?:@(?P<px>\d+)?(?:q(?P<q>\d+))?)?"
                      r"\.(?P<ext>jpg|jpeg|png|webp)$")


@functools.lru_cache(maxsize=4096)
def render(spec: str, px: int = DEFAULT_PX, quality: int | None = None, ext: str = "jpg") -> bytes:
    """The bytes `/img/<spec>@<px>q<quality>.<ext>` serves (cached)."""
    return encode(draw_scene(Scene.parse(spec), px), ext, quality)


@functools.lru_cache(maxsize=4)
def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit grayscale PNG of width x height zero pixels: ~100 KB on the wire,
    ~1 GB of pixels once decoded (Pillow refuses it with DecompressionBombError)."""
    row = b"\0" * (1 + (width + 7) // 8)
    comp, parts, block = zlib.compressobj(9), [], 256
    for start in range(0, height, block):
        parts.append(comp.compress(row * min(block, height - start)))
    parts.append(comp.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head>"
             b"<body><h1>Sorry</h1><p>This page is not an image.</p></body></html>\n")


@dataclass(frozen=True)
class _Site:
    """What a server serves besides its drawings: a folder under /files/, a robots.txt."""
    root: Path | None = None
    robots: str | int | None = None


def _route(path: str, hit: int, site: _Site) -> Reply:
    """The reply for `path` (already URL-decoded); `hit` is how often it was asked for."""
    parts = path.lstrip("/").split("/", 2)
    head = parts[0]
    rest = "/" + "/".join(parts[1:])
    if path == "/robots.txt" and site.robots is not None:   # the server's robots.txt, if given
        if isinstance(site.robots, int):
            return Reply(site.robots, f"status {site.robots}\n".encode(), "text/plain")
        return Reply(200, site.robots.encode(), "text/plain")
    if head == "img" and len(parts) == 2:
        m = IMG_NAME.match(parts[1])
        if not m:
            return Reply(404, b"no such image\n", "text/plain")
        px = int(m["px"]) if m["px"] else DEFAULT_PX
        quality = int(m["q"]) if m["q"] else None
        if not 1 <= px <= MAX_PX or (quality is not None and not 1 <= quality <= 100):
            return Reply(400, b"size or quality out of range\n", "text/plain")
        try:
            body = render(m["spec"], px, quality, m["ext"])
        except ValueError as e:
            return Reply(404, f"{e}\n".encode(), "text/plain")
        return Reply(200, body, FORMATS[m["ext"]][1])
    if len(parts) < 2:
        if head == "health":
            return Reply(200, b"ok\n", "text/plain")
        return Reply(404, b"not found\n", "text/plain")
    arg, inner = parts[1], "/" + (parts[2] if len(parts) > 2 else "")
    if head == "mirror":            # /mirror/<tag>/<path>: the same bytes under another URL
        return _route(inner, hit, site)
    if head == "slow":              # /slow/<seconds>/<path>
        reply = _route(inner, hit, site)
        reply.delay = min(float(arg), MAX_SLOW)
        return reply
    if head == "drip":              # /drip/<body|headers|continue>/<path>: a byte (a line) every 0.1 s
        if arg not in DRIPS:
            return Reply(400, b"want /drip/body|headers|continue/<path>\n", "text/plain")
        reply = _route(inner, hit, site)
        reply.drip = arg
        return reply
    if head == "status":            # /status/<code>/<anything>
        code = int(arg) if arg.isdigit() and 400 <= int(arg) <= 599 else 400
        headers = (("Retry-After", "1"),) if code in (429, 503) else ()
        return Reply(code, f"status {code}\n".encode(), "text/plain", headers)
    if head == "pause":             # /pause/<seconds>/<anything>: 429 with Retry-After: <seconds>
        wait = str(min(int(arg), 600)) if arg.isdigit() else "1"
        return Reply(429, b"slow down\n", "text/plain", (("Retry-After", wait),))
    if head == "flaky":             # /flaky/<n>/<path>: 429 for the first n requests, then the path
        if hit <= int(arg):
            return Reply(429, b"slow down\n", "text/plain", (("Retry-After", "1"),))
        return _route(inner, hit, site)
    if head == "redirect":          # /redirect/<path>: 302 to /<path>
        return Reply(302, b"", "text/plain", (("Location", rest),))
    if head == "away":              # /away/<host:port>/<path>: 302 to http://<host:port>/<path>
        return Reply(302, b"", "text/plain", (("Location", f"http://{arg}{inner}"),))
    if head == "loop":              # /loop/<tag>/a <-> /loop/<tag>/b forever
        other = "b" if inner == "/a" else "a"
        return Reply(302, b"", "text/plain", (("Location", f"/loop/{arg}/{other}"),))
    if head == "robots":            # /robots/<directives>/<path>: adds X-Robots-Tag
        reply = _route(inner, hit, site)
        reply.headers += (("X-Robots-Tag", arg),)
        return reply
    if head == "truncated":         # /truncated/<path>: the first half of the bytes
        reply = _route(rest, hit, site)
        reply.body = reply.body[:len(reply.body) // 2]
        return reply
    if head == "html-as-image":     # an HTML page labelled image/jpeg
        return Reply(200, HTML_PAGE, "image/jpeg")
    if head == "html":
        return Reply(200, HTML_PAGE, "text/html; charset=utf-8")
    if head == "bomb":              # /bomb/<w>x<h>/<name>.png
        m = re.fullmatch(r"(\d+)x(\d+)", arg)
        if not m or int(m[1]) * int(m[2]) > MAX_BOMB_PIXELS:
            return Reply(400, b"want /bomb/<w>x<h>/<name>.png, at most 40000x40000\n", "text/plain")
        return Reply(200, bomb_png(int(m[1]), int(m[2])), "image/png")
    if head == "files" and site.root is not None:
        f = (site.root / rest.lstrip("/")).resolve()
        if f.is_file() and f.is_relative_to(site.root):
            return Reply(200, f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream")
    return Reply(404, b"not found\n", "text/plain")


class Server(ReplyServer):
    """A running image server. Use as a context manager or call `stop()`."""

    def __init__(self, port: int = 0, root: str | Path | None = None, verbose: bool = False,
                 host: str = "127.0.0.1", robots: str | int | None = None):
        site = _Site(Path(root).resolve() if root else None, robots)
        super().__init__(functools.partial(_route, site=site), port, verbose, host)


def serve(port: int = 0, root: str | Path | None = None, verbose: bool = False,
          host: str = "127.0.0.1", robots: str | int | None = None) -> Server:
    """Start a server on `host`:`port` (a loopback address; port 0: a free one) in a
    background thread.

    `root`, if given, is served read-only under `/files/`; `robots` is its /robots.txt
    (text, or an HTTP status to answer with; None: 404). The returned Server is a
    context manager: `with serve() as srv: ...` stops it on exit.
    """
    return Server(port, root, verbose, host, robots)


class ServerProcess:
    """An image server in a process of its own (`python -m wit_builder.demo.imageserver`)."""

    def __init__(self, port: int = 0, root: str | Path | None = None, timeout: float = 20.0):
        import tempfile
        self._dir = tempfile.TemporaryDirectory(prefix="imageserver-")
        port_file = Path(self._dir.name) / "port"
        cmd = [sys.executable, "-m", "wit_builder.demo.imageserver", "--port", str(port), "--port-file", str(port_file)]
        if root:
            cmd += ["--root", str(root)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"image server process did not start: {cmd}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.base_url = f"http://127.0.0.1:{self.port}"

    url = Server.url

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.base_url + "/_stats", timeout=10) as r:
            return json.loads(r.read())

    def hits(self, path_or_url: str) -> int:
        path = unquote(urlsplit(path_or_url).path) if "://" in path_or_url else path_or_url
        return self.counts().get(path, 0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wit_builder.demo.imageserver", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--root", help="directory served read-only under /files/")
    p.add_argument("--port-file", help="write the port here once listening")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    srv = serve(args.port, args.root, args.verbose)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(srv.port))
        tmp.replace(args.port_file)
    print(f"serving {srv.base_url}", flush=True)
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
