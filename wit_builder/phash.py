"""64-bit perceptual hashes (DCT pHash) and the search for near-duplicate hashes.

The hash is the standard DCT pHash, as `imagehash.phash` computes it: grayscale,
resize to 32x32 (Lanczos), 2-D DCT-II, keep the top-left 8x8 coefficients, set a bit
where a coefficient is above their median; the first coefficient is the most
significant bit, so `int(str(imagehash.phash(im)), 16)` and `phash_pixels` agree.
Two ways in:
- `phash_array`, for pixels already decoded (fetch hashes each image it has just
  resized, before encoding it, so nothing is decoded twice). The Lanczos resize and
  the DCT are both linear, so they fold into two small matrices: the hash's 8x8
  coefficients are `(D @ Ry) @ X @ (D @ Rx).T` for an HxW image X, with Ry, Rx the
  exact weights PIL's Lanczos resize to 32 uses (PIL rounds to 8 bits between its
  two passes; this does not, which moves a bit near the median now and then).
- `phash_pixels`, for a stack of 32x32 gray images: the DCT of a whole batch as two
  matrix products (`D @ X @ D.T`).
Every image wit hashes is first brought to one canonical view (alpha on white,
border padding removed): see wit_builder.canonical, whose `signature` calls
`phash_array` on that view (`canonical.phash_bytes` for encoded images).

Near duplicates are found by multi-index hashing: the 64 bits are split into `m`
bands; two hashes within `k` bits of each other differ in at most `k // m` bits in
at least one band (pigeonhole). So a candidate pair shares, in some band, a value
within `k // m` bit flips; DuckDB finds those with an equi-join on (band, value)
and keeps the pairs whose full Hamming distance `bit_count(xor(a, b))` is <= k.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np

HASH_SIZE = 8          # 8x8 = 64 bits
IMG_SIZE = 32          # imagehash's highfreq_factor 4: resize to 32x32 before the DCT


def _dct_rows() -> np.ndarray:
    """The first HASH_SIZE rows of the (unnormalised) DCT-II matrix of size IMG_SIZE."""
    k = np.arange(HASH_SIZE)[:, None]
    n = np.arange(IMG_SIZE)[None, :]
    return np.cos(np.pi * k * (2 * n + 1) / (2 * IMG_SIZE))


_D = _dct_rows()


def phash_pixels(gray: np.ndarray) -> np.ndarray:
    """pHashes (uint64) of a stack of 32x32 grayscale images, shape (B, 32, 32).

    A constant factor between this DCT and scipy's does not change which
    coefficients are above the median, so the bits equal imagehash's.
    """
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim == 2:
        gray = gray[None]
    if gray.shape[1:] != (IMG_SIZE, IMG_SIZE):
        raise ValueError(f"expected (B, {IMG_SIZE}, {IMG_SIZE}) pixels, got {gray.shape}")
    n = len(gray)
    # D @ X @ D.T for every X as two large matrix products over the whole stack.
    y = gray.reshape(n * IMG_SIZE, IMG_SIZE) @ _D.T                        # rows: X @ D.T
    y = y.reshape(n, IMG_SIZE, HASH_SIZE).transpose(0, 2, 1).reshape(n * HASH_SIZE, IMG_SIZE) @ _D.T
    low = y.reshape(n, HASH_SIZE, HASH_SIZE).transpose(0, 2, 1).reshape(n, HASH_SIZE * HASH_SIZE)
    return np.packbits(_bits(low), axis=1).view(">u8").ravel().astype(np.uint64)


def _bits(low: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Hash bits of rows of 64 DCT coefficients: above the row's median (by more than
    `margin` times the largest AC coefficient). Coefficients within rounding noise of
    zero (1e-5 of the largest) count as zero, so a flat image hashes to
    0x8000000000000000 however it was computed, as with imagehash."""
    low = np.where(np.abs(low) <= 1e-5 * np.abs(low).max(axis=1, keepdims=True), 0.0, low)
    mid = np.sort(low, axis=1)[:, 31:33]  # the median of 64: the mean of the middle two
    above = (mid[:, :1] + mid[:, 1:]) / 2
    if margin:
        above = above + margin * np.abs(low[:, 1:]).max(axis=1, keepdims=True)
    return low > above


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


