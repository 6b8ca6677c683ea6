"""A real HTTP image server on 127.0.0.1 whose images are a function of the URL path.

Every image is drawn with Pillow on request from a *scene* written in the path
(`/img/3-red-circle-striped-sky-17.jpg`: three red striped circles against the sky,
layout seed 17), so nothing is stored on disk and any process can predict the bytes
a URL serves. Other routes misbehave on purpose (404/500/429, slow, truncated, HTML,
1x1, decompression bomb, redirect loop, X-Robots-Tag opt-out); they wrap another
path, so they compose: `/slow/2/mirror/a/img/1-blue-star-plain-white-5.png`.
docs/world.md lists the routes.

    with serve() as srv:                     # background thread, random free port
        urllib.request.urlopen(srv.url("/img/1-red-circle-plain-white-0.jpg"))
        srv.hits("/img/1-red-circle-plain-white-0.jpg")   # -> 1

`python -m wit_builder.imageserver --port P [--root DIR] [--port-file F]` serves the
same routes from a process of its own (its counts are at `/_stats`).
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import math
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
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------
# What can be drawn. Ranked lists: the world samples them with Zipf weights in
# this order, so the first entries are the common concepts.

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50),
    "yellow": (245, 210, 20), "black": (20, 20, 20), "white": (245, 245, 245),
    "orange": (245, 130, 20), "purple": (130, 40, 170), "pink": (245, 120, 180),
    "brown": (120, 70, 30),
}
# thing -> its own colour (None: any colour). Multiword names use a space here and
# an underscore in URLs.
THINGS: dict[str, str | None] = {
    "circle": None, "square": None, "star": None, "triangle": None, "heart": None,
    "stop sign": "red", "house": None, "cross": None, "smiley face": "yellow",
    "hexagon": None, "diamond": None, "tree": "green", "ring": None,
    "traffic light": "black", "arrow": None, "flower": None, "crescent": None,
    "pentagon": None, "snowman": "white", "sun": "yellow",
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {  # name -> dominant colour
    "white": (250, 250, 250), "sky": (165, 210, 248), "grass": (70, 150, 60),
    "black": (10, 10, 10), "night": (15, 20, 50), "sand": (225, 200, 150),
    "gray": (128, 128, 128),
}
MAX_COUNT = 5
DEFAULT_PX = 64
DEFAULT_QUALITY = 90
MAX_PX = 1024
MAX_SLOW = 30.0          # seconds: the slow route never sleeps longer than this
DRIP_EVERY = 0.1         # seconds between the bytes (or lines) a drip route sends
MAX_DRIP = 120.0         # seconds: a drip route gives up on its client after this
DRIPS = ("body", "headers", "continue")
MAX_BOMB_PIXELS = 40_000 ** 2
FORMATS = {"jpg": ("JPEG", "image/jpeg"), "jpeg": ("JPEG", "image/jpeg"),
           "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}


@dataclass(frozen=True)
class Scene:
    """`count` things of one colour and texture on a background; `seed` fixes the layout."""
    thing: str
    color: str
    count: int = 1
    texture: str = "plain"
    background: str = "white"
    seed: int = 0

    @property
    def spec(self) -> str:
        """The path form: `count-color-thing-texture-background-seed`."""
        return (f"{self.count}-{self.color}-{self.thing.replace(' ', '_')}-"
                f"{self.texture}-{self.background}-{self.seed}")

    @classmethod
    def parse(cls, spec: str) -> "Scene":
        """Inverse of `spec`; raises ValueError for anything outside the vocabulary."""
        parts = spec.split("-")
        if len(parts) != 6:
            raise ValueError(f"scene {spec!r}: want count-color-thing-texture-background-seed")
        count, color, thing, texture, background, seed = parts
        scene = cls(thing.replace("_", " "), color, int(count), texture, background, int(seed))
        if (scene.thing not in THINGS or color not in COLORS or texture not in TEXTURES
                or background not in BACKGROUNDS or not 1 <= scene.count <= MAX_COUNT
                or scene.seed < 0):
            raise ValueError(f"scene {spec!r}: unknown word or number out of range")
        return scene

    def path(self, ext: str = "jpg", px: int | None = None, quality: int | None = None) -> str:
        """The server path of this scene, e.g. `/img/<spec>@48q30.jpg`."""
        opts = (str(px) if px else "") + (f"q{quality}" if quality else "")
        return f"/img/{self.spec}{'@' + opts if opts else ''}.{ext}"


IMG_NAME = re.compile(r"^(?P<spec>[a-z0-9_-]+?)(?:@(?P<px>\d+)?(?:q(?P<q>\d+))?)?"
                      r"\.(?P<ext>jpg|jpeg|png|webp)$")

# ---------------------------------------------------------------------------
# Drawing. Coordinates are fractions of the canvas so one scene looks the same at
# every size; it is drawn at 2x (at least 64 px) and downsampled for smooth edges.


def _regular(n, cx, cy, r, angle, inner=None):
    k = n * (2 if inner else 1)
    return [(cx + (r if inner is None or i % 2 == 0 else r * inner) * math.cos(a),
             cy + (r if inner is None or i % 2 == 0 else r * inner) * math.sin(a))
            for i, a in ((i, angle - math.pi / 2 + 2 * math.pi * i / k) for i in range(k))]


def _place(pts, cx, cy, r, angle):
    """Unit-shape points -> scaled by r, rotated by angle, moved to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


