"""Near-duplicate search over 1,000,000 pHashes: time and peak memory.

    .venv/bin/python benchmarks/bench_neardup.py [--n 1000000] [--bits 4] [--compare]

The hashes are random 64-bit strings with exactly 32 bits set (a DCT pHash sets the
bits above the median of 64 coefficients, so it always has 32), plus planted near
copies at 0..bits+2 bits from a random original. The search is curate's: multi-index
hashing in DuckDB (`wit_builder.phash.near_pairs`) and the greedy keep in numpy
(`wit_builder.phash.keepers`).
It checks that every planted pair within the threshold is found and that no pair
beyond it is reported. `--compare` also runs the plain k+1-exact-bands plan on the
same hashes, to show what the band planning buys.
"""
from __future__ import annotations

import argparse
import resource
import time

import duckdb
import numpy as np
import pyarrow as pa

from wit_builder.phash import hamming, keepers, near_pairs


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def weight32(n: int, rng, chunk: int = 50_000) -> np.ndarray:
    """n random 64-bit values with exactly 32 bits set, as int64 (made in chunks to keep
    the benchmark's own memory out of the peak it reports)."""
    out = []
    for start in range(0, n, chunk):
        keys = rng.random((min(chunk, n - start), 64))
        bits = keys < np.partition(keys, 32, axis=1)[:, 32:33]  # the 32 smallest per row
        out.append(np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64))
    return np.concatenate(out).view(np.int64)


def flip(values: np.ndarray, d: int, rng) -> np.ndarray:
    """Each value with `d` distinct random bits flipped."""
    out = values.view(np.uint64).copy()
    for i in range(len(out)):
        for bit in rng.choice(64, d, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(bit)
    return out.view(np.int64)


def world(n: int, bits: int, planted: int, rng):
    base = weight32(n - planted, rng)
    per = planted // (bits + 3)
    src, copies, dist = [], [], []
    for d in range(bits + 3):
        idx = rng.choice(len(base), per, replace=False)
        src.append(idx)
        copies.append(flip(base[idx], d, rng))
        dist.append(np.full(per, d))
    hashes = np.concatenate([base] + copies)
    pairs = np.stack([np.concatenate(src), len(base) + np.arange(per * (bits + 3)),
                      np.concatenate(dist)], axis=1)
    return hashes, pairs


def search(hashes: np.ndarray, bits: int, bands: int | None = None):
    con = duckdb.connect()
    con.register("h", pa.table({"id": np.arange(len(hashes), dtype=np.int64), "phash": hashes}))
    t0 = time.perf_counter()
    found, stats = near_pairs(con, "h", bits, bands=bands)
    t_pairs = time.perf_counter() - t0
    a = found["a"].to_numpy()
    b = found["b"].to_numpy()
    t0 = time.perf_counter()
    labels = keepers(len(hashes), a, b)
    t_cc = time.perf_counter() - t0
    con.close()
    return a, b, labels, stats, t_pairs, t_cc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of hashes")
    ap.add_argument("--bits", type=int, default=4, help="near-duplicate threshold (--near-dup-bits)")
    ap.add_argument("--planted", type=int, default=14_000, help="near copies planted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="also run the k+1 exact-bands plan")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    hashes, planted = world(args.n, args.bits, args.planted, rng)
    base_mb = peak_mb()
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0]
    print(f"{len(hashes):,} hashes ({len(planted):,} planted copies at 0..{args.bits + 2} bits), "
          f"threshold {args.bits} bits, DuckDB threads {threads}")
    runs = [("planned", None)] + ([("exact bands", args.bits + 1)] if args.compare else [])
    for name, bands in runs:
        a, b, labels, stats, t_pairs, t_cc = search(hashes, args.bits, bands)
        got = set(zip(a.tolist(), b.tolist()))
        within = planted[planted[:, 2] <= args.bits]
        missed = sum((min(x, y), max(x, y)) not in got for x, y, _ in within)
        too_far = int((hamming(hashes[a], hashes[b]) > args.bits).sum()) if len(a) else 0
        groups = len(np.unique(labels))
        print(f"{name:12s} bands {stats['bands']} (flip radius {stats['radius']}, "
              f"{stats['flips_per_band']} probes per band): pairs {len(a):,} in {t_pairs:.1f} s, "
              f"greedy keep {t_cc:.2f} s -> {groups:,} kept; "
              f"planted pairs missed {missed}, pairs beyond threshold {too_far}; "
              f"peak RSS {peak_mb():,.0f} MB (before the search {base_mb:,.0f} MB)")
        assert missed == 0 and too_far == 0


if __name__ == "__main__":
    main()