@functools.lru_cache(maxsize=1024)
def _resize_dct(n_in: int) -> np.ndarray:
    """(D @ R) as float32, shape (8, n_in): R is the (32, n_in) matrix of PIL's Lanczos
    resize from n_in to 32 pixels along one axis (same centres, support and
    normalisation as PIL's precompute_coeffs), D the DCT rows."""
    scale = n_in / IMG_SIZE
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    centre = (np.arange(IMG_SIZE) + 0.5)[:, None] * scale
    x = np.arange(n_in)[None, :]
    lo = np.maximum((centre - support + 0.5).astype(int), 0)
    hi = np.minimum((centre + support + 0.5).astype(int), n_in)
    r = np.where((x >= lo) & (x < hi), _lanczos((x - centre + 0.5) / filterscale), 0.0)
    r /= r.sum(axis=1, keepdims=True)
    return np.ascontiguousarray((_D @ r).astype(np.float32))


def phash_array(pixels: np.ndarray, channels: str = "BGR", margin: float = 0.0) -> int:
    """The pHash (as a signed 64-bit int, the Parquet type) of one decoded image.

    `pixels`: (H, W) gray or (H, W, 3|4) colour in `channels` order ("BGR" as OpenCV
    decodes, or "RGB"; a 4th, alpha, channel is ignored as PIL's convert("L") does),
    uint8 or uint16. Gray is ITU-R 601 luma, as PIL and OpenCV compute it.
    `margin` > 0 sets a bit only where a coefficient exceeds the median by more than
    that share of the largest AC coefficient (wit_builder.canonical: STABLE_MARGIN);
    0 is the standard pHash.
    """
    a = np.asarray(pixels)
    if a.ndim == 3:
        if a.shape[2] == 1:
            a = a[:, :, 0]
        elif a.shape[2] in (3, 4):
            import cv2
            code = cv2.COLOR_BGR2GRAY if channels == "BGR" else cv2.COLOR_RGB2GRAY
            a = cv2.cvtColor(np.ascontiguousarray(a[:, :, :3]), code)
        else:
            raise ValueError(f"expected 1, 3 or 4 channels, got {a.shape[2]}")
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    x = a.astype(np.float32)
    if a.dtype == np.uint16:
        x /= 257.0
    low = (_resize_dct(a.shape[0]) @ x) @ _resize_dct(a.shape[1]).T
    return int(np.packbits(_bits(low.reshape(1, -1), margin)).view(">i8")[0])


