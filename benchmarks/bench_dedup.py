"""Near-duplicate and eval decisions on labelled images: precision, recall, hard negatives.

    .venv/bin/python benchmarks/bench_dedup.py [--pictures 240] [--seed 0] [--sweep]

A labelled world, drawn with Pillow and numpy (no downloads):
  pictures   graphics (balloons, arrows, fruit, buttons, flags, logos, icons, clip-art
             on transparent backgrounds, black silhouettes whose hidden pixels are
             black, small objects on mostly white canvases) and photo-like pictures
             (1/f noise, with and without a coloured object). Pictures of one
             *family* share a layout and differ in colour or detail: they are the
             hard negatives of each other (red vs green balloon, tricolours of one
             layout, a flag with and without a star, icons of one style).
  copies     of every picture, each a true copy: resized to 50-90 %, re-encoded as
             JPEG at quality 30-95, cropped by 2-5 %, padded with a white border,
             composited on white (from the transparent original), brightness
             shifted by 5-12 levels.
  blanks     one-colour images and plain gradients, which must come out `blank`.
Every picture and copy is then stored as fetch stores it: img2dataset's Resizer at
256 px, `--resize-mode border`, JPEG q95, through fetch's own wrapper
(wit_builder.stages.fetch.resizing), which records the signature of what it stores.

Decisions, each method in the same run on the same images:
  near-dup   among the stored images, pairs judged copies; then curate's greedy keep
             (rank: largest original first) and what it drops.
  eval       the originals of half the pictures are the evaluation set, as files on
             disk (transparent where drawn so); a stored image is dropped as
             `eval_set` when judged a copy of one.
Methods: wit (canonical view, pHash within --near-dup-bits confirmed by the colour
check within --near-dup-colour, blanks excluded; for eval --eval-bits, --eval-colour), plain pHash at 4 bits (wit before:
the stored pixels as stored, padding included; eval files as on disk, alpha ignored)
and imagehash.phash at 4 bits (of the stored JPEG and of the eval file).
Targets: recall >= 0.95 on copies, <= 2 % of drops on hard negatives.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_world import blanks, copies, encode, families  # noqa: E402

from wit_builder import canonical  # noqa: E402
from wit_builder.phash import hamming, keepers, phash_array, phash_pixels  # noqa: E402
from wit_builder.stages.curate.curate import EVAL_BITS, EVAL_COLOUR, NEAR_DUP_BITS, NEAR_DUP_COLOUR  # noqa: E402

# ---------------------------------------------------------------------------------
# Storing as fetch does, and the three methods' signatures


class Store:
    """img2dataset's Resizer at 256 px, border mode, JPEG q95, wrapped as fetch wraps it."""

    def __init__(self):
        import cv2

        from wit_builder.stages.fetch import i2d
        from wit_builder.stages.fetch.resizing import CvTap, Download, hashing_resizer
        self.i2d, self.cv2, self.Download = i2d, cv2, Download
        self.tap = CvTap(cv2, 256, "border")
        self.stored: dict = {}
        self.plain: dict = {}
        self.resize = hashing_resizer(i2d.resizer(256, "border"), self.tap, self.stored)
        self.seconds = 0.0

    def __call__(self, index: int, data: bytes) -> tuple[bytes, tuple[int, int]]:
        with self.i2d.patched(cv2=self.tap):
            t0 = time.process_time()
            out = self.resize(self.Download(index, data))
            self.seconds += time.process_time() - t0
        if out.img is None:
            raise RuntimeError(f"img2dataset could not store image {index}: {out.error}")
        stored = out.img
        # plain pHash as wit hashed before: the stored pixels as they are, padding included
        self.plain[index] = phash_array(self.cv2.imdecode(np.frombuffer(stored, np.uint8), self.cv2.IMREAD_COLOR))
        return stored, (out.original_width, out.original_height)


def plain_file_phash(data: bytes) -> int:
    """wit's eval hash before: the file as on disk, gray (alpha ignored), Lanczos 32, DCT."""
    im = Image.open(io.BytesIO(data)).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    return int(phash_pixels(np.asarray(im)).view(np.int64)[0])


def imagehash_phash(data: bytes) -> int:
    import imagehash
    return int(np.array([int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)], np.uint64).view(np.int64)[0])


