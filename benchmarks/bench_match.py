"""Matching speed: wit's Matcher against a MetaCLIP-style reference, in the same run.

The reference is MetaCLIP's `substr_matching`: per caption, spacing, pyahocorasick
`iter` over the padded queries, a set of ids. Both run on the same synthetic
captions and query list (a Zipf vocabulary of made-up words: half one-word queries,
a third word pairs, the rest 3-5 word titles); outputs are asserted identical.
Times are CPU seconds of this process (the machine is shared), best of --repeat
interleaved rounds, reported per caption and per core.

    .venv/bin/python benchmarks/bench_match.py [--captions 100000] [--queries 500000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VOCAB = 400_000
ZIPF = 1.07


def vocabulary(seed: int = 0):
    """(distinct made-up words, cumulative Zipf weights), most frequent first."""
    rng = np.random.default_rng(seed)
    n = int(VOCAB * 1.1)
    lens = rng.integers(2, 11, n)
    chars = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)[rng.integers(0, 26, int(lens.sum()))]
    offsets = np.concatenate(([0], np.cumsum(lens))).astype(np.int32)
    words = pc.unique(pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes())))[:VOCAB]
    p = 1.0 / np.arange(1, len(words) + 1) ** ZIPF
    return words, np.cumsum(p / p.sum())


def _draw(rng, vocab, n: int):
    words, cdf = vocab
    return words.take(pa.array(np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1)))


def _join(tokens, lengths) -> pa.Array:
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), tokens), " ")


def captions(n: int, seed: int = 1, vocab=None, head_share: float = 0.2) -> pa.Array:
    """`n` captions of 4-20 words: some capitalised, punctuation, tabs, newlines.

    A `head_share` of them use only the 40 most frequent words ("a photo of the
    dog"): their rarest query is still a frequent one, so per-query caps bite."""
    vocab = vocab or vocabulary()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 21, n)
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    tokens = _draw(rng, vocab, total)
    head_row = rng.random(n) < head_share
    head = np.repeat(head_row, lengths)
    tokens = pc.if_else(pa.array(head), vocab[0].take(pa.array(rng.integers(0, 40, total))), tokens)
    first = np.zeros(total, bool)
    first[ends - lengths] = True
    tokens = pc.if_else(pa.array(first & (rng.random(total) < 0.3)),
                        pc.utf8_capitalize(tokens), tokens)
    suffixes = np.array(["", ",", ".", ";", ":", "?", "!", "`", "\t", "\n"], dtype=object)
    pick = np.where(rng.random(total) < 0.08, rng.integers(1, len(suffixes), total), 0)
    last = np.zeros(total, bool)
    last[ends - 1] = True
    pick = np.where(last & (rng.random(total) < 0.5), 2, pick)
    tokens = pc.binary_join_element_wise(tokens, pa.array(suffixes[pick], pa.string()), "")
    return _join(tokens, lengths)


def queries(n: int, seed: int = 2, vocab=None) -> pa.Array:
    """`n` distinct queries: half single words, a third word pairs, the rest 3-5 word titles."""
    vocab = vocab or vocabulary()
    rng = np.random.default_rng(seed)
    words = vocab[0]
    n_single = n // 2
    n_pair, n_title = (n // 3) * 3 // 2, (n - n_single - n // 3) * 3 // 2   # spares for repeats
    pairs = _draw(rng, vocab, 2 * n_pair)
    pair = pc.unique(pc.binary_join_element_wise(pairs[0::2], pairs[1::2], " "))[:n // 3]
    lengths = rng.integers(3, 6, n_title)
    t = _draw(rng, vocab, int(lengths.sum()))
    t = pc.if_else(pa.array(rng.random(len(t)) < 0.5), pc.utf8_capitalize(t), t)
    titles = pc.unique(_join(t, lengths))[:n - n_single - len(pair)]
    return pc.unique(pa.concat_arrays([words[:n_single], pair, titles]))


def main() -> None:
    from wit_builder.stages.match.match import Matcher, reference_automaton, reference_match
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    vocab = vocabulary()
    texts = captions(args.captions, vocab=vocab)
    qs = queries(args.queries, vocab=vocab).to_pylist()
    ids = np.arange(len(qs), dtype=np.int32)
    print(f"{len(texts):,} captions, {len(qs):,} queries")

    t0 = time.process_time()
    ref_automaton = reference_automaton(qs, ids)
    print(f"reference automaton built in {time.process_time() - t0:.1f} s CPU")
    t0 = time.process_time()
    matcher = Matcher(qs, ids, sample=texts[:20_000])
    print(f"wit matcher built in {time.process_time() - t0:.1f} s CPU")

    as_list = texts.to_pylist()
    ref_times, wit_times = [], []
    for _ in range(args.repeat):
        t0 = time.process_time()
        ref = [reference_match(ref_automaton, t) for t in as_list]
        ref_times.append(time.process_time() - t0)
        t0 = time.process_time()
        out = [matcher.match(texts.slice(i, args.batch_size))
               for i in range(0, len(texts), args.batch_size)]
        wit_times.append(time.process_time() - t0)
    ours = pa.concat_arrays(out).to_pylist()
    assert ours == ref, "outputs differ from the reference"
    pairs = sum(map(len, ref))
    ref_rate = len(texts) / min(ref_times)
    wit_rate = len(texts) / min(wit_times)
    print(f"identical outputs: {len(texts):,} captions, {pairs:,} (caption, query) pairs, "
          f"{sum(1 for r in ref if r):,} captions matched")
    print(f"reference (MetaCLIP-style): {ref_rate:10,.0f} captions/s per core")
    print(f"wit Matcher:                {wit_rate:10,.0f} captions/s per core")
    print(f"ratio: {wit_rate / ref_rate:.2f}x  (CPU time, best of {args.repeat})")


if __name__ == "__main__":
    main()