_HEART = [(16 * math.sin(t) ** 3 / 17,
           -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
          for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
_CROSS = [(-.33, -1), (.33, -1), (.33, -.33), (1, -.33), (1, .33), (.33, .33), (.33, 1),
          (-.33, 1), (-.33, .33), (-1, .33), (-1, -.33), (-.33, -.33)]
_ARROW = [(-1, -.22), (.15, -.22), (.15, -.6), (1, 0), (.15, .6), (.15, .22), (-1, .22)]
_DIAMOND = [(0, -1), (.62, 0), (0, 1), (-.62, 0)]


def _ellipse(d, cx, cy, r, **kw):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), **kw)


def _draw_main(d: ImageDraw.ImageDraw, thing: str, cx, cy, r, angle):
    """Paint (255) the part of one thing that carries the scene's colour on mask `d`."""
    if thing in ("circle", "smiley face"):
        _ellipse(d, cx, cy, r, fill=255)
    elif thing == "ring":
        _ellipse(d, cx, cy, r, fill=255)
        _ellipse(d, cx, cy, r * 0.6, fill=0)
    elif thing == "crescent":
        _ellipse(d, cx, cy, r, fill=255)
        _ellipse(d, cx + .5 * r * math.cos(angle), cy + .5 * r * math.sin(angle), r * .85, fill=0)
    elif thing in ("square", "triangle", "pentagon", "hexagon", "stop sign"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6, "stop sign": 8}[thing]
        tilt = math.pi / 4 if n == 4 else (math.pi / 8 if n == 8 else 0)
        d.polygon(_regular(n, cx, cy, r, angle + tilt), fill=255)
    elif thing == "star":
        d.polygon(_regular(5, cx, cy, r, angle, inner=0.45), fill=255)
    elif thing in ("heart", "cross", "arrow", "diamond"):
        unit = {"heart": _HEART, "cross": _CROSS, "arrow": _ARROW, "diamond": _DIAMOND}[thing]
        d.polygon(_place(unit, cx, cy, r, angle), fill=255)
    elif thing == "traffic light":
        d.rounded_rectangle((cx - .42 * r, cy - r, cx + .42 * r, cy + r), radius=.15 * r, fill=255)
    elif thing == "house":
        d.rectangle((cx - .7 * r, cy - .1 * r, cx + .7 * r, cy + r), fill=255)
    elif thing == "sun":
        _ellipse(d, cx, cy, .6 * r, fill=255)
        for k in range(8):
            a = angle + k * math.pi / 4
            d.line((cx + .72 * r * math.cos(a), cy + .72 * r * math.sin(a),
                    cx + r * math.cos(a), cy + r * math.sin(a)), fill=255, width=max(1, round(.14 * r)))
    elif thing == "snowman":
        _ellipse(d, cx, cy + .45 * r, .55 * r, fill=255)
        _ellipse(d, cx, cy - .5 * r, .4 * r, fill=255)
    elif thing == "tree":
        _ellipse(d, cx, cy - .3 * r, .65 * r, fill=255)
    elif thing == "flower":
        for k in range(6):
            a = angle + k * math.pi / 3
            _ellipse(d, cx + .6 * r * math.cos(a), cy + .6 * r * math.sin(a), .38 * r, fill=255)
    else:  # pragma: no cover - THINGS and this function are kept in step by the tests
        raise ValueError(thing)


