"""Curate: pHash, near-duplicate search, filters, dedup and the SQL a user runs on the result."""
from __future__ import annotations

import io
import itertools
import re
import shlex
import shutil
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support.fetch import Sample, encode, make_fetch, make_queries, picture, write_selected
from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed, read_record
from wit_builder.canonical import (
    BLANK_DETAIL,
    colour_distance,
    phash_bytes,
    signature,
    signature_bytes,
    thumbs,
)
from wit_builder.demo import imageserver
from wit_builder.errors import WitError
from wit_builder.phash import hamming, keepers, near_pairs, phash_array, phash_pixels, plan_bands
from wit_builder.stages.curate import curate
from wit_builder.stages.fetch import fetch

REPO = Path(__file__).resolve().parents[3]
FOX_URL = "https://upload.wikimedia.org/wikipedia/commons/4/4f/Red_fox_in_snow.jpg"
FOX_TEXT = "red fox (Vulpes vulpes) in snow"
FOX_UID = "597b5e388d5875be1a87875db95e9716"  # the uid docs/curate.md's examples ask about


# ---------------------------------------------------------------------------------
# pHash


def full_size_phash(data: bytes) -> int:
    """imagehash.phash's recipe: full decode, grayscale, Lanczos to 32x32, DCT, median."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    return int(phash_pixels(np.asarray(im))[0])


def test_phash_bits_are_the_dct_definition():
    """Bits equal a DCT-II written out from its definition (and scipy's, as imagehash uses)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 32, 32)).astype(np.uint8)
    n = np.arange(32)
    basis = np.array([[np.cos(np.pi * k * (2 * i + 1) / 64) for i in n] for k in range(8)])
    for img, got in list(zip(pixels, phash_pixels(pixels)))[:4]:
        coeffs = np.array([[sum(basis[u, x] * basis[v, y] * float(img[x, y])
                                for x in range(32) for y in range(32))
                            for v in range(8)] for u in range(8)]).ravel()
        bits = "".join("1" if c > np.median(coeffs) else "0" for c in coeffs)
        assert int(got) == int(bits, 2)
    fftpack = pytest.importorskip("scipy.fftpack")
    for img, got in zip(pixels, phash_pixels(pixels)):
        low = fftpack.dct(fftpack.dct(img.astype(float), axis=0), axis=1)[:8, :8]
        assert int(got) == int("".join("1" if c else "0" for c in (low > np.median(low)).ravel()), 2)


def test_phash_equals_imagehash_on_the_same_pixels():
    imagehash = pytest.importorskip("imagehash")  # installed with the [bench] extra
    flat = encode(Image.new("RGB", (50, 40), (90, 20, 200)), "PNG")
    for data in [encode(picture(seed)) for seed in range(5)] + [flat]:
        assert full_size_phash(data) == int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


def full_size_canonical(data: bytes) -> int:
    """The canonical pHash (wit_builder.canonical.signature) of the fully decoded image."""
    return signature(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), "RGB")[0]


def test_fast_decoding_stays_close_to_the_full_size_hash():
    rng = np.random.default_rng(1)
    blobs = []
    for seed in range(16):
        w = int(rng.integers(200, 600))
        blobs.append(encode(picture(seed, w, int(w * rng.uniform(0.6, 1.4))),
                            quality=int(rng.integers(70, 96))))
    blobs.append(encode(picture(99, 300, 200), "PNG"))
    fast = phash_bytes(blobs)  # JPEGs decoded at reduced scale
    full = np.array([full_size_canonical(b) for b in blobs], dtype=np.int64)
    d = hamming(fast, full)
    # measured: mean 1.5, max 3 (OpenCV's reduced decoding; PIL's draft: 1.4, 3)
    assert d.mean() <= 2 and d.max() <= 6, d


def test_phash_of_decoded_pixels_is_the_resize_and_dct_folded_together():
    """phash_array (what fetch computes on the pixels it encodes) equals Lanczos to
    32x32 in floating point, then the DCT; PIL's 8-bit resize rounds between passes,
    so imagehash's recipe may differ from it in a bit near the median."""
    for seed, (w, h) in enumerate([(32, 32), (256, 256), (320, 240), (97, 403), (20, 12)]):
        rgb = np.asarray(picture(seed, w, h))
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        exact = Image.fromarray(gray).convert("F").resize((32, 32), Image.Resampling.LANCZOS)
        assert phash_array(gray) == int(phash_pixels(np.asarray(exact)).view(np.int64)[0]), (w, h)
        # colour orders, alpha, a channel axis and 16 bits all give the same picture's hash
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        rgba = np.dstack([rgb, np.full((h, w), 7, np.uint8)])
        variants = [phash_array(bgr), phash_array(rgb, channels="RGB"),
                    phash_array(rgba, channels="RGB"), phash_array(gray[:, :, None]),
                    phash_array(gray.astype(np.uint16) * 257)]
        assert hamming(np.array(variants), np.full(5, phash_array(gray))).max() <= 1
    d = hamming(np.array([phash_array(np.asarray(picture(s, 256, 256).convert("L")))
                          for s in range(30)]),
                np.array([full_size_phash(encode(picture(s, 256, 256), "PNG")) for s in range(30)]))
    assert d.mean() <= 0.5 and d.max() <= 3, d
    # a flat image has only a DC coefficient: one hash, whichever way it is computed
    flat = np.full((120, 90, 3), (30, 140, 200), np.uint8)
    top = np.array([1 << 63], dtype=np.uint64).view(np.int64)[0]
    assert phash_array(flat) == phash_array(flat[:, :, 0]) == top
    assert phash_bytes([encode(Image.fromarray(flat)), encode(Image.fromarray(flat), "PNG")]
                       ).tolist() == [top, top]
    with pytest.raises(ValueError, match="channels"):
        phash_array(np.zeros((8, 8, 2), np.uint8))


