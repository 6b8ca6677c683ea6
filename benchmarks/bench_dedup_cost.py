"""What the canonical view and the colour check cost curate and fetch: before and after, same run.

    .venv/bin/python benchmarks/bench_dedup_cost.py [--images 300] [--repeat 5] [--hashes 1000000]

"Before" is wit's dedup signature as it was before the canonical view, reproduced here:
a gray 32x32 pHash (from bytes: PIL's draft decode to gray, Lanczos to 32, DCT; in
fetch: the gray pHash of the pixels img2dataset's resizer stores) and the near-duplicate
self-join at 4 bits. "After" is wit's code now: the canonical view's signature (pHash,
colour thumbnail, detail; wit_builder.canonical) and the two searches at their defaults
(--near-dup-bits for the self-join, --eval-bits for the eval search).

- curate, decoding: `imagefacts.image_facts` on stored 256-px JPEGs fetch did not hash
  (shards from elsewhere), against sha256 + the gray pHash;
- curate, reusing: `image_facts` with fetch's signatures known (the usual path);
- fetch: img2dataset's resizer as fetch runs it (256 px, border, JPEG q95) on web-size
  originals, wrapped as before (sha256 + gray pHash) and as now (sha256 + signature);
- the searches over N random pHashes (32 bits set, as every DCT pHash has) with 1% planted
  near copies: the self-join before and now, and the eval search of 1,000 eval hashes.

One core for the images (best of --repeat interleaved runs); DuckDB's default threads
for the searches. Prints microseconds per image and the speed ratio now / before
(the issue's bar: no more than 10% slower, i.e. >= 0.90).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
from pathlib import Path

# One core, truly: an idle OpenBLAS thread spinning after a matrix product would be
# counted in the next function's process time (as in a Ray worker, which sets these).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers: tests.support
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_neardup import weight32  # noqa: E402
from tests.support.fetch import encode, picture  # noqa: E402  (the tests' photo-like pictures)

from wit_builder import canonical  # noqa: E402
from wit_builder.phash import near_pairs, phash_array, phash_pixels  # noqa: E402
from wit_builder.stages.curate import curate
from wit_builder.stages.curate.imagefacts import image_facts  # noqa: E402


def gray_phash_facts(blobs: list[bytes]) -> list:
    """Before: sha256 and the gray 32x32 pHash of each encoded image (wit's
    phash.inspect_image + phash_pixels before the canonical view)."""
    shas, px = [], []
    for b in blobs:
        shas.append(hashlib.sha256(b).hexdigest())
        with Image.open(io.BytesIO(b)) as im:
            if im.format == "JPEG":
                im.draft("L", (64, 64))
            g = im if im.mode == "L" else im.convert("L")
            px.append(np.asarray(g.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)))
    return list(zip(shas, phash_pixels(np.stack(px))))


def resizers():
    """img2dataset's resizer as fetch wraps it, hashing as before and as now."""
    import cv2

    from wit_builder.stages.fetch import i2d
    from wit_builder.stages.fetch.resizing import CvTap, hashing_resizer
    base = i2d.resizer(256, "border")
    tap = CvTap(cv2, 256, "border")
    stored: dict = {}

    def before(stream):
        tap.pixels, tap.original = None, None
        out = base(stream)
        if out[0] is not None and tap.pixels is not None:
            stored[stream.index] = (hashlib.sha256(out[0]).hexdigest(), phash_array(tap.pixels))
        tap.pixels = None
        return out
    return tap, before, hashing_resizer(base, tap, stored)


