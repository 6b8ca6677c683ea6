"""The labelled world of benchmarks/bench_dedup.py: drawings (Pillow), their true
copies, and blank images. Pictures of one kind share a layout or a style and differ
in colour or detail: the hard negatives of each other."""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers: tests.support
from tests.support.fetch import picture  # noqa: E402  (the tests' photo-like pictures)

from wit_builder import canonical  # noqa: E402

PALETTE = {"red": (220, 30, 40), "green": (40, 170, 60), "blue": (30, 80, 210),
           "yellow": (245, 210, 30), "orange": (245, 130, 20), "purple": (130, 50, 160),
           "black": (20, 20, 20), "white": (255, 255, 255), "lime": (150, 210, 40),
           "cyan": (30, 190, 210), "pink": (240, 120, 180), "brown": (130, 80, 40)}


# ---------------------------------------------------------------------------------
# Drawings: each returns an RGBA or RGB PIL image; `rng` picks size and placement


def _canvas(rng, w=None, h=None, transparent=True):
    w = w or int(rng.integers(300, 900))
    h = h or int(w * rng.uniform(0.6, 1.6))
    return Image.new("RGBA" if transparent else "RGB", (w, h), (0, 0, 0, 0) if transparent else "white")


def balloon(colour, rng):
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.ellipse([w * .25, h * .1, w * .75, h * .65], fill=PALETTE[colour] + (255,))
    d.line([w * .5, h * .65, w * .48, h * .95], fill=(60, 60, 60, 255), width=max(2, w // 120))
    return im


def arrow(colour, rng):
    im = _canvas(rng)
    w, h = im.size
    pts = [(.1, .4), (.6, .4), (.6, .2), (.9, .5), (.6, .8), (.6, .6), (.1, .6)]
    ImageDraw.Draw(im).polygon([(x * w, y * h) for x, y in pts], fill=PALETTE[colour] + (255,))
    return im


def fruit(colour, rng):
    im = _canvas(rng)
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.ellipse([w * .15, h * .25, w * .85, h * .75], fill=PALETTE[colour] + (255,))
    d.polygon([(w * .1, h * .5), (w * .2, h * .42), (w * .2, h * .58)], fill=PALETTE[colour] + (255,))
    d.polygon([(w * .9, h * .5), (w * .8, h * .42), (w * .8, h * .58)], fill=PALETTE[colour] + (255,))
    d.ellipse([w * .3, h * .35, w * .45, h * .45], fill=(255, 255, 255, 120))  # a highlight
    return im


def button(colour, glyph, rng):
    im = _canvas(rng, transparent=False)
    d = ImageDraw.Draw(im)
    w, h = im.size
    s = min(w, h)
    box = [w / 2 - s * .4, h / 2 - s * .4, w / 2 + s * .4, h / 2 + s * .4]
    d.ellipse(box, fill=PALETTE[colour], outline=(40, 40, 40), width=max(2, s // 60))
    cx, cy, r = w / 2, h / 2, s * .4
    ink = (30, 30, 30)
    if glyph == "smile":
        d.ellipse([cx - r * .45, cy - r * .4, cx - r * .2, cy - r * .1], fill=ink)
        d.ellipse([cx + r * .2, cy - r * .4, cx + r * .45, cy - r * .1], fill=ink)
        d.arc([cx - r * .55, cy - r * .4, cx + r * .55, cy + r * .6], 20, 160, fill=ink, width=max(2, s // 40))
    elif glyph == "check":
        d.line([cx - r * .5, cy, cx - r * .1, cy + r * .4, cx + r * .55, cy - r * .45], fill=ink, width=max(3, s // 20))
    elif glyph == "plus":
        d.rectangle([cx - r * .1, cy - r * .55, cx + r * .1, cy + r * .55], fill=ink)
        d.rectangle([cx - r * .55, cy - r * .1, cx + r * .55, cy + r * .1], fill=ink)
    return im


def tricolour(colours, vertical, rng):
    w = int(rng.integers(300, 900))
    im = Image.new("RGB", (w, int(w * rng.choice([0.5, 2 / 3]))))
    d = ImageDraw.Draw(im)
    w, h = im.size
    for i, c in enumerate(colours):
        box = [w * i / 3, 0, w * (i + 1) / 3, h] if vertical else [0, h * i / 3, w, h * (i + 1) / 3]
        d.rectangle(box, fill=PALETTE[c])
    return im


def _star(d, cx, cy, r, fill, points=7):
    pts = []
    for k in range(points * 2):
        rad = r if k % 2 == 0 else r * .45
        a = math.pi * k / points - math.pi / 2
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    d.polygon(pts, fill=fill)


def hoist_flag(triangle, star, rng):
    """Black-white-green stripes with a triangle at the hoist (Palestine), with a star
    in it (Jordan), or another triangle colour."""
    im = tricolour(("black", "white", "green"), False, rng)
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.polygon([(0, 0), (w * .45, h / 2), (0, h)], fill=PALETTE[triangle])
    if star:
        _star(d, w * .15, h / 2, h * .09, PALETTE["white"])
    return im


def nordic(field, cross, rng):
    w = int(rng.integers(300, 900))
    im = Image.new("RGB", (w, int(w * .7)), PALETTE[field])
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.rectangle([w * .3, 0, w * .42, h], fill=PALETTE[cross])
    d.rectangle([0, h * .42, w, h * .58], fill=PALETTE[cross])
    return im


def disc_flag(field, disc, rng):
    w = int(rng.integers(300, 900))
    im = Image.new("RGB", (w, int(w * 2 / 3)), PALETTE[field])
    w, h = im.size
    ImageDraw.Draw(im).ellipse([w / 2 - h * .3, h * .2, w / 2 + h * .3, h * .8], fill=PALETTE[disc])
    return im


def logo(letter, colour, rng):
    from PIL import ImageFont
    im = _canvas(rng, transparent=False)
    d = ImageDraw.Draw(im)
    w, h = im.size
    s = min(w, h)
    d.ellipse([w / 2 - s * .42, h / 2 - s * .42, w / 2 + s * .42, h / 2 + s * .42], fill=PALETTE[colour])
    font = ImageFont.load_default(size=int(s * .5))
    d.text((w / 2, h / 2), letter, fill="white", font=font, anchor="mm")
    return im


def icon(glyph, rng):
    """One style: a dark-blue rounded square outline, a glyph of the same stroke."""
    im = _canvas(rng, transparent=True)
    d = ImageDraw.Draw(im)
    w, h = im.size
    s = min(w, h)
    ink, width = (20, 40, 110, 255), max(3, s // 25)
    x0, y0, x1, y1 = w / 2 - s * .4, h / 2 - s * .4, w / 2 + s * .4, h / 2 + s * .4
    d.rounded_rectangle([x0, y0, x1, y1], radius=s * .1, outline=ink, width=width)
    cx, cy, r = w / 2, h / 2, s * .22
    if glyph == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=width)
    elif glyph == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * .8), (cx - r, cy + r * .8)], outline=ink, width=width)
    elif glyph == "cross":
        d.line([cx - r, cy - r, cx + r, cy + r], fill=ink, width=width)
        d.line([cx - r, cy + r, cx + r, cy - r], fill=ink, width=width)
    elif glyph == "bars":
        for k in range(3):
            d.line([cx - r, cy - r + k * r, cx + r, cy - r + k * r], fill=ink, width=width)
    return im


def sparse(kind, rng):
    """A small object on a large white canvas (mostly white pictures)."""
    im = Image.new("RGB", (int(rng.integers(500, 900)),) * 2, "white")
    d = ImageDraw.Draw(im)
    w, h = im.size
    s = w * .12
    cx, cy = w * rng.uniform(.3, .7), h * rng.uniform(.3, .7)
    if kind == "sun":
        d.ellipse([cx - s, cy - s, cx + s, cy + s], fill=PALETTE["yellow"])
        for k in range(8):
            a = k * math.pi / 4
            d.line([cx + s * 1.2 * math.cos(a), cy + s * 1.2 * math.sin(a),
                    cx + s * 1.7 * math.cos(a), cy + s * 1.7 * math.sin(a)], fill=PALETTE["orange"], width=4)
    elif kind == "island":
        pts = [(cx + s * (1 + .5 * math.sin(3 * a)) * math.cos(a), cy + s * (1 + .4 * math.cos(2 * a)) * math.sin(a))
               for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
        d.polygon(pts, fill=PALETTE["green"])
    elif kind == "boat":
        d.polygon([(cx - s * 1.5, cy), (cx + s * 1.5, cy), (cx + s, cy + s * .6), (cx - s, cy + s * .6)], fill=PALETTE["brown"])
        d.polygon([(cx, cy - s * 1.5), (cx, cy - s * .1), (cx + s, cy - s * .1)], fill=PALETTE["blue"])
    elif kind == "campfire":
        d.polygon([(cx - s, cy + s * .6), (cx, cy - s * 1.4), (cx + s, cy + s * .6)], fill=PALETTE["orange"])
        d.polygon([(cx - s * .5, cy + s * .6), (cx, cy - s * .5), (cx + s * .5, cy + s * .6)], fill=PALETTE["red"])
        d.line([cx - s * 1.2, cy + s * .8, cx + s * 1.2, cy + s * .6], fill=PALETTE["brown"], width=8)
    return im


def silhouette(shape, rng):
    """A black shape whose hidden (transparent) pixels are black as well."""
    w = int(rng.integers(300, 800))
    mask = Image.new("L", (w, int(w * rng.uniform(.7, 1.3))), 0)
    d = ImageDraw.Draw(mask)
    W, H = mask.size
    if shape == "cat":
        d.ellipse([W * .25, H * .35, W * .75, H * .9], fill=255)
        d.ellipse([W * .33, H * .12, W * .67, H * .45], fill=255)
        d.polygon([(W * .35, H * .2), (W * .38, H * .02), (W * .48, H * .15)], fill=255)
        d.polygon([(W * .65, H * .2), (W * .62, H * .02), (W * .52, H * .15)], fill=255)
    elif shape == "tree":
        d.polygon([(W * .5, H * .05), (W * .85, H * .7), (W * .15, H * .7)], fill=255)
        d.rectangle([W * .45, H * .7, W * .55, H * .95], fill=255)
    elif shape == "person":
        d.ellipse([W * .4, H * .05, W * .6, H * .25], fill=255)
        d.rectangle([W * .35, H * .28, W * .65, H * .65], fill=255)
        d.rectangle([W * .37, H * .65, W * .47, H * .95], fill=255)
        d.rectangle([W * .53, H * .65, W * .63, H * .95], fill=255)
    im = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    im.putalpha(mask)
    return im


def photo(seed, rng, obj=None):
    w = int(rng.integers(320, 900))
    im = picture(seed, w, int(w * rng.uniform(.55, 1.5)))
    if obj:
        d = ImageDraw.Draw(im)
        W, H = im.size
        d.ellipse([W * .35, H * .3, W * .65, H * .7], fill=PALETTE[obj])
    return im


def families(n: int, rng) -> list[tuple[str, list]]:
    """(kind, [(key, drawing)]) per family. The pictures of one kind share a layout or
    style and differ in colour or detail: they are the hard negatives of each other.
    A key names one picture; a key drawn before is not drawn again."""
    out = []
    cols = [c for c in PALETTE if c != "white"]
    for i in range(n):
        k = i % 12
        pick = [str(c) for c in rng.permutation(cols)]
        if k == 0:
            fam = [(f"balloon-{c}", lambda r, c=c: balloon(c, r)) for c in pick[:3]]
        elif k == 1:
            fam = [(f"arrow-{c}", lambda r, c=c: arrow(c, r)) for c in ["red", "blue"] + pick[:1]]
        elif k == 2:
            fam = [(f"fruit-{c}", lambda r, c=c: fruit(c, r)) for c in ["yellow", "lime"] + pick[:1]]
        elif k == 3:
            fam = [(f"button-{c}-{g}", lambda r, c=c, g=g: button(c, g, r))
                   for c, g in (("green", "check"), ("orange", "smile"), (pick[0], "plus"), (pick[1], "smile"))]
        elif k == 4:
            v = bool(rng.integers(2))
            fam = [(f"tricolour-{c}-{v}", lambda r, c=c, v=v: tricolour(c, v, r))
                   for c in dict.fromkeys(tuple(str(x) for x in rng.permutation(pick[:4])[:3]) for _ in range(3))]
        elif k == 5:
            fam = [(f"hoist-{t}-{star}", lambda r, t=t, star=star: hoist_flag(t, star, r))
                   for t, star in (("red", False), ("red", True), (pick[0], False), (pick[0], True))]
        elif k == 6:
            fam = [(f"nordic-{f}-{c}", lambda r, f=f, c=c: nordic(f, c, r))
                   for f, c in (("red", "white"), ("blue", "yellow"), (pick[0], pick[1]), (pick[1], pick[0]))]
        elif k == 7:
            fam = [(f"disc-{f}-{c}", lambda r, f=f, c=c: disc_flag(f, c, r))
                   for f, c in (("white", "red"), ("green", "red"), ("blue", "yellow"), (pick[0], pick[1]))]
        elif k == 8:
            fam = [(f"logo-{L}-{pick[0]}", lambda r, L=L, c=pick[0]: logo(L, c, r))
                   for L in rng.choice(list("ABDKMRSW"), 3, replace=False)]
        elif k == 9:
            fam = [(f"icon-{g}", lambda r, g=g: icon(g, r)) for g in ("circle", "triangle", "cross", "bars")]
        elif k == 10:
            # one picture per object: the same object elsewhere on a white canvas is a copy
            # with other margins, not another picture
            fam = [(f"sparse-{s}", lambda r, s=s: sparse(s, r)) for s in ("sun", "island", "boat", "campfire")]
        else:
            seed = int(rng.integers(1 << 30))
            fam = [(f"photo-{seed}", lambda r, s=seed: photo(s, r))]
            fam += [(f"photo-{seed}-{c}", lambda r, c=c, s=seed: photo(s, r, c)) for c in pick[:2]]
            if i % 24 == 11:
                shape = str(rng.choice(["cat", "tree", "person"]))
                fam.append((f"silhouette-{shape}", lambda r, s=shape: silhouette(s, r)))
        out.append((("photo" if k == 11 else fam[0][0].split("-")[0]), fam))
    return out


# ---------------------------------------------------------------------------------
# Copies


def encode(im: Image.Image, fmt="JPEG", quality=90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        canonical.on_white(im).save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


def copies(im: Image.Image, rng) -> list[tuple[str, bytes]]:
    """(transform, bytes) true copies of one picture."""
    w, h = im.size
    out = []
    s = rng.uniform(.5, .9)
    out.append(("resized", encode(im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC))))
    out.append(("jpeg", encode(im, quality=int(rng.choice([30, 50, 75, 95])))))
    c = rng.uniform(.02, .05)
    box = [(0, 0, w * (1 - c), h), (w * c, h * c, w, h), (w * c / 2, 0, w * (1 - c / 2), h * (1 - c))][int(rng.integers(3))]
    out.append(("crop", encode(im.crop(tuple(int(v) for v in box)))))
    p = int(min(w, h) * rng.uniform(.05, .15))
    padded = Image.new("RGB", (w + 2 * p, h + 2 * p), "white")
    padded.paste(canonical.on_white(im), (p, p))
    out.append(("border", encode(padded)))
    if im.mode == "RGBA":
        out.append(("on_white", encode(im, quality=85)))
    shift = float(rng.choice([-1, 1]) * rng.uniform(5, 12))
    a = np.asarray(canonical.on_white(im), dtype=np.float32) + shift
    out.append(("brightness", encode(Image.fromarray(a.clip(0, 255).astype(np.uint8)))))
    return out


def blanks(rng, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        w, h = int(rng.integers(200, 800)), int(rng.integers(200, 800))
        c0 = rng.integers(0, 256, 3)
        if i % 2:
            c1 = rng.integers(0, 256, 3)
            t = np.linspace(0, 1, w)[None, :, None] if i % 4 == 1 else np.linspace(0, 1, h)[:, None, None]
            a = c0 + (c1 - c0) * t * np.ones((h, w, 1))
        else:
            a = np.ones((h, w, 1)) * c0
        out.append(encode(Image.fromarray(a.astype(np.uint8)), quality=90))
    return out
