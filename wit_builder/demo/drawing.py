"""The demo world's pictures: what can be drawn, the scene a caption describes, and
the Pillow drawing that turns a scene into pixels (and pixels into bytes).

A `Scene` (`3-red-circle-striped-sky-17`: three red striped circles against the
sky, layout seed 17) is drawn by `draw_scene` the same way in every process, so the
image server (wit_builder/demo/imageserver.py) can draw on request what the world
(wit_builder/demo/world.py) wrote in its captions. `color_mask` and `blobs` read images
back: how tests check that "three red circles" shows three red blobs.
"""
from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

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
FORMATS = {  # extension -> (Pillow format, Content-Type)
    "jpg": ("JPEG", "image/jpeg"), "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"),
}


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