def interleaved(repeat: int, fns: list) -> list[float]:
    """Best CPU seconds of each function, runs interleaved (a busy moment slows all alike).
    Each timed run follows an untimed one of the same function (warm caches)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            fn()
            t0 = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - t0)
    return best


def row(name: str, n: int, before: float, after: float, unit: str = "image") -> None:
    print(f"{name:44s} {before / n * 1e6:9.0f} {after / n * 1e6:9.0f} us/{unit}   "
          f"now/before speed {before / after:5.2f}x")


def searches(n: int, seed: int) -> None:
    import duckdb
    import pyarrow as pa
    rng = np.random.default_rng(seed)
    h = weight32(n, rng)
    planted = rng.choice(n, n // 100, replace=False)
    flips = rng.integers(0, 64, (len(planted), 3)).astype(np.uint64)
    copies = h[planted].view(np.uint64) ^ np.bitwise_or.reduce(np.uint64(1) << flips, axis=1)
    h = np.concatenate([h, copies.view(np.int64)])
    con = duckdb.connect()
    con.register("hashes", pa.table({"id": np.arange(len(h), dtype=np.int64), "phash": h}))
    con.execute("CREATE TABLE cand AS SELECT * FROM hashes")
    con.execute("CREATE TABLE ev AS SELECT id, phash FROM hashes USING SAMPLE 1000 ROWS")
    times = {}
    for name, k, right in (("self-join, 4 bits (before)", 4, None),
                           (f"self-join, --near-dup-bits {curate.NEAR_DUP_BITS} (now)",
                            curate.NEAR_DUP_BITS, None),
                           ("self-join, 10 bits (the previous default)", 10, None),
                           (f"eval search, --eval-bits {curate.EVAL_BITS}, 1,000 eval hashes",
                            curate.EVAL_BITS, "ev")):
        t0 = time.perf_counter()
        pairs, plan = near_pairs(con, "cand", k, right=right)
        times[name] = time.perf_counter() - t0
        print(f"  {name:52s} {times[name]:7.2f} s wall  ({pairs.num_rows:,} pairs; bands "
              f"{plan['bands']}, radius {plan['radius']})")
    print(f"  self-join now / before: {times[list(times)[1]] / times[list(times)[0]]:.2f}x the time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--hashes", type=int, default=1_000_000, help="N for the searches (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import cv2
    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    stored = [encode(picture(i, 256, 256), quality=95) for i in range(args.images)]
    web = []
    for i in range(args.images):
        w = int(rng.integers(256, 1025))
        h = int(np.clip(w * rng.uniform(0.6, 1.5), 256, 1024))
        web.append(encode(picture(10_000 + i, w, h), quality=int(rng.integers(75, 96))))
    n = len(stored)
    print(f"one core, best of {args.repeat} interleaved runs, {n} images per set")
    print(f"{'':44s} {'before':>9s} {'now':>9s}")
    b, a = interleaved(args.repeat, [lambda: gray_phash_facts(stored), lambda: image_facts(stored)])
    row("curate facts, decoding (256-px q95 JPEGs)", n, b, a)
    facts = image_facts(stored)
    known_now = [(s, p, t, d) for s, p, t, d in zip(facts["image_sha256"], facts["phash"],
                                                    facts["thumb"], facts["detail"])]
    known_before = [(s, p, None, None) for s, p in gray_phash_facts(stored)]
    b, a = interleaved(args.repeat, [lambda: image_facts(stored, known_before),
                                     lambda: image_facts(stored, known_now)])
    row("curate facts, reusing fetch's signatures", n, b, a)
    tap, before, after = resizers()
    from wit_builder.stages.fetch import i2d
    from wit_builder.stages.fetch.resizing import Download
    with i2d.patched(cv2=tap):
        b, a = interleaved(args.repeat, [lambda: [before(Download(i, d)) for i, d in enumerate(web)],
                                         lambda: [after(Download(i, d)) for i, d in enumerate(web)]])
    row("fetch's resizer + hashing (web originals)", n, b, a)
    sig = interleaved(args.repeat, [lambda: [canonical.signature_bytes(d) for d in stored]])[0]
    print(f"(the signature from bytes alone: {sig / n * 1e6:.0f} us per 256-px JPEG)")
    if args.hashes:
        print(f"\nsearches over {args.hashes:,} hashes + 1% planted copies")
        searches(args.hashes, args.seed)


if __name__ == "__main__":
    main()