def judged_copies(blobs_a, blobs_b, cfg=curate.Config(), eval=False) -> np.ndarray:  # noqa: A002
    """curate's two-stage decision on pairs of encoded images: pHash of the canonical
    view within --near-dup-bits (--eval-bits), confirmed by the colour check."""
    fa = [signature_bytes(b) for b in blobs_a]
    fb = [signature_bytes(b) for b in blobs_b]
    close = hamming(np.array([f["phash"] for f in fa]), np.array([f["phash"] for f in fb]))
    colour = colour_distance(thumbs([f["thumb"] for f in fa]), thumbs([f["thumb"] for f in fb]))
    if eval:
        return (close <= cfg.eval_bits) & (colour <= cfg.eval_colour)
    return (close <= cfg.near_dup_bits) & (colour <= cfg.near_dup_colour)


def test_copies_are_close_and_different_pictures_far():
    for seed in range(4):
        original = picture(100 + seed, 480, 360)
        copies = [encode(original), encode(original.resize((320, 240), Image.Resampling.BICUBIC)),
                  encode(original.resize((200, 150)), quality=50), encode(original, quality=25),
                  encode(original, "PNG"), encode(original.crop((0, 0, 466, 360)))]  # 3% cropped
        # the build-wide search (5 bits) catches all but the crop, whose pHash moves up to
        # 10 bits; the eval search (10 bits) catches that too
        assert judged_copies([copies[0]] * 5, copies[:5]).all(), seed
        assert judged_copies([copies[0]] * len(copies), copies, eval=True).all(), seed
        # a grayscale version has the same pHash but not the colours: a different picture
        gray = encode(original.convert("L"))
        assert hamming(phash_bytes([gray]), phash_bytes(copies[:1]))[0] <= 2
        assert not judged_copies(copies[:1], [gray]).any()
    others = [encode(picture(seed)) for seed in range(40)]
    i, j = zip(*itertools.combinations(range(40), 2))
    assert not judged_copies([others[k] for k in i], [others[k] for k in j], eval=True).any()