def hamming(a, b) -> np.ndarray:
    """Bit distance between two arrays of 64-bit hashes (signed or unsigned)."""
    x = np.bitwise_xor(np.asarray(a).view(np.uint64), np.asarray(b).view(np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


# ---------------------------------------------------------------------------------
# Near-duplicate search: multi-index hashing in DuckDB


def _flips(width: int, radius: int) -> list[int]:
    """Every `width`-bit mask with at most `radius` bits set (0 included)."""
    out = []
    for r in range(radius + 1):
        for bits in itertools.combinations(range(width), r):
            out.append(sum(1 << b for b in bits))
    return out


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def plan_bands(n_probe: int, n_build: int, k: int, self_join: bool) -> tuple[int, int]:
    """(bands m, radius r = k // m) minimising probe rows plus expected candidate pairs.

    A probe row is one (hash, band, flipped value); a candidate is a probe row that
    meets a build row with the same (band, value), which for spread-out hashes
    happens with probability about 1 / 2**(bits per band).
    """
    best = None
    for m in range(1, k + 2):
        width, radius = 64 // m, k // m
        variants = sum(math.comb(width, i) for i in range(radius + 1))
        probes = n_probe * m * variants
        candidates = probes * n_build / 2.0 ** width / (2 if self_join else 1)
        cost = probes + candidates
        if best is None or cost < best[0]:
            best = (cost, m, radius)
    return best[1], best[2]


def near_pairs(con, left: str, k: int, right: str | None = None,
               bands: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Pairs of ids whose hashes are within `k` bits, as a pyarrow Table (a, b).

    `left` and `right` name DuckDB tables or views with columns (id BIGINT,
    phash BIGINT). Without `right`, pairs within `left` are returned once each with
    a < b; with `right`, a is a left id and b a right id. Also returns a summary
    of the search (bands, radius, flips per band, pairs). `bands` overrides the
    number of bands `plan_bands` would choose.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    n_left = con.execute(f"SELECT count(*) FROM {left}").fetchall()[0][0]
    n_right = n_left if right is None else con.execute(f"SELECT count(*) FROM {right}").fetchall()[0][0]
    # Probe from the smaller side (for a self-join both sides are the same).
    probe, build = (left, right or left) if n_left <= n_right else (right, left)
    swapped = right is not None and probe != left
    m, radius = plan_bands(min(n_left, n_right), max(n_left, n_right), k, right is None)
    if bands is not None:
        m, radius = bands, k // bands
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    shifts = [sum(widths[:i]) for i in range(m)]
    con.execute("CREATE OR REPLACE TEMP TABLE mih_bands (band INTEGER, shift INTEGER, mask BIGINT)")
    con.executemany("INSERT INTO mih_bands VALUES (?, ?, ?)",
                    [[i, s, _signed((1 << w) - 1)] for i, (s, w) in enumerate(zip(shifts, widths))])
    con.execute("CREATE OR REPLACE TEMP TABLE mih_flips (band INTEGER, flip BIGINT)")
    flips = [[i, _signed(f)] for i, w in enumerate(widths) for f in _flips(w, radius)]
    con.executemany("INSERT INTO mih_flips VALUES (?, ?)", flips)
    order = "AND p.id < b.id" if right is None else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE mih_build AS
        SELECT t.id, t.phash, mb.band, (t.phash >> mb.shift) & mb.mask AS v
        FROM {build} t, mih_bands mb""")
    table = con.sql(f"""
        WITH keys AS (
            SELECT t.id, t.phash, mb.band, (t.phash >> mb.shift) & mb.mask AS v
            FROM {probe} t, mih_bands mb),
        probes AS (
            SELECT k.id, k.phash, k.band, xor(k.v, f.flip) AS v
            FROM keys k JOIN mih_flips f USING (band))
        SELECT DISTINCT p.id AS a, b.id AS b
        FROM probes p JOIN mih_build b ON p.band = b.band AND p.v = b.v
        WHERE bit_count(xor(p.phash, b.phash)) <= {int(k)} {order}
        """).to_arrow_table()
    for t in ("mih_build", "mih_flips", "mih_bands"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    if swapped:
        table = table.rename_columns(["b", "a"]).select(["a", "b"])
    return table, {"bands": m, "radius": radius, "flips_per_band": len(flips) // m,
                   "pairs": table.num_rows}


def keepers(n: int, a, b) -> np.ndarray:
    """Greedy dedup on nodes 0..n-1 (a smaller id is preferred) with edges (a[i], b[i]).

    Nodes are taken in id order: a node is kept unless an already kept node is its
    neighbour, in which case it is a duplicate of the smallest such node. Returns for
    every node the node it is kept as (itself when kept). Unlike connected
    components, this never chains: a dropped node is always within one edge (k bits)
    of the node it names, however long a path of near duplicates runs through it.

    The sequential rule is computed in parallel rounds over the edge list (numpy): a
    node is decided once every smaller neighbour is; it is dropped as soon as one
    smaller neighbour is kept. Each round decides at least the smallest undecided node.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    lo_all, hi_all = np.minimum(a, b), np.maximum(a, b)
    lo, hi = lo_all[lo_all != hi_all], hi_all[lo_all != hi_all]
    state = np.zeros(n, dtype=np.int8)  # 0 undecided, 1 kept, 2 dropped
    while True:
        undecided = state == 0
        if not undecided.any():
            break
        kept_below = np.zeros(n, dtype=bool)
        kept_below[hi[state[lo] == 1]] = True
        open_below = np.zeros(n, dtype=bool)
        open_below[hi[state[lo] == 0]] = True
        state[undecided & kept_below] = 2
        state[undecided & ~kept_below & ~open_below] = 1
        still = state[hi] == 0  # only edges into undecided nodes can decide anything
        lo, hi = lo[still], hi[still]
    out = np.arange(n, dtype=np.int64)
    to_kept = (state[lo_all] == 1) & (state[hi_all] == 2)
    best = np.full(n, n, dtype=np.int64)
    np.minimum.at(best, hi_all[to_kept], lo_all[to_kept])
    dropped = state == 2
    out[dropped] = best[dropped]
    return out