# ---------------------------------------------------------------------------------
# Decisions and scores


def judged(ha, hb, ta, tb, bits: int, colour: float) -> np.ndarray:
    close = hamming(ha, hb) <= bits
    if colour >= 0 and ta is not None and close.any():
        idx = np.nonzero(close)[0]
        close[idx] = canonical.colour_distance(ta[idx], tb[idx]) <= colour
    return close


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, 1)
    return i, j


def near_dup_scores(ids, fam, rank_order, h, t, usable, bits, colour) -> dict:
    n = len(ids)
    i, j = all_pairs(n)
    ok = usable[i] & usable[j]
    i, j = i[ok], j[ok]
    same = judged(h[i], h[j], None if t is None else t[i], None if t is None else t[j], bits, colour)
    pos = ids[i] == ids[j]
    hard = (~pos) & (fam[i] == fam[j])
    tp, fp = int((same & pos).sum()), int((same & ~pos).sum())
    # curate's greedy keep over the judged pairs, best-ranked first
    pos_of = np.empty(n, dtype=np.int64)
    pos_of[rank_order] = np.arange(n)
    a, b = pos_of[i[same]], pos_of[j[same]]
    kept_as = keepers(n, a, b)  # in rank positions
    node = rank_order  # rank position -> image index
    dropped = np.nonzero(kept_as != np.arange(n))[0]
    drop_img, keep_img = node[dropped], node[kept_as[dropped]]
    good = ids[drop_img] == ids[keep_img]
    hard_drops = (~good) & (fam[drop_img] == fam[keep_img])
    should = sum(int(c) - 1 for c in np.unique(ids[usable], return_counts=True)[1])
    return {"pair_precision": tp / max(1, tp + fp), "pair_recall": tp / max(1, int(pos.sum())),
            "hard_pairs_judged_copies": float((same & hard).sum() / max(1, hard.sum())),
            "drops": len(dropped), "drop_recall": float(good.sum() / max(1, should)),
            "drop_precision": float(good.mean()) if len(dropped) else 1.0,
            "hard_negative_drops": float(hard_drops.sum() / max(1, len(dropped)))}


def eval_scores(ids, fam, eval_ids, eval_fam, h, t, usable, eh, et, e_usable, bits, colour) -> dict:
    ni, ne = len(ids), len(eval_ids)
    i, j = np.repeat(np.arange(ni), ne), np.tile(np.arange(ne), ni)
    ok = usable[i] & e_usable[j]
    i, j = i[ok], j[ok]
    same = judged(h[i], eh[j], None if t is None else t[i], None if et is None else et[j], bits, colour)
    hit = np.zeros(ni, dtype=bool)
    hit[i[same]] = True
    right = np.zeros(ni, dtype=bool)
    right[i[same & (ids[i] == eval_ids[j])]] = True
    leaked = np.isin(ids, eval_ids)
    hard = np.zeros(ni, dtype=bool)
    hard[i[same & (ids[i] != eval_ids[j]) & (fam[i] == eval_fam[j])]] = True
    wrong = hit & ~leaked
    return {"drops": int(hit.sum()), "precision": float((hit & leaked).sum() / max(1, hit.sum())),
            "recall": float((hit & leaked).sum() / max(1, leaked.sum())),
            "hard_negative_drops": float((wrong & hard).sum() / max(1, hit.sum())),
            "false_drops": int(wrong.sum())}