def test_undecodable_bytes_are_reported_not_raised():
    good = encode(picture(3))
    for data in (b"", b"not an image at all", good[:len(good) // 3], b"\xff\xd8\xff" + b"\0" * 500):
        facts = signature_bytes(data)
        assert facts["phash"] is None and facts["thumb"] is None and facts["error"], data[:10]
    with pytest.raises(ValueError, match="cannot be decoded"):
        phash_bytes([good, b"junk"])


def test_jpeg_frame_header_agrees_with_pil():
    """curate reads a JPEG's size from its frame header and lets OpenCV decode it; what
    the header walk leaves out (CMYK, not JPEG, a header cut short) goes to PIL, and
    every kind gets the same size, format and signature either way."""
    from wit_builder.canonical import decode, jpeg_frame
    im = picture(5, 300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: ignored, as PIL and img2dataset do
    kinds = {"baseline": encode(im, quality=90), "gray": encode(im.convert("L"), quality=90),
             "progressive": encode(im, quality=85, progressive=True),
             "exif": encode(im, quality=90, exif=exif.tobytes()),
             "cmyk": encode(im.convert("CMYK"), quality=90), "png": encode(im, "PNG")}
    for name, data in kinds.items():
        frame = jpeg_frame(data)
        with Image.open(io.BytesIO(data)) as ref:
            if name in ("cmyk", "png"):
                assert frame is None, name
            else:
                assert frame == (ref.width, ref.height, len(ref.getbands())), name
            facts, pixels, _ = decode(data)
            assert (facts["width"], facts["height"], facts["format"]) == (300, 200, ref.format)
            assert pixels is not None and facts["error"] is None, name
    head = kinds["baseline"]
    assert jpeg_frame(head[:20]) is None and jpeg_frame(b"\xff\xd8\xff\xe0\x00\x01") is None
    assert jpeg_frame(b"\xff\xd8" + b"\xff\xfe\xff\xff" * 10) is None  # no frame in reach


# ---------------------------------------------------------------------------------
# Near-duplicate search and the greedy keep


def brute_pairs(a, b, k, self_join):
    d = hamming(np.repeat(a, len(b)), np.tile(b, len(a))).reshape(len(a), len(b))
    hits = {(i, j) for i, j in zip(*np.nonzero(d <= k))}
    return {(i, j) for i, j in hits if i < j} if self_join else hits


def planted_hashes(n, rng, flips=(0, 1, 2, 3, 4, 5, 7, 9)):
    """Random hashes plus near copies at several distances (some chained)."""
    base = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64)
    out = [base]
    for d in flips:
        src = base[rng.choice(n, 8, replace=False)].view(np.uint64).copy()
        for i in range(len(src)):
            for bit in rng.choice(64, d, replace=False):
                src[i] ^= np.uint64(1) << np.uint64(bit)
        out.append(src.view(np.int64))
    return np.concatenate(out)


@pytest.mark.parametrize("k,bands", [(0, None), (4, None), (4, 3), (6, 3)])
def test_near_pairs_equal_brute_force(k, bands):
    rng = np.random.default_rng(k * 10 + (bands or 0))
    h = planted_hashes(150, rng)
    con = duckdb.connect()
    con.register("h", pa.table({"id": np.arange(len(h)), "phash": h}))
    got, stats = near_pairs(con, "h", k, bands=bands)
    assert set(zip(got["a"].to_pylist(), got["b"].to_pylist())) == brute_pairs(h, h, k, True)
    assert stats["pairs"] == got.num_rows and (bands is None or stats["bands"] == bands)
    # across two sets, the smaller one on either side
    small = planted_hashes(10, rng, flips=(1, 3))
    con.register("s", pa.table({"id": np.arange(len(small)) + 1000, "phash": small}))
    mixed = np.concatenate([h[:60], small[5:]])
    con.register("m", pa.table({"id": np.arange(len(mixed)), "phash": mixed}))
    for left, right, lh, rh in (("m", "s", mixed, small), ("s", "m", small, mixed)):
        got, _ = near_pairs(con, left, k, right=right, bands=bands)
        lid = np.arange(len(lh)) + (1000 if left == "s" else 0)
        rid = np.arange(len(rh)) + (1000 if right == "s" else 0)
        want = {(lid[i], rid[j]) for i, j in brute_pairs(lh, rh, k, False)}
        assert set(zip(got["a"].to_pylist(), got["b"].to_pylist())) == want


def test_band_plan_scales_with_the_number_of_hashes():
    assert plan_bands(1000, 1000, 4, True) == (5, 0)         # small: exact bands
    assert plan_bands(1_000_000, 1_000_000, 4, True) == (3, 1)  # large: wider bands, 1 flip


def test_keepers_follow_the_sequential_greedy_rule():
    """Take nodes in id order; keep one unless a kept node is its neighbour, else name
    the smallest kept neighbour. The numpy rounds must give exactly that."""
    rng = np.random.default_rng(5)
    for n, m in [(300, 200), (300, 900), (50, 600), (1000, 3000)]:
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        adj = {i: set() for i in range(n)}
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                adj[x].add(y)
                adj[y].add(x)
        want, kept = [], set()
        for v in range(n):
            near = sorted(u for u in adj[v] if u in kept)
            want.append(near[0] if near else v)
            if not near:
                kept.add(v)
        assert keepers(n, a, b).tolist() == want
    assert keepers(3, [], []).tolist() == [0, 1, 2]
    # a chain 0-1-2-3: 1 is a copy of 0, so 2 has no kept neighbour and stays
    assert keepers(4, [3, 2, 1], [2, 1, 0]).tolist() == [0, 0, 2, 2]


# ---------------------------------------------------------------------------------
# The curate stage on a crafted fetch output


def stored_by_fetch(data: bytes, size: int = 256) -> tuple[bytes, tuple[int, int]]:
    """What fetch stores for downloaded bytes: img2dataset's Resizer with fetch's
    defaults (transparency on white, longer side to `size`, padded to a square with
    white: --resize-mode border, JPEG q95); and the original size."""
    from img2dataset.resizer import Resizer
    out = Resizer(size, "border", False, encode_quality=95, encode_format="jpg")(io.BytesIO(data))
    assert out[0] is not None, out[-1]
    return out[0], (out[3], out[4])


def balloon(colour, size=(360, 420)) -> Image.Image:
    """A clip-art balloon on a transparent background."""
    from PIL import ImageDraw
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    d = ImageDraw.Draw(im)
    d.ellipse([w * .25, h * .1, w * .75, h * .65], fill=colour + (255,))
    d.line([w * .5, h * .65, w * .48, h * .95], fill=(60, 60, 60, 255), width=4)
    return im


def silhouette(size=(300, 360)) -> Image.Image:
    """A black cat whose transparent pixels are black too (alpha is the only drawing)."""
    from PIL import ImageDraw
    mask = Image.new("L", size, 0)
    w, h = size
    d = ImageDraw.Draw(mask)
    d.ellipse([w * .25, h * .35, w * .75, h * .9], fill=255)
    d.ellipse([w * .33, h * .12, w * .67, h * .45], fill=255)
    d.polygon([(w * .35, h * .2), (w * .38, h * .02), (w * .48, h * .15)], fill=255)
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.putalpha(mask)
    return im


def crafted_samples(eval_dir: Path) -> dict[str, Sample]:
    """One sample per case; the name says what curate must decide."""
    lake = picture(4, 480, 360)
    fox = encode(picture(1, 400, 300))
    mountain = picture(5, 320, 240)
    eval_exact, eval_near = picture(6), picture(7)
    eval_dir.mkdir()
    (eval_dir / "cls").mkdir()
    (eval_dir / "cls" / "exact.jpg").write_bytes(encode(eval_exact))
    (eval_dir / "near.png").write_bytes(encode(eval_near, "PNG"))
    (eval_dir / "labels.txt").write_text("not an image, ignored\n")
    # an eval clip-art with transparency, and an opaque non-square photo: their fetched
    # copies are composited on white, scaled to 80% and padded to a square
    clipart, wide, cat = balloon((40, 90, 220)), picture(13, 524, 274), silhouette()
    (eval_dir / "clipart.png").write_bytes(encode(clipart, "PNG"))
    (eval_dir / "wide.jpg").write_bytes(encode(wide))
    (eval_dir / "cat.png").write_bytes(encode(cat, "PNG"))
    clipart_copy, clipart_size = stored_by_fetch(encode(clipart.resize((288, 336)), "PNG"))
    wide_copy, wide_size = stored_by_fetch(encode(wide.resize((419, 219))))
    cat_copy, cat_size = stored_by_fetch(encode(cat.resize((240, 288)), "PNG"))
    red, green = (stored_by_fetch(encode(balloon(c), "PNG")) for c in ((220, 30, 40), (40, 170, 60)))
    flat = Image.new("RGB", (300, 240), (30, 140, 200))
    ramp = Image.fromarray(np.linspace([250, 80, 20], [20, 60, 160], 320)[None].repeat(240, 0)
                           .astype(np.uint8))
    good = "a photo of a quiet harbour at dawn"
    cases = {
        "keep_fox": Sample(FOX_URL, FOX_TEXT, fox, selected_by=1, query_ids=[1, 2], shard=0),
        "exact_duplicate": Sample("https://mirror4.example.org/fox.jpg", "fox in the snow, a copy",
                                  fox, selected_by=2, query_ids=[2], shard=1),
        "keep_lake": Sample("http://x/lake", "a big picture of a lake", encode(lake), shard=0),
        "near_resized": Sample("http://x/lake-small", "a resized picture of a lake",
                               encode(lake.resize((320, 240), Image.Resampling.BICUBIC)), shard=1),
        # the same bytes as near_resized: named after it, not after the lake it copies
        "exact_of_near": Sample("http://x/lake-small-again", "the resized lake once more",
                                encode(lake.resize((320, 240), Image.Resampling.BICUBIC)), shard=2),
        "keep_mountain": Sample("http://x/mountain", "mountains under a clear sky",
                                encode(mountain), shard=0, selected_by=3, query_ids=[3]),
        "near_reencoded": Sample("http://x/mountain-q25", "mountains, a blurry copy",
                                 encode(mountain, quality=25), shard=1),
        "too_small": Sample("http://x/small", "a small picture of a cat", encode(picture(2, 150, 120))),
        "too_small_original": Sample("http://x/upscaled", "a cat picture that was upscaled",
                                     encode(picture(12)), original_size=(120, 90)),
        "bad_aspect": Sample("http://x/wide", "a wide panorama of hills", encode(picture(3, 700, 200))),
        "short_words": Sample("http://x/words", "lighthouses everywhere", encode(picture(8))),
        "short_chars": Sample("http://x/chars", "a b c", encode(picture(9))),
        "too_small_and_short": Sample("http://x/both", "cat", encode(picture(10, 100, 100))),
        "junk": Sample("http://x/junk", "junk bytes posing as a jpeg", b"not an image at all"),
        "truncated": Sample("http://x/trunc", "a truncated jpeg from a shard",
                            encode(picture(11))[:2500]),
        "missing": Sample("http://x/missing", "success but no image in the shard", None),
        "failed": Sample("http://x/404", "never downloaded at all", None, status="not_found",
                         error="HTTP 404"),
        "decode_error": Sample("http://x/bad", "fetch could not resize this", None,
                               status="decode_error", error="cannot identify image"),
        "eval_exact": Sample("http://x/eval1", "a leaked benchmark image", encode(eval_exact)),
        "eval_near": Sample("http://x/eval2", "a leaked benchmark image, re-encoded",
                            encode(eval_near, quality=60)),
        "eval_transparent": Sample("http://x/balloon-blue", "a blue balloon clip-art, stored",
                                   clipart_copy, original_size=clipart_size),
        "eval_padded": Sample("http://x/wide-photo", "a wide photo, stored padded",
                              wide_copy, original_size=wide_size),
        "eval_silhouette": Sample("http://x/cat", "a black cat silhouette, stored",
                                  cat_copy, original_size=cat_size),
        "keep_red_balloon": Sample("http://x/balloon-red", "a red balloon on white",
                                   red[0], original_size=red[1]),
        "keep_green_balloon": Sample("http://x/balloon-green", "a green balloon on white",
                                     green[0], original_size=green[1]),
        "blank_flat": Sample("http://x/flat", "a plain blue rectangle image", encode(flat)),
        "blank_gradient": Sample("http://x/ramp", "an orange to blue gradient", encode(ramp, "PNG")),
    }
    for i in range(6):
        cases[f"keep_other_{i}"] = Sample(f"http://x/other{i}", f"{good} number {i}",
                                          encode(picture(200 + i, 360, 270)))
    return cases


EXPECTED = {
    "keep_fox": None, "exact_duplicate": "exact_duplicate", "keep_lake": None,
    "near_resized": "near_duplicate", "exact_of_near": "exact_duplicate", "keep_mountain": None, "near_reencoded": "near_duplicate",
    "too_small": "too_small", "too_small_original": "too_small", "bad_aspect": "bad_aspect",
    "short_words": "short_caption", "short_chars": "short_caption",
    "too_small_and_short": "too_small", "junk": "undecodable", "truncated": "undecodable",
    "missing": "undecodable", "failed": "failed_download", "decode_error": "undecodable",
    "eval_exact": "eval_set", "eval_near": "eval_set", "eval_transparent": "eval_set",
    "eval_padded": "eval_set", "eval_silhouette": "eval_set", "keep_red_balloon": None,
    "keep_green_balloon": None, "blank_flat": "blank", "blank_gradient": "blank",
    **{f"keep_other_{i}": None for i in range(6)},
}


def expected(cases: dict[str, Sample]) -> dict[str, str | None]:
    """EXPECTED, with the two samples of identical bytes: the better-ranked one (same
    size and bytes: the smaller uid) is near_duplicate, the other exact_duplicate."""
    first, second = sorted(["near_resized", "exact_of_near"], key=lambda n: cases[n].uid)
    return {**EXPECTED, first: "near_duplicate", second: "exact_duplicate"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_cluster):
    """A crafted fetch output, curated through the CLI with every curate flag."""
    root = tmp_path_factory.mktemp("curate")
    build = root / "wit-data"
    cases = crafted_samples(root / "eval")
    make_queries(build, ["fox", "snow", "lake", "mountain"])
    make_fetch(build, list(cases.values()), shards=3)
    code = cli.main(["curate", "--out", str(build), "--min-side", "200", "--max-aspect", "3",
                     "--min-caption-words", "3", "--min-caption-chars", "6",
                     "--near-dup-bits", str(curate.NEAR_DUP_BITS),
                     "--near-dup-colour", str(curate.NEAR_DUP_COLOUR),
                     "--eval-images", str(root / "eval")])
    assert code == 0
    rows = {r["uid"]: r for r in pq.read_table(committed(build, "curate")).to_pylist()}
    return build, cases, {name: rows[s.uid] for name, s in cases.items()}, root


@pytest.mark.slow  # Ray
def test_every_sample_gets_its_first_reason(world):
    build, cases, rows, _ = world
    assert len(pq.read_table(committed(build, "curate"))) == len(cases)  # one row per selected uid
    assert {name: r["drop_reason"] for name, r in rows.items()} == expected(cases)
    assert all(r["keep"] == (r["drop_reason"] is None) for r in rows.values())
    assert set(EXPECTED.values()) - {None} == set(curate.DROP_REASONS)  # every reason is exercised


@pytest.mark.slow  # Ray
def test_facts_are_measured_from_the_shard(world):
    build, cases, rows, _ = world
    lake = rows["keep_lake"]
    assert (lake["width"], lake["height"], lake["aspect"]) == (480, 360, pytest.approx(4 / 3))
    assert lake["phash"] == int(phash_bytes([cases["keep_lake"].image])[0])
    hex_ = catalog.query(build, "SELECT printf('%016x', phash) AS h FROM samples "
                         "WHERE url = 'http://x/lake'").to_pylist()[0]["h"]
    assert hex_ == format(lake["phash"] & (2 ** 64 - 1), "016x")  # as docs/curate.md says
    assert lake["image_bytes"] == len(cases["keep_lake"].image) and lake["image_format"] == "jpg"
    assert rows["bad_aspect"]["aspect"] == pytest.approx(3.5)
    assert rows["too_small_original"]["width"] == 320  # stored size; the filter used the original
    assert "truncated" in rows["truncated"]["error"]
    assert rows["junk"]["error"] == "not a recognised image format" and rows["junk"]["phash"] is None
    assert "no image for key" in rows["missing"]["error"]
    assert rows["failed"]["error"] == "HTTP 404" and rows["failed"]["status"] == "not_found"


@pytest.mark.slow  # Ray
def test_duplicates_name_the_sample_kept(world):
    _, cases, rows, _ = world
    assert rows["exact_duplicate"]["duplicate_of"] == FOX_UID == cases["keep_fox"].uid
    # the larger image of a near-duplicate pair is kept; both sit in different shards
    near = next(rows[n] for n in ("near_resized", "exact_of_near")
                if rows[n]["drop_reason"] == "near_duplicate")
    assert near["duplicate_of"] == cases["keep_lake"].uid
    assert near["fetch_shard"] != rows["keep_lake"]["fetch_shard"]
    assert rows["near_reencoded"]["duplicate_of"] == cases["keep_mountain"].uid
    assert rows["eval_exact"]["duplicate_of"] == "cls/exact.jpg"
    assert rows["eval_near"]["duplicate_of"] == "near.png"
    # eval images hashed as stored copies are: transparency on white, padding cut
    assert rows["eval_transparent"]["duplicate_of"] == "clipart.png"
    assert rows["eval_padded"]["duplicate_of"] == "wide.jpg"
    assert rows["eval_silhouette"]["duplicate_of"] == "cat.png"
    assert all(r["duplicate_of"] is None for r in rows.values()
               if r["drop_reason"] not in ("exact_duplicate", "near_duplicate", "eval_set"))


@pytest.mark.slow  # Ray
def test_provenance_is_true(world):
    """An exact duplicate names a sample with the same bytes; when that one is itself a
    near duplicate, its own duplicate_of names the sample kept, so the chain is explicit."""
    build, cases, rows, _ = world
    by_uid = {r["uid"]: r for r in pq.read_table(committed(build, "curate")).to_pylist()}
    exact = [r for r in by_uid.values() if r["drop_reason"] == "exact_duplicate"]
    assert len(exact) == 2
    for r in exact:
        named = by_uid[r["duplicate_of"]]
        assert named["image_sha256"] == r["image_sha256"] and named["uid"] != r["uid"]
        while not named["keep"]:  # follow the chain to a kept sample
            assert named["drop_reason"] == "near_duplicate"
            named = by_uid[named["duplicate_of"]]
    copy = next(rows[n] for n in ("near_resized", "exact_of_near")
                if rows[n]["drop_reason"] == "exact_duplicate")
    rep = by_uid[copy["duplicate_of"]]
    assert rep["drop_reason"] == "near_duplicate" and rep["duplicate_of"] == cases["keep_lake"].uid
    # the same rule in SQL over the build: no exact duplicate names other bytes
    bad = catalog.query(build, """SELECT count(*) AS n FROM samples s JOIN samples k
                                  ON k.uid = s.duplicate_of WHERE s.drop_reason = 'exact_duplicate'
                                  AND k.image_sha256 <> s.image_sha256""").to_pylist()
    assert bad == [{"n": 0}]


@pytest.mark.slow  # Ray
def test_colour_variants_and_blanks(world):
    """A red and a green balloon of one drawing have (nearly) the same pHash; the colour
    check keeps both. Blank images get their own reason and name nothing."""
    build, cases, rows, _ = world
    red, green = rows["keep_red_balloon"], rows["keep_green_balloon"]
    assert hamming(np.array([red["phash"]]), np.array([green["phash"]]))[0] <= curate.NEAR_DUP_BITS
    assert red["keep"] and green["keep"]
    for name in ("blank_flat", "blank_gradient"):
        assert rows[name]["detail"] < BLANK_DETAIL and rows[name]["duplicate_of"] is None
    assert all(r["detail"] >= BLANK_DETAIL for r in rows.values() if r["keep"])


@pytest.mark.slow  # Ray
def test_kept_per_query_view(world):
    build, cases, rows, _ = world
    got = {r["query_id"]: r for r in catalog.query(build, "SELECT * FROM kept_per_query").to_pylist()}
    for q in range(4):
        mine = [r for r in rows.values() if r["selected_by"] == q]
        assert got[q]["selected"] == len(mine)
        assert got[q]["kept"] == sum(r["keep"] for r in mine)
        assert got[q]["downloaded"] == sum(r["status"] == "success" for r in mine)
        assert got[q]["kept_matching"] == sum(r["keep"] and q in r["query_ids"] for r in rows.values())
    assert (got[2]["selected"], got[2]["kept"], got[2]["kept_matching"]) == (1, 0, 1)


@pytest.mark.slow  # Ray
def test_summary_and_rerun(world, tmp_path, capsys):
    build, cases, _, root = world
    build = Path(shutil.copytree(build, tmp_path / "copy"))  # a copied build still answers
    rec = catalog.query(build, "SELECT rows FROM stages WHERE stage = 'curate'").to_pylist()
    assert rec == [{"rows": len(cases)}]
    args = ["curate", "--out", str(build), "--min-caption-words", "3", "--min-caption-chars", "6",
            "--eval-images", str(root / "eval")]
    assert cli.main(args) == 0
    assert "already done" in capsys.readouterr().out
    # a looser filter reruns curate and keeps more
    res = curate.run(curate.Config(min_side=100, near_dup_bits=-1, eval_bits=-1,
                                   min_caption_words=1, eval_images=str(root / "eval")), build)
    assert not res.skipped
    got = {r["url"]: r["drop_reason"]
           for r in catalog.query(build, "SELECT url, drop_reason FROM samples").to_pylist()}
    assert got["http://x/small"] is None and got["http://x/words"] is None
    # near-duplicate search is off: of the two identical resized lakes one is kept
    assert {got["http://x/lake-small"], got["http://x/lake-small-again"]} == {None, "exact_duplicate"}
    assert got["https://mirror4.example.org/fox.jpg"] == "exact_duplicate"
    assert got["http://x/both"] == "short_caption"   # "cat" is too short either way
    assert res.summary["dropped"]["eval_set"] == 1    # only the byte-identical one now
    # the eval search has its own threshold: on again, with the build-wide search off
    res = curate.run(curate.Config(min_side=100, near_dup_bits=-1, min_caption_words=1,
                                   eval_images=str(root / "eval")), build)
    assert res.summary["dropped"]["eval_set"] == 5 and "near_dup_search" not in res.summary


@pytest.mark.slow  # Ray
def test_fetch_shard_may_be_a_path(build, ray_cluster):
    pics = [encode(picture(s)) for s in (40, 41)]
    samples = [Sample(f"http://x/{i}", f"a picture with number {i}", pics[i % 2]) for i in range(3)]
    make_fetch(build, samples, shards=2, numbered=False)
    res = curate.run(curate.Config(), build)
    assert res.summary["kept"] == 2 and res.summary["dropped"] == {"exact_duplicate": 1}
    tars = {r["fetch_tar"] for r in pq.read_table(committed(build, "curate")).to_pylist()}
    run = read_record(build, "fetch")["run_id"]
    assert tars == {f"fetch/{run}/shards/00000.tar", f"fetch/{run}/shards/00001.tar"}


@pytest.mark.slow  # Ray
def test_user_mistakes_are_witerrors(build, tmp_path, ray_cluster, capsys):
    assert cli.main(["curate", "--out", str(build)]) == 2
    assert "the fetch stage has not finished" in capsys.readouterr().err
    make_fetch(build, [Sample("http://x/a", "a picture of something", encode(picture(1)))], shards=1)
    for flags, message in ((["--eval-images", str(tmp_path / "nope")], "not a directory"),
                           (["--eval-images", str(tmp_path)], "no image files"),
                           (["--max-aspect", "0.5"], "--max-aspect 0.5"),
                           (["--near-dup-bits", "30"], "--near-dup-bits 30"),
                           (["--eval-bits", "17"], "--eval-bits 17"),
                           (["--eval-colour", "300"], "--eval-colour 300")):
        assert cli.main(["curate", "--out", str(build), *flags]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(WitError, match="broken.jpg cannot be decoded"):
        curate.run(curate.Config(eval_images=str(tmp_path / "evals")), build)
    # the image facts of finished shards survive the failed run and are reused by the next
    facts = {p: p.stat().st_mtime_ns for p in (build / "_work").glob("curate-*/facts/*.parquet")}
    assert len(facts) == 1
    with pytest.raises(WitError, match="broken.jpg cannot be decoded"):
        curate.run(curate.Config(eval_images=str(tmp_path / "evals")), build)
    assert {p: p.stat().st_mtime_ns for p in facts} == facts
    (committed(build, "fetch") / "shards" / "00000.tar").unlink()
    with pytest.raises(WitError, match=r"no tar for fetch shard 0.*rerun `wit-build fetch --force"):
        curate.run(curate.Config(), build)


# ---------------------------------------------------------------------------------
# The SQL examples in docs/curate.md, run exactly as written


def sql_examples(doc: Path) -> list[list[str]]:
    block = doc.read_text().split("<!-- sql-examples -->", 1)[1].split("```", 2)[1]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("wit-build sql")]



def docs_with_examples() -> list[Path]:
    """docs/curate.md, and the README once it carries the examples under the same marker."""
    docs = [REPO / "docs" / "curate.md", REPO / "README.md"]
    return [d for d in docs if "<!-- sql-examples -->" in d.read_text()]


@pytest.mark.slow  # Ray
@pytest.mark.parametrize("doc", docs_with_examples(), ids=lambda d: d.name)
def test_sql_examples_work_as_written(world, doc, capsys):
    build, cases, rows, _ = world
    examples = sql_examples(doc)
    assert len(examples) >= 5
    outputs = []
    for argv in examples:
        assert argv[:2] == ["wit-build", "sql"]
        assert cli.main(argv[1:] + ["--out", str(build)]) == 0, argv
        outputs.append(capsys.readouterr().out)
    by_topic = dict(zip(["kept_per_query", "drop_reasons", "most_copies", "copies_of",
                         "within_bits", "eval"], outputs))
    assert re.search(r"^snow\s+1\s+1\s+1\s*$", by_topic["kept_per_query"], re.M)
    for reason in set(EXPECTED.values()) - {None}:
        assert reason in by_topic["drop_reasons"]
    assert FOX_UID in by_topic["most_copies"]
    assert cases["exact_duplicate"].uid in by_topic["copies_of"]
    assert "exact_duplicate" in by_topic["within_bits"] and FOX_UID in by_topic["within_bits"]
    assert "cls/exact.jpg" in by_topic["eval"] and "near.png" in by_topic["eval"]


@pytest.mark.slow  # Ray, a real server, a real fetch
def test_curate_reuses_fetch_phash_and_decodes_changed_bytes(build, tmp_path, ray_cluster,
                                                             monkeypatch):
    """After a real fetch, curate decodes nothing: the pHash fetch computed is used
    while the stored bytes keep their sha256. Bytes changed since are decoded again."""
    files = tmp_path / "files"
    files.mkdir()
    lake = picture(4, 480, 360)
    pics = {"lake.jpg": encode(lake), "lake-small.jpg": encode(lake.resize((320, 240))),
            **{f"p{i}.jpg": encode(picture(300 + i, 360, 270)) for i in range(5)}}
    for name, data in pics.items():
        (files / name).write_bytes(data)
    with imageserver.serve(root=files) as srv:
        write_selected(build, [srv.url(f"/files/{n}") for n in pics])
        fetch.run(fetch.Config(image_size=128, timeout=5.0, retries=0, fetch_shard_size=4,
                               allow_private_network=True, per_host_rps=0), build)
    cfg = curate.Config(min_side=100)
    res = curate.run(cfg, build)
    rows = {r["url"].rsplit("/", 1)[-1]: r for r in pq.read_table(committed(build, "curate")).to_pylist()}
    assert {r["phash_from"] for r in rows.values()} == {"fetch"}
    # what fetch took of the pixels it encoded, and curate of those bytes decoded again
    stored = {}
    for tar in sorted((committed(build, "fetch") / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            stored.update({m.name.split(".")[0]: tf.extractfile(m).read()
                           for m in tf.getmembers() if m.name.endswith(".jpg")})
    status = {r["key"]: r for r in pq.read_table(committed(build, "fetch") / "status").to_pylist()}
    again = [signature_bytes(stored[k]) for k in sorted(stored)]
    d = hamming(np.array([status[k]["stored_phash"] for k in sorted(stored)]),
                np.array([f["phash"] for f in again]))
    colour = colour_distance(thumbs([status[k]["stored_thumb"] for k in sorted(stored)]),
                             thumbs([f["thumb"] for f in again]))
    assert d.max() <= 6 and d.mean() <= 2.5 and colour.max() <= curate.NEAR_DUP_COLOUR, (d, colour)
    assert min(f["detail"] for f in again) >= BLANK_DETAIL  # no photo is blank, either way
    assert min(status[k]["stored_detail"] for k in stored) >= BLANK_DETAIL
    assert res.summary["phash_from_fetch"] == 7 and res.summary["phash_decoded"] == 0
    assert rows["lake-small.jpg"]["drop_reason"] == "near_duplicate"
    assert rows["lake-small.jpg"]["duplicate_of"] == rows["lake.jpg"]["uid"]
    assert sum(r["keep"] for r in rows.values()) == 6

    # Change two stored images behind fetch's back: one to junk of the same length,
    # one to a valid JPEG of another picture.
    junk, other = rows["p0.jpg"], rows["p1.jpg"]
    replacement = encode(picture(999, 128, 96))
    for tar in sorted((committed(build, "fetch") / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
        with tarfile.open(tar, "w") as tf:
            for m, data in members:
                if m.name == f"{junk['key']}.jpg":
                    data = b"\0" * len(data)
                elif m.name == f"{other['key']}.jpg":
                    data = replacement
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
    monkeypatch.chdir(build.parent)  # a relative --out: Ray workers have another cwd
    res = curate.run(cfg, Path(build.name), force=True)
    after = {r["url"].rsplit("/", 1)[-1]: r for r in pq.read_table(committed(build, "curate")).to_pylist()}
    assert after["p0.jpg"]["drop_reason"] == "undecodable" and after["p0.jpg"]["phash"] is None
    assert after["p1.jpg"]["phash_from"] == "decoded" and after["p1.jpg"]["keep"]
    assert after["p1.jpg"]["phash"] == int(phash_bytes([replacement])[0])
    assert after["p1.jpg"]["phash"] != other["phash"]
    assert res.summary["phash_from_fetch"] == 5 and res.summary["phash_decoded"] == 1
    assert {n: r["phash"] for n, r in after.items() if n not in ("p0.jpg", "p1.jpg")} == \
        {n: r["phash"] for n, r in rows.items() if n not in ("p0.jpg", "p1.jpg")}


def test_palette_transparency_decodes_quietly_and_on_white():
    """Curate's workers decode every kind of transparency without PIL's palette warning,
    and hash a palette clip-art as its copy on white is hashed."""
    import warnings
    mask = np.zeros((60, 80), np.uint8)
    mask[15:45, 20:60] = 1
    pal = Image.fromarray(mask, "P")
    pal.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    clip = encode(pal, "PNG", transparency=bytes([0, 255]))  # index 0 transparent (black)
    on_white = Image.new("RGB", (80, 60), "white")
    on_white.paste((200, 30, 40), (20, 15, 60, 45))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        facts = signature_bytes(clip)
    copy = signature_bytes(encode(on_white, "PNG"))
    assert facts["error"] is None and facts["phash"] == copy["phash"]
    assert colour_distance(thumbs([facts["thumb"]]), thumbs([copy["thumb"]]))[0] == 0


def test_eval_images_with_nothing_downloaded_skip_the_search(build, tmp_path, ray_cluster):
    make_fetch(build, [Sample(f"http://x/{i}", "a picture", None, status="connection_error",
                              error="refused") for i in range(3)], shards=1)
    evals = tmp_path / "evals"
    evals.mkdir()
    for i in range(3):
        (evals / f"{i}.png").write_bytes(encode(picture(i), "PNG"))
    res = curate.run(curate.Config(eval_images=str(evals)), build)
    assert res.summary["eval_search"] == "skipped: no sample left to check against --eval-images"
    assert res.rows == 3 and "eval_images" not in res.summary
