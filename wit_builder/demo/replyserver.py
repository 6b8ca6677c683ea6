"""The HTTP side of the demo's image server: a threaded server on a loopback address
that sends the `Reply` a route function picks for each path, counting every request.

A reply may be held back (`delay`) or sent a byte (or a line) at a time (`drip`), so
the routes in wit_builder/demo/imageserver.py can misbehave the way slow and stalling web
servers do; a stop cuts both short. The counts, the request log and how long each
client of a drip stayed are read from the `ReplyServer`, or from another process at
`/_stats` (not counted).
"""
from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

DRIP_EVERY = 0.1         # seconds between the bytes (or lines) a drip route sends
MAX_DRIP = 120.0         # seconds: a drip route gives up on its client after this
DRIPS = ("body", "headers", "continue")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    ctype: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    drip: str | None = None     # "body", "headers" or "continue": sent a little at a time


# path (URL-decoded), how often it was asked for -> what to send
Route = Callable[[str, int], Reply]


class _State:
    """What the handler threads share: the route, the counts and the stop signal."""

    def __init__(self, route: Route):
        self.route = route
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, float, str]] = []   # (start, end, path) of every request
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.held: dict[str, list[float]] = {}   # drip path -> seconds until each client left

    def count(self, path: str) -> int:
        with self.lock:
            self.counts[path] += 1
            return self.counts[path]


class _Handler(BaseHTTPRequestHandler):
    server_version = "wit-imageserver/1"
    timeout = 10  # an idle client cannot hold a handler thread (and stop()) for longer

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._respond(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._respond(send_body=False)

    def _respond(self, send_body: bool):
        state: _State = self.server.state  # type: ignore[attr-defined]
        start = time.time()
        try:
            self._reply(state, send_body)
        finally:
            with state.lock:
                state.log.append((start, time.time(), unquote(urlsplit(self.path).path)))

    def _reply(self, state: "_State", send_body: bool):
        path = unquote(urlsplit(self.path).path)
        if path == "/_stats":      # not counted: lets another process read the counts
            with state.lock:
                body = json.dumps(dict(state.counts)).encode()
            reply = Reply(200, body, "application/json")
        else:
            try:
                reply = state.route(path, state.count(path))
            except ValueError as e:  # e.g. /slow/abc/...: a malformed number in the path
                reply = Reply(400, f"bad path: {e}\n".encode(), "text/plain")
        if reply.delay and state.stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.drip and send_body:
            self.close_connection = True
            self._drip(state, path, reply)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.ctype)
        self.send_header("Content-Length", str(len(reply.body)))
        for k, v in reply.headers:
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(reply.body)

    def _drip(self, state: _State, path: str, reply: Reply) -> None:
        """Send `reply` a byte (or a `100 Continue` line) every DRIP_EVERY s until the client
        hangs up (its time is recorded in state.held), MAX_DRIP passes or the server stops."""
        start = time.monotonic()
        head = (f"HTTP/1.0 {reply.status} OK\r\nContent-Type: {reply.ctype}\r\n"
                f"Content-Length: {len(reply.body)}\r\n\r\n").encode()
        if reply.drip == "body":
            first, steps = head, (reply.body[i:i + 1] for i in range(len(reply.body)))
        elif reply.drip == "headers":
            first, steps = head[:head.index(b"\r\n") + 2] + b"X-Drip: ", iter(lambda: b"z", None)
        else:
            first, steps = b"", iter(lambda: b"HTTP/1.1 100 Continue\r\n\r\n", None)
        try:
            self.wfile.write(first)
            for step in steps:
                if state.stopping.wait(DRIP_EVERY) or time.monotonic() - start > MAX_DRIP:
                    return
                self.wfile.write(step)
        except OSError:   # the client hung up: how long it stayed is what tests measure
            with state.lock:
                state.held.setdefault(path, []).append(time.monotonic() - start)

    def log_message(self, format, *args):  # noqa: A002 - quiet unless asked
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True   # server_close() joins every handler thread
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gave up (its timeout) is expected here, not an error to print.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class ReplyServer:
    """A running server that answers each path with `route(path, hit)`. Use as a
    context manager or call `stop()`."""

    def __init__(self, route: Route, port: int = 0, verbose: bool = False, host: str = "127.0.0.1"):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host}: the image server listens on loopback addresses only")
        self._state = _State(route)
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.state = self._state  # type: ignore[attr-defined]
        self._httpd.verbose = verbose    # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"imageserver-{self.port}", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """Absolute URL of a server path (`/img/...`)."""
        return self.base_url + ("" if path.startswith("/") else "/") + path

    def hits(self, path_or_url: str) -> int:
        """How many requests this path (or URL of this server) has received."""
        path = unquote(urlsplit(path_or_url).path) if "://" in path_or_url else path_or_url
        with self._state.lock:
            return self._state.counts[path]

    def held(self, path_or_url: str) -> list[float]:
        """Seconds each client of a `/drip/...` path stayed before hanging up."""
        path = unquote(urlsplit(path_or_url).path) if "://" in path_or_url else path_or_url
        with self._state.lock:
            return list(self._state.held.get(path, []))

    def requests(self) -> list[tuple[float, float, str]]:
        """(start, end, path) of every request so far: wall-clock seconds from the request
        line read to the reply sent."""
        with self._state.lock:
            return list(self._state.log)

    def counts(self) -> dict[str, int]:
        """Requests per path so far."""
        with self._state.lock:
            return dict(self._state.counts)

    @property
    def total_hits(self) -> int:
        with self._state.lock:
            return sum(self._state.counts.values())

    def reset_counts(self) -> None:
        with self._state.lock:
            self._state.counts.clear()

    def stop(self) -> None:
        """Stop serving, cut slow replies short and join every thread. Idempotent."""
        self._state.stopping.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
            self._httpd.server_close()

    def __enter__(self) -> "ReplyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