def why(ids, kinds, keys, h, t, usable, bits, colour) -> None:
    """Print each copy wit does not match to its original, and each pair of different
    pictures of one kind that it matches."""
    i, j = all_pairs(len(ids))
    ok = usable[i] & usable[j]
    i, j = i[ok], j[ok]
    d = hamming(h[i], h[j])
    near = d <= max(bits, 16)
    i, j, d = i[near], j[near], d[near]
    c = canonical.colour_distance(t[i], t[j])
    same = (d <= bits) & (c <= colour)
    for x, y, dd, cc, s in zip(i, j, d, c, same):
        kx, ky = keys[ids[x]], keys[ids[y]]
        if ids[x] == ids[y] and not s and "original" in (kinds[x], kinds[y]):
            print(f"  missed copy   {kx:28s} {kinds[x]:>10s} vs {kinds[y]:10s} bits {dd:2d} colour {cc:5.1f}")
        elif ids[x] != ids[y] and s and kx.split("-")[0] == ky.split("-")[0]:
            print(f"  hard negative {kx:28s} {kinds[x]:>10s} vs {ky:28s} {kinds[y]:10s} bits {dd:2d} colour {cc:5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=int, default=240, help="families drawn (each 2-4 pictures)")
    ap.add_argument("--blanks", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, default=NEAR_DUP_BITS, help="wit's --near-dup-bits")
    ap.add_argument("--colour", type=float, default=NEAR_DUP_COLOUR, help="wit's --near-dup-colour")
    ap.add_argument("--eval-bits", type=int, default=EVAL_BITS, help="wit's --eval-bits")
    ap.add_argument("--eval-colour", type=float, default=EVAL_COLOUR, help="wit's --eval-colour")
    ap.add_argument("--sweep", action="store_true", help="also print wit's scores over a grid of both thresholds")
    ap.add_argument("--why", action="store_true", help="list wit's missed copies and hard-negative matches")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    store = Store()
    ids, fams, kinds, originals, stored, area = [], [], [], [], [], []
    eval_files, eval_ids, eval_fams = [], [], []
    pid, seen, keys = 0, set(), []
    for family, drawings in families(args.pictures, rng):
        for key, draw in drawings:
            if key in seen:
                continue
            seen.add(key)
            keys.append(key)
            f = family
            im = draw(rng)
            source = encode(im, "PNG") if im.mode == "RGBA" or rng.random() < .3 else encode(im, quality=92)
            versions = [("original", source)] + copies(im, rng)
            for kind, data in versions:
                blob, size = store(len(stored), data)
                ids.append(pid), fams.append(f), kinds.append(kind), originals.append(data)
                stored.append(blob), area.append(size[0] * size[1])
            if pid % 2 == 0:
                eval_files.append(encode(im, "PNG") if im.mode == "RGBA" else source)
                eval_ids.append(pid), eval_fams.append(f)
            pid += 1
    blank_start = len(stored)
    for data in blanks(rng, args.blanks):
        blob, size = store(len(stored), data)
        ids.append(pid), fams.append(f"blank{pid}"), kinds.append("blank"), stored.append(blob), area.append(size[0] * size[1])
        pid += 1
    ids, fams, kinds = np.array(ids), np.array(fams), np.array(kinds)
    eval_ids, eval_fams = np.array(eval_ids), np.array(eval_fams)
    n = len(stored)
    print(f"{pid - args.blanks} distinct pictures in {args.pictures} families, {blank_start} stored images "
          f"({blank_start - (pid - args.blanks)} copies), {args.blanks} blanks, {len(eval_files)} eval "
          f"images; built in {time.time() - t0:.0f} s")
    sig = [store.stored[k] for k in range(n)]
    wit_h = np.array([s[1] for s in sig], dtype=np.int64)
    wit_t = canonical.thumbs([s[2] for s in sig])
    blank = np.array([s[3] < canonical.BLANK_DETAIL for s in sig])
    ev = [canonical.signature_bytes(b) for b in eval_files]
    ev_h = np.array([e["phash"] for e in ev], dtype=np.int64)
    ev_t = canonical.thumbs([e["thumb"] for e in ev])
    ev_blank = np.array([e["detail"] < canonical.BLANK_DETAIL for e in ev])
    plain_h = np.array([store.plain[k] for k in range(n)], dtype=np.int64)
    plain_eh = np.array([plain_file_phash(b) for b in eval_files], dtype=np.int64)
    ih_h = np.array([imagehash_phash(b) for b in stored], dtype=np.int64)
    ih_eh = np.array([imagehash_phash(b) for b in eval_files], dtype=np.int64)
    order = np.lexsort((np.arange(n), -np.array(area)))  # largest original first
    real = kinds != "blank"
    print(f"blank: {int((blank & ~real).sum())}/{int((~real).sum())} blanks found, "
          f"{int((blank & real).sum())}/{int(real.sum())} pictures called blank "
          f"({', '.join(sorted(set(kinds[blank & real]))) or 'none'})")
    everything = np.ones(n, dtype=bool)
    methods = [(f"wit ({args.bits} bits + colour {args.colour:g})", wit_h, wit_t, ~blank, ev_h, ev_t, ~ev_blank,
                args.bits, args.colour),
               ("plain pHash, 4 bits (wit before)", plain_h, None, everything, plain_eh, None,
                np.ones(len(ev), bool), 4, -1),
               ("imagehash.phash, 4 bits", ih_h, None, everything, ih_eh, None, np.ones(len(ev), bool), 4, -1)]
    print("\nnear duplicates among the stored images (greedy keep, largest original first)")
    print(f"{'method':38s} {'drops':>6s} {'precision':>9s} {'recall':>7s} {'hard-neg drops':>14s}"
          f" | pairs: {'precision':>9s} {'recall':>7s} {'hard pairs':>10s}")
    for name, h, t, usable, *_rest, bits, colour in methods:
        r = near_dup_scores(ids, fams, order, h, t, usable & real if name.startswith("wit") else usable,
                            bits, colour)
        print(f"{name:38s} {r['drops']:6d} {r['drop_precision']:9.3f} {r['drop_recall']:7.3f} "
              f"{r['hard_negative_drops']:14.1%} |        {r['pair_precision']:9.3f} {r['pair_recall']:7.3f} "
              f"{r['hard_pairs_judged_copies']:10.1%}")
    print("\neval decontamination (stored images against the eval files)")
    print(f"{'method':38s} {'drops':>6s} {'precision':>9s} {'recall':>7s} {'hard-neg drops':>14s} {'wrong drops':>11s}")
    for name, h, t, usable, eh, et, eu, bits, colour in methods:
        if name.startswith("wit"):
            name, bits, colour = f"wit ({args.eval_bits} bits + colour {args.eval_colour:g})", \
                args.eval_bits, args.eval_colour
        r = eval_scores(ids, fams, eval_ids, eval_fams, h, t, usable, eh, et, eu, bits, colour)
        print(f"{name:38s} {r['drops']:6d} {r['precision']:9.3f} {r['recall']:7.3f} "
              f"{r['hard_negative_drops']:14.1%} {r['false_drops']:11d}")
    # recall per copy kind, for wit: is each copy judged a copy of its original?
    orig = {int(p): k for k, p in enumerate(ids) if kinds[k] == "original"}
    print("\nwit: copies judged copies of their stored original, by transform")
    for kind in [k for k in dict.fromkeys(kinds) if k not in ("original", "blank")]:
        sel = np.nonzero(kinds == kind)[0]
        o = np.array([orig[int(ids[k])] for k in sel])
        same = judged(wit_h[sel], wit_h[o], wit_t[sel], wit_t[o], args.bits, args.colour)
        d = hamming(wit_h[sel], wit_h[o])
        print(f"  {kind:11s} {same.mean():6.3f} of {len(sel):4d}  (pHash bits: median {np.median(d):.0f}, "
              f"95th pct {np.percentile(d, 95):.0f})")
    if args.why:
        why(ids, kinds, keys, wit_h, wit_t, ~blank & real, args.bits, args.colour)
    print(f"\nfetch's resizer with the signature: {store.seconds / n * 1e6:.0f} us CPU per image stored")
    if args.sweep:
        print("\nwit over thresholds: near-dup drop recall / hard-neg drops; eval recall / hard-neg drops")
        for bits in (4, 5, 6, 7, 8, 10, 12):
            for colour in (-1, 16, 20, 24, 28, 32, 40):
                r = near_dup_scores(ids, fams, order, wit_h, wit_t, ~blank & real, bits, colour)
                e = eval_scores(ids, fams, eval_ids, eval_fams, wit_h, wit_t, ~blank, ev_h, ev_t, ~ev_blank, bits, colour)
                print(f"  bits {bits:2d} colour {colour:3g}: near {r['drop_recall']:.3f} / {r['hard_negative_drops']:5.1%}"
                      f" (precision {r['drop_precision']:.3f});  eval {e['recall']:.3f} / {e['hard_negative_drops']:5.1%}"
                      f" (precision {e['precision']:.3f})")


if __name__ == "__main__":
    main()
