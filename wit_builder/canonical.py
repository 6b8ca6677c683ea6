"""One canonical view of an image for every hash, and the signature taken from it.

Wherever an image comes from — the pixels fetch's resizer is about to encode, a
stored image curate decodes, an evaluation image on disk — it is hashed after the
same normalisation, so an image and its resized, padded copy hash alike:

1. **Alpha composited on white** (`BACKGROUND`), as img2dataset's resizer does
   before storing: a transparent clip-art and its stored copy look the same, and a
   black silhouette whose hidden pixels are black is a silhouette, not a black square.
2. **White margins trimmed symmetrically**: on each axis, the rows (columns) that are
   white on *both* sides are cut, as many as the thinner of the two sides has (and
   up to max(2, n/16) more from the thicker one: padding split unevenly, JPEG blur,
   a copy cropped by a few percent).
   `--resize-mode border` pads with equal white bars on two sides, so its padding is
   removed exactly; a picture's own white margins lose the same amount in every copy
   (they scale with it); a picture white on one side only (the Polish flag) keeps it.

The signature of that content (`signature`):
- `phash`: the 64-bit DCT pHash of its gray pixels (wit_builder.phash), with a bit
  set only where its coefficient is above the median by STABLE_MARGIN of the largest
  AC coefficient: drawings are often symmetric, so half their coefficients are zero
  and, in the standard pHash, their bits flip with every re-encoding (resized copies
  of an icon were up to 44 bits apart; with the margin 90% stay within 6);
- `thumb`: a THUMB x THUMB RGB thumbnail (area average), for the colour check that
  confirms a pHash candidate (`colour_distance`): greyscale pHash cannot tell a red
  balloon from a green one;
- `detail`: the share of neighbouring pixels, at 64 x 64, that differ by more than
  STEP levels: 0 for one colour or a plain gradient. Below BLANK_DETAIL an image is
  `blank` and takes no part in dedup or decontamination.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from wit_builder.phash import phash_array

BACKGROUND = 255      # white: what img2dataset composites alpha on and pads with
WHITE_TOL = 24        # a pixel within this of white in every channel counts as white
WHITE_ROW = 0.005     # a row is margin when at most this share of its pixels is not white
THUMB = 16            # colour thumbnail side (THUMB * THUMB * 3 bytes)
DETAIL_SIDE = 64      # pHash, thumbnail and detail are measured at this size
TRIM_SIDE = 128       # margins are found on the image reduced by an integer factor to ~this
STEP = 16             # levels between neighbours that count as an edge
BLANK_DETAIL = 0.004  # below this share of edges an image is blank
SHIFT = 24            # colour_distance forgives a uniform brightness shift up to this
DRAFT_SIZE = 64       # JPEGs are decoded at reduced scale, no smaller than this
STABLE_MARGIN = 0.03  # a pHash bit needs its coefficient this far (x largest AC) above the median

warnings.filterwarnings("ignore", message="Palette images with Transparency expressed in bytes")


def composite(a: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA (or BGRA) -> (H, W, 3) on white, rounded as img2dataset does."""
    alpha = a[:, :, 3:4].astype(np.float32)
    out = alpha / 255 * a[:, :, :3] + (255 - alpha)
    return np.rint(out.clip(0, 255)).astype(np.uint8)