def _draw_details(d: ImageDraw.ImageDraw, thing: str, color: str, cx, cy, r, angle):
    """Parts of objects in their own colours, drawn over the main colour."""
    dark = (25, 25, 25)
    if thing == "stop sign":
        pts = _regular(8, cx, cy, .8 * r, angle + math.pi / 8)
        d.line(pts + pts[:1], fill=(250, 250, 250), width=max(1, round(.08 * r)), joint="curve")
    elif thing == "traffic light":
        for dy, c in ((-.6, (230, 20, 20)), (0, (245, 200, 0)), (.6, (20, 200, 60))):
            _ellipse(d, cx, cy + dy * r, .25 * r, fill=c)
    elif thing == "smiley face":
        for dx in (-.35, .35):
            _ellipse(d, cx + dx * r, cy - .3 * r, .12 * r, fill=dark)
        d.arc((cx - .55 * r, cy - .45 * r, cx + .55 * r, cy + .55 * r), 25, 155, fill=dark,
              width=max(1, round(.1 * r)))
    elif thing == "house":
        roof = (60, 60, 60) if color == "brown" else (120, 50, 30)
        d.polygon([(cx - .9 * r, cy - .1 * r), (cx, cy - r), (cx + .9 * r, cy - .1 * r)], fill=roof)
        d.rectangle((cx - .18 * r, cy + .4 * r, cx + .18 * r, cy + r), fill=dark)
    elif thing == "snowman":
        for dx in (-.15, .15):
            _ellipse(d, cx + dx * r, cy - .58 * r, .06 * r, fill=dark)
        _ellipse(d, cx, cy - .45 * r, .07 * r, fill=(245, 130, 20))
    elif thing == "tree":
        d.rectangle((cx - .14 * r, cy + .3 * r, cx + .14 * r, cy + r), fill=(110, 65, 25))
    elif thing == "flower":
        _ellipse(d, cx, cy, .3 * r, fill=(245, 130, 20) if color == "yellow" else (245, 210, 20))


def _contrast(rgb):
    return (20, 20, 20) if 0.3 * rgb[0] + 0.59 * rgb[1] + 0.11 * rgb[2] > 140 else (245, 245, 245)