def on_white(im):
    """A PIL image as RGB, transparent areas composited on white (not turned black).

    Any mode with transparency (RGBA, LA, PA, a palette or RGB image with a
    `transparency` entry) goes through RGBA, which is also what keeps PIL's
    palette-transparency warning away."""
    from PIL import Image
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (BACKGROUND,) * 3 + (255,))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _margins(white: np.ndarray) -> tuple[int, int]:
    """(start, stop) along an axis after cutting the symmetric white margin; `white` is
    the per-row "is margin" flags."""
    n = len(white)
    if white.all():
        return 0, n
    lead, trail = int(np.argmin(white)), int(np.argmin(white[::-1]))  # white rows at each end
    slack = max(2, n // 16)  # padding split unevenly, JPEG blur, a margin cropped a little
    start, end = min(lead, trail + slack), min(trail, lead + slack)
    # one row more where a margin was cut: the row where padding met the picture is a
    # blend of both once the image is reduced or JPEG-blurred
    start, end = start + (start > 0), end + (end > 0)
    return (start, n - end) if start + end < n else (0, n)


def trim(pixels: np.ndarray) -> np.ndarray:
    """The content of an (H, W, 3) uint8 image (any channel order): symmetric white
    margins cut (see the module doc). An image that is all white is returned whole."""
    import cv2
    white = cv2.inRange(pixels, (BACKGROUND - WHITE_TOL,) * 3, (255,) * 3)  # 255: white
    limit = 255 * (1 - WHITE_ROW)
    rows = cv2.reduce(white, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    r0, r1 = _margins(rows >= limit)
    cols = cv2.reduce(white[r0:r1], 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    c0, c1 = _margins(cols >= limit)
    return pixels[r0:r1, c0:c1]


def to_three(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) uint8/uint16 -> (H, W, 3) uint8 in the same channel
    order, alpha composited on white."""
    a = np.asarray(pixels)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or 0 in a.shape[:2] or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 1|3|4) image, got shape {a.shape}")
    if a.shape[2] in (1, 2):  # gray (+ alpha)
        a = np.concatenate([a[:, :, :1]] * 3 + ([a[:, :, 1:2]] if a.shape[2] == 2 else []), axis=2)
    if a.shape[2] == 4:
        a = composite(a)
    return np.ascontiguousarray(a)


def detail(small: np.ndarray) -> float:
    """Share of neighbour pairs (across and down) in a small 3-channel image whose
    largest channel difference exceeds STEP."""
    import cv2

    def steps(x, y) -> int:
        d = cv2.split(cv2.absdiff(x, y))
        return int(np.count_nonzero(cv2.max(cv2.max(d[0], d[1]), d[2]) > STEP))
    h, w = small.shape[:2]
    pairs = h * (w - 1) + (h - 1) * w
    return (steps(small[:, 1:], small[:, :-1]) + steps(small[1:], small[:-1])) / max(1, pairs)


def to_side(content: np.ndarray) -> np.ndarray:
    """DETAIL_SIDE x DETAIL_SIDE of an image, close to OpenCV's area average at a
    third of its cost: whole-factor area averages (OpenCV's fast path) down to under
    twice the side, bilinear to twice the side, then an area average by 2. (The area
    average by a fractional factor is OpenCV's slow path, 4-5x the cost.)"""
    import cv2
    h, w = content.shape[:2]
    content = shrink(content, max(1, h // DETAIL_SIDE), max(1, w // DETAIL_SIDE))
    if content.shape[:2] == (DETAIL_SIDE, DETAIL_SIDE):  # already the area average
        return content
    twice = cv2.resize(content, (2 * DETAIL_SIDE, 2 * DETAIL_SIDE), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(twice, (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_AREA)


def shrink(a: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Area average over whole fy x fx blocks (OpenCV's fast path), the rows and
    columns left over split between both ends."""
    import cv2
    if fy == 1 and fx == 1:
        return a
    h, w = a.shape[:2]
    y0, x0 = h % fy // 2, w % fx // 2
    return cv2.resize(a[y0:y0 + h // fy * fy, x0:x0 + w // fx * fx], (w // fx, h // fy),
                      interpolation=cv2.INTER_AREA)


def signature(pixels: np.ndarray, channels: str = "BGR") -> tuple[int, bytes, float]:
    """(phash as signed int64, RGB thumb bytes, detail) of decoded pixels' canonical
    view. `pixels` as decoded ("BGR": OpenCV, as fetch holds them; "RGB": PIL), any of
    the layouts `to_three` takes.

    After the trim everything is measured on one DETAIL_SIDE x DETAIL_SIDE reduction
    of the content (`to_side`): the pHash (Lanczos to 32, DCT), the thumbnail (a further
    area average) and the detail, so the cost hardly depends on the image's size."""
    import cv2

    a = to_three(pixels)
    f = max(a.shape[:2]) // TRIM_SIDE
    if f >= 2:  # trim at about TRIM_SIDE px: a quarter of the work, the same cut to ~1%
        a = shrink(a, f, f)
    content = trim(a)
    small = to_side(content)
    h = phash_array(small, channels=channels, margin=STABLE_MARGIN)
    thumb = cv2.resize(small, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    if channels == "BGR":
        thumb = cv2.cvtColor(thumb, cv2.COLOR_BGR2RGB)
    return h, thumb.tobytes(), detail(small)


def reduced_flag(cv2, factor: int, gray: bool) -> int:
    """OpenCV's imdecode flag for decoding at 1/`factor` scale (1, 2, 4 or 8; libjpeg's
    DCT scaling for JPEGs), colour (BGR) or gray, EXIF orientation ignored (as PIL and
    img2dataset's IMREAD_UNCHANGED do)."""
    name = ("IMREAD_GRAYSCALE" if gray else "IMREAD_COLOR") if factor == 1 else \
        f"IMREAD_REDUCED_{'GRAYSCALE' if gray else 'COLOR'}_{factor}"
    return getattr(cv2, name) | cv2.IMREAD_IGNORE_ORIENTATION


def _reduced_jpeg(data: bytes, width: int, height: int, gray: bool) -> np.ndarray | None:
    """A baseline RGB or gray JPEG decoded by OpenCV at the largest 1/2..1/8 scale
    still at least DRAFT_SIZE on both sides (what PIL's draft picks, ~20% faster),
    channels BGR or gray; EXIF orientation ignored, as PIL and img2dataset do."""
    import cv2
    f = 8
    while f > 1 and -(-min(width, height) // f) < DRAFT_SIZE:
        f //= 2
    return cv2.imdecode(np.frombuffer(data, np.uint8), reduced_flag(cv2, f, gray))


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of an 8-bit Huffman JPEG (baseline, extended or
    progressive) with 1 or 3 components, read from its frame header; None for
    anything else (not a JPEG, CMYK, 12-bit, lossless, arithmetic, multi-picture,
    a header that ends early), which PIL then opens. The segments walked are bounded."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    for _ in range(256):
        if i + 4 > n or data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if m in (0xC0, 0xC1, 0xC2):
            if length < 8 or i + 10 > n:
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            ok = data[i + 4] == 8 and width and height and data[i + 9] in (1, 3)
            return (width, height, data[i + 9]) if ok else None
        if (0xC3 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)) or m in (0xD9, 0xDA) \
                or length < 2 or (m == 0xE2 and data[i + 4:i + 8] == b"MPF\x00"):
            return None
        i += 2 + length
    return None


FILL = 128            # what libjpeg decodes where a scan ended early: every channel mid-grey


def short_scan(pixels: np.ndarray, data, scale: int = 1) -> str | None:
    """Why decoded JPEG pixels are not the picture their header claims, or None.

    A JPEG whose scan ends before the height its frame header gives (a file cut and
    given a new end marker, or a header rewritten) still decodes: libjpeg warns and
    fills the missing rows with mid-grey, exactly FILL in every channel, and neither
    OpenCV nor PIL reports the warning. So bottom rows that are exactly that grey, at
    least one 8-pixel block row (8 / `scale` at reduced scale) below real content,
    make the image a suspect: one row is compared in the common case. A picture can
    have such a band of its own (a mid-grey background), so a suspect's bytes
    (`data`) are decoded again by libjpeg-turbo in strict mode (simplejpeg), which
    raises on the warning: only then is the image refused."""
    a = pixels.reshape(pixels.shape[0], -1)
    if a.shape[0] < 2 or not (a[-1] == FILL).all():
        return None  # the common case: one row compared
    grey = (a == FILL).all(axis=1)
    if grey.all():
        return None  # one flat grey picture: curate calls it blank
    rows = int(np.argmin(grey[::-1]))
    if rows < max(1, 8 // scale):
        return None
    import simplejpeg
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
    except ValueError as e:
        return (f"the JPEG's scan ends {rows * scale} rows before the height of "
                f"{pixels.shape[0] * scale} its header claims (libjpeg: {e}; the rest "
                "is decoder fill)")
    return None  # the grey band is the picture's own


def decode(data: bytes) -> tuple[dict[str, Any], np.ndarray | None, str]:
    """Open encoded bytes: ({width, height, format, error}, pixels or None, channel
    order "RGB" or "BGR").

    JPEGs are decoded at the largest 1/2..1/8 scale still at least DRAFT_SIZE on both
    sides (libjpeg's DCT scaling), by OpenCV straight from the frame header
    (`jpeg_frame`) where it can; transparency is composited on white. Never raises:
    an image that cannot be decoded gets `error` and no pixels."""
    frame = jpeg_frame(data)
    if frame is not None:
        pixels = _reduced_jpeg(data, frame[0], frame[1], frame[2] == 1)
        if pixels is not None:
            facts = {"width": frame[0], "height": frame[1], "format": "JPEG", "error": None}
            short = short_scan(pixels, data, max(1, frame[1] // pixels.shape[0]))
            if short:
                return {**facts, "error": short}, None, "BGR"
            return facts, pixels, "BGR"
    from PIL import Image
    facts: dict[str, Any] = {"width": None, "height": None, "format": None, "error": None}
    try:
        with Image.open(io.BytesIO(data)) as im:
            facts.update(width=im.width, height=im.height, format=im.format)
            try:
                if im.format == "JPEG" and im.mode in ("RGB", "L"):
                    if frame is None:  # a header jpeg_frame leaves to PIL
                        pixels = _reduced_jpeg(data, im.width, im.height, im.mode == "L")
                        if pixels is not None:
                            return facts, pixels, "BGR"
                    im.load()  # OpenCV refused it: let PIL say why
                if im.format == "JPEG":
                    im.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
                pixels = np.asarray(on_white(im))
            except Exception as e:  # fails past the header: keep the size we read
                facts["error"] = f"{type(e).__name__}: {e}"
                return facts, None, "RGB"
    except Image.UnidentifiedImageError:
        facts["error"] = "not a recognised image format"
        return facts, None, "RGB"
    except Exception as e:
        facts["error"] = f"{type(e).__name__}: {e}"
        return facts, None, "RGB"
    return facts, pixels, "RGB"


def phash_bytes(images: list[bytes]) -> np.ndarray:
    """pHashes of encoded images' canonical view (alpha on white, symmetric white
    margins cut) as int64; undecodable ones raise."""
    facts = [signature_bytes(b) for b in images]
    bad = [i for i, f in enumerate(facts) if f["phash"] is None]
    if bad:
        raise ValueError(f"image {bad[0]} cannot be decoded: {facts[bad[0]]['error']}")
    return np.array([f["phash"] for f in facts], dtype=np.int64)


def signature_bytes(data: bytes) -> dict[str, Any]:
    """width, height, format, error and (when it decodes) phash, thumb, detail."""
    facts, pixels, channels = decode(data)
    facts.update(phash=None, thumb=None, detail=None)
    if pixels is not None:
        try:
            facts["phash"], facts["thumb"], facts["detail"] = signature(pixels, channels)
        except Exception as e:
            facts["error"] = f"{type(e).__name__}: {e}"
    return facts


# ---------------------------------------------------------------------------------
# The colour check that confirms a pHash candidate


def thumbs(blobs) -> np.ndarray:
    """Thumbnail bytes -> (n, THUMB, THUMB, 3) float32."""
    flat = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return flat.reshape(-1, THUMB, THUMB, 3).astype(np.float32)


def envelope(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell and channel, the min and max over its 3x3 neighbourhood."""
    p = np.pad(t, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    n = t.shape[1]
    shifted = [p[:, dy:dy + n, dx:dx + n] for dy in range(3) for dx in range(3)]
    return np.minimum.reduce(shifted), np.maximum.reduce(shifted)


def _outside(a, lo, hi) -> np.ndarray:
    """How far each inner cell of `a` lies outside [lo, hi], its largest channel:
    (n, T-2, T-2). The outer ring is left out: a crop of a few percent, or JPEG
    blur where padding met the picture, changes it most."""
    a, lo, hi = a[:, 1:-1, 1:-1], lo[:, 1:-1, 1:-1], hi[:, 1:-1, 1:-1]
    return np.maximum(np.maximum(lo - a, a - hi), 0).max(axis=-1)


def colour_distance(ta: np.ndarray, tb: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Colour distance in levels (0-255) between pairs of thumbnails (n, T, T, 3).

    A uniform brightness shift up to SHIFT levels is forgiven; then each cell of one
    thumbnail is compared with the range of colours in the 3x3 neighbourhood of the
    same cell in the other, so a copy shifted or cropped by up to a cell, whose edges
    blend differently, stays at 0, while a cell of a colour the other image has
    nowhere near (a red balloon where the other is green, a star on a plain field)
    counts in full. The distance is the worst inner cell, both ways round."""
    out = np.empty(len(ta), dtype=np.float32)
    for i in range(0, len(ta), chunk):
        a, b = ta[i:i + chunk], tb[i:i + chunk]
        shift = np.clip((a - b).mean(axis=(1, 2, 3), keepdims=True), -SHIFT, SHIFT)
        a = a - shift
        lo_b, hi_b = envelope(b)
        lo_a, hi_a = envelope(a)
        ab = _outside(a, lo_b, hi_b).reshape(len(a), -1).max(axis=1)
        ba = _outside(b, lo_a, hi_a).reshape(len(a), -1).max(axis=1)
        out[i:i + chunk] = np.maximum(ab, ba)
    return out