def _fill_layer(color: str, texture: str, size: int) -> Image.Image:
    """The scene's colour over the whole canvas, with its texture in a contrasting colour."""
    rgb = COLORS[color]
    layer = Image.new("RGB", (size, size), rgb)
    d, other, p = ImageDraw.Draw(layer), _contrast(rgb), max(4, size // 8)
    if texture == "striped":
        for x in range(-size, size, p):
            d.line((x, size, x + size, 0), fill=other, width=max(1, round(p * .3)))
    elif texture == "dotted":
        for row, y in enumerate(range(p // 2, size, p)):
            for x in range(p // 2 + (row % 2) * p // 2, size, p):
                _ellipse(d, x, y, p * .2, fill=other)
    elif texture == "checkered":
        q = max(2, size // 10)
        for i in range(0, size, q):
            for j in range(0, size, q):
                if (i // q + j // q) % 2:
                    d.rectangle((i, j, i + q - 1, j + q - 1), fill=other)
    return layer


def _background(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = BACKGROUNDS[name]
    if name == "sky":
        t = np.linspace(0, 1, size)[:, None, None]
        grad = (1 - t) * np.array([120, 180, 240]) + t * np.array([205, 232, 255])
        return Image.fromarray(np.broadcast_to(grad, (size, size, 3)).astype(np.uint8))
    img = Image.new("RGB", (size, size), base)
    d = ImageDraw.Draw(img)
    if name == "grass":
        for x, h, g in zip(rng.random(60), rng.random(60), rng.integers(100, 190, 60)):
            d.line((x * size, size, x * size, size * (1 - h)), fill=(40, int(g), 40), width=max(1, size // 64))
    elif name == "sand":
        for x, y in rng.random((80, 2)):
            _ellipse(d, x * size, y * size, size / 128 + .5, fill=(200, 175, 125))
    elif name == "night":
        for x, y in rng.random((25, 2)):
            _ellipse(d, x * size, y * size, size / 128 + .3, fill=(235, 235, 200))
    return img


_GRIDS = {1: (1, 1), 2: (2, 1), 3: (2, 2), 4: (2, 2), 5: (3, 2)}
# Largest tilt in radians; things not named turn freely. A square must not turn into
# a diamond, nor a house fall over.
_TILT = {"square": .3, "diamond": .3, "cross": .3, "heart": .25, "house": .25, "tree": .25,
         "snowman": .25, "traffic light": .25, "smiley face": .25, "stop sign": .25}


def draw_scene(scene: Scene, px: int = DEFAULT_PX) -> Image.Image:
    """Render `scene` as a px x px RGB image. The same scene gives the same pixels."""
    size = 2 * max(px, 32)
    rng = np.random.default_rng([scene.seed, zlib.crc32(scene.spec.encode())])
    img = _background(scene.background, size, rng)
    fill = _fill_layer(scene.color, scene.texture, size)
    cols, rows = _GRIDS[scene.count]
    if rng.random() < .5:
        cols, rows = rows, cols
    cells = rng.permutation(cols * rows)[:scene.count]
    cw, ch = size / cols, size / rows
    for cell in cells:
        half = min(cw, ch) / 2
        r = half * (rng.uniform(.62, .78) if scene.count == 1 else rng.uniform(.72, .86))
        cx = (cell % cols + .5) * cw + rng.uniform(-1, 1) * (cw / 2 - r) * .8
        cy = (cell // cols + .5) * ch + rng.uniform(-1, 1) * (ch / 2 - r) * .8
        angle = rng.uniform(-1, 1) * _TILT.get(scene.thing, math.pi)
        mask = Image.new("L", (size, size), 0)
        _draw_main(ImageDraw.Draw(mask), scene.thing, cx, cy, r, angle)
        img.paste(fill, (0, 0), mask)
        _draw_details(ImageDraw.Draw(img), scene.thing, scene.color, cx, cy, r, angle)
    return img.resize((px, px), Image.Resampling.LANCZOS if px >= 16 else Image.Resampling.BOX)


def encode(img: Image.Image, ext: str = "jpg", quality: int | None = None) -> bytes:
    """Image bytes in the format named by `ext` (jpg, png, webp)."""
    buf = io.BytesIO()
    fmt = FORMATS[ext][0]
    kwargs = {} if fmt == "PNG" else {"quality": quality or DEFAULT_QUALITY}
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


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


# ---------------------------------------------------------------------------
# Reading images back: how tests check that an image shows what its caption says.


def color_mask(img: Image.Image, color: str | tuple[int, int, int], tol: float = 60.0) -> np.ndarray:
    """Boolean mask of the pixels within `tol` (RGB distance) of a named or RGB colour."""
    rgb = np.asarray(COLORS[color] if isinstance(color, str) else color, dtype=float)
    px = np.asarray(img.convert("RGB"), dtype=float)
    return np.linalg.norm(px - rgb, axis=-1) < tol


def blobs(mask: np.ndarray, min_size: int = 6) -> list[int]:
    """Sizes of the 4-connected regions of `mask` with at least min_size pixels, largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    sizes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x], stack, n = True, [(y, x)], 0
        while stack:
            cy, cx = stack.pop()
            n += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if n >= min_size:
            sizes.append(n)
    return sorted(sizes, reverse=True)


# ---------------------------------------------------------------------------
# HTTP

HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head>"
             b"<body><h1>Sorry</h1><p>This page is not an image.</p></body></html>\n")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    ctype: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    drip: str | None = None     # "body", "headers" or "continue": sent a little at a time


class _State:
    """What the handler threads share: the counts and the stop signal."""

    def __init__(self, root: Path | None, robots: str | int | None = None):
        self.root = root
        self.robots = robots
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, float, str]] = []   # (start, end, path) of every request
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.held: dict[str, list[float]] = {}   # drip path -> seconds until each client left

    def count(self, path: str) -> int:
        with self.lock:
            self.counts[path] += 1
            return self.counts[path]


def _route(path: str, hit: int, state: _State) -> Reply:
    """The reply for `path` (already URL-decoded); `hit` is how often it was asked for."""
    parts = path.lstrip("/").split("/", 2)
    head = parts[0]
    rest = "/" + "/".join(parts[1:])
    if path == "/robots.txt" and state.robots is not None:   # the server's robots.txt, if given
        if isinstance(state.robots, int):
            return Reply(state.robots, f"status {state.robots}\n".encode(), "text/plain")
        return Reply(200, state.robots.encode(), "text/plain")
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
        return _route(inner, hit, state)
    if head == "slow":              # /slow/<seconds>/<path>
        reply = _route(inner, hit, state)
        reply.delay = min(float(arg), MAX_SLOW)
        return reply
    if head == "drip":              # /drip/<body|headers|continue>/<path>: a byte (a line) every 0.1 s
        if arg not in DRIPS:
            return Reply(400, b"want /drip/body|headers|continue/<path>\n", "text/plain")
        reply = _route(inner, hit, state)
        reply.drip = arg
        return reply
    if head == "status":            # /status/<code>/<anything>
        code = int(arg) if arg.isdigit() and 400 <= int(arg) <= 599 else 400
        headers = (("Retry-After", "1"),) if code in (429, 503) else ()
        return Reply(code, f"status {code}\n".encode(), "text/plain", headers)
    if head == "flaky":             # /flaky/<n>/<path>: 429 for the first n requests, then the path
        if hit <= int(arg):
            return Reply(429, b"slow down\n", "text/plain", (("Retry-After", "1"),))
        return _route(inner, hit, state)
    if head == "redirect":          # /redirect/<path>: 302 to /<path>
        return Reply(302, b"", "text/plain", (("Location", rest),))
    if head == "loop":              # /loop/<tag>/a <-> /loop/<tag>/b forever
        other = "b" if inner == "/a" else "a"
        return Reply(302, b"", "text/plain", (("Location", f"/loop/{arg}/{other}"),))
    if head == "robots":            # /robots/<directives>/<path>: adds X-Robots-Tag
        reply = _route(inner, hit, state)
        reply.headers += (("X-Robots-Tag", arg),)
        return reply
    if head == "truncated":         # /truncated/<path>: the first half of the bytes
        reply = _route(rest, hit, state)
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
    if head == "files" and state.root is not None:
        f = (state.root / rest.lstrip("/")).resolve()
        if f.is_file() and f.is_relative_to(state.root):
            return Reply(200, f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream")
    return Reply(404, b"not found\n", "text/plain")


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
                reply = _route(path, state.count(path), state)
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


class Server:
    """A running image server. Use as a context manager or call `stop()`."""

    def __init__(self, port: int = 0, root: str | Path | None = None, verbose: bool = False,
                 host: str = "127.0.0.1", robots: str | int | None = None):
        import ipaddress
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"{host}: the image server listens on loopback addresses only")
        self._state = _State(Path(root).resolve() if root else None, robots)
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

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


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
    """An image server in a process of its own (`python -m wit_builder.imageserver`)."""

    def __init__(self, port: int = 0, root: str | Path | None = None, timeout: float = 20.0):
        import tempfile
        self._dir = tempfile.TemporaryDirectory(prefix="imageserver-")
        port_file = Path(self._dir.name) / "port"
        cmd = [sys.executable, "-m", "wit_builder.imageserver", "--port", str(port), "--port-file", str(port_file)]
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
    p = argparse.ArgumentParser(prog="python -m wit_builder.imageserver", description=__doc__.split("\n")[0])
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
