"""The matcher behind the match stage: MetaCLIP's substring semantics over Arrow
batches (`Matcher`), and MetaCLIP's own per-caption form it is checked against
(`spacing`, `reference_automaton`, `reference_match`)."""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from wit_builder.errors import WitError

PUNCTUATION = ",.;:?!`"   # MetaCLIP wraps these in spaces
BLANKS = "\t\n\r"         # and turns these into spaces


# ----------------------------------------------------------------------------------
# The matcher.
#
# Why tokens: both ends of " query " are spaces and spacing isolates every
# punctuation mark, so a match always covers whole tokens of the spaced caption split
# on single spaces. One-token queries (most of a MetaCLIP-style list) are therefore
# hash lookups of each token, done in Arrow. Queries of several tokens are found by
# pyahocorasick over a short code string: each token that occurs in such a query is
# replaced by a prefix-free code of 1-5 symbols (frequent tokens get one), every
# other token by a break symbol. The automaton walks ~1-2 symbols per token instead of
# ~6 characters and reports only multi-token matches. Tokens that cannot be part of
# such a match (no neighbour forms a pair occurring inside a query; checked with a
# Bloom filter, so never wrongly excluded) are replaced by the break symbol first.

BREAK = "\x00"
_N_SYM = 120                      # symbols 1..120 start a code, 121..240 continue one
_FIRST_PER_LENGTH = (100, 14, 4, 1, 1)   # start symbols given to codes of length 1..5
_BLOOM_BITS = 24


def code_book(n: int) -> list[str]:
    """`n` distinct prefix-free codes, shortest first.

    A code's first symbol (1.._N_SYM) says how long it is and never occurs later in
    a code, so a match of concatenated codes can only start at a token boundary.
    """
    codes: list[str] = []
    first = 0
    for length, n_first in enumerate(_FIRST_PER_LENGTH, start=1):
        for k in range(min(n - len(codes), n_first * _N_SYM ** (length - 1))):
            head, digits = divmod(k, _N_SYM ** (length - 1)) if length > 1 else (k, 0)
            tail = []
            for _ in range(length - 1):
                digits, d = divmod(digits, _N_SYM)
                tail.append(chr(1 + _N_SYM + d))
            codes.append(chr(1 + first + head) + "".join(reversed(tail)))
        first += n_first
        if len(codes) == n:
            return codes
    raise WitError(f"{n:,} distinct words in multi-word queries: more than the matcher "
                   f"supports; shorten the query list")


def spaced_tokens(texts: Sequence[str], sep: str, stand_in: str) -> "Any":
    """All tokens of MetaCLIP-spaced `texts` in one Arrow array, and each token's row.

    Rows are joined by the token `sep`; a `sep` inside a text is first replaced by
    `stand_in` (callers pick both among characters that occur in no query).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    s = f" {sep} ".join(texts)
    if s.count(sep) != max(len(texts) - 1, 0):
        s = f" {sep} ".join(t.replace(sep, stand_in) for t in texts)
    for p in PUNCTUATION:
        s = s.replace(p, f" {p} ")
    for b in BLANKS:
        s = s.replace(b, " ")
    tokens = pc.split_pattern(pa.array([s], pa.large_string()), " ").values
    is_sep = pc.equal(tokens, sep).to_numpy(zero_copy_only=False)
    return tokens, np.cumsum(is_sep)


def _unused_chars(texts, k: int) -> list[str]:
    """`k` characters (control or private-use) that occur in none of `texts` nor in the
    spacing rules: safe as row separators and stand-ins."""
    used = set("".join(texts))
    pool = [chr(c) for c in range(0x1f, 0, -1)] + [chr(c) for c in range(0xE000, 0xF900)]
    free = [c for c in pool if c not in used and c not in BLANKS]
    if len(free) < k:
        raise WitError("the query list uses every control and private-use character; "
                       "remove those characters from the queries")
    return free[:k]


class Matcher:
    """MetaCLIP substring matching of captions against a query list, batch at a time.

    `match(texts)` returns, per text, the sorted distinct query ids whose padded
    query occurs in the spaced text: exactly what `reference_match` computes, faster.
    """

    def __init__(self, queries: Sequence[str], query_ids: Sequence[int],
                 case_sensitive: bool = True, sample=None):
        import ahocorasick
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        self.case_sensitive = case_sensitive
        if not case_sensitive:
            queries = pc.utf8_lower(pa.array(list(queries), pa.string())).to_pylist()
        # Entries = distinct query strings, numbered in order of their smallest id,
        # so sorting by entry number sorts by query id.
        query_ids = np.asarray(query_ids, dtype=np.int64)
        entry_of: dict[str, int] = {}
        members: list[list[int]] = []
        for i in np.argsort(query_ids, kind="stable").tolist():
            e = entry_of.setdefault(queries[i], len(entry_of))
            if e == len(members):
                members.append([])
            members[e].append(int(query_ids[i]))
        self.n_entries = len(members)
        self.entry_query = np.array([m[0] for m in members], dtype=np.int32)
        # Queries sharing a string (or a lowercased one): entry -> all its ids (CSR).
        self.shared = any(len(m) > 1 for m in members)
        self.id_offsets = np.cumsum([0] + [len(m) for m in members])
        self.ids = np.array([q for m in members for q in m], dtype=np.int32)
        # Row separator, and its stand-in should a caption contain it: characters in
        # no query, so a token holding either can never match (results unchanged).
        self.sep, self.stand_in = _unused_chars(list(entry_of), 2)

        vocab: dict[str, int] = {}
        single: dict[int, int] = {}
        multi: list[tuple[list[int], int]] = []
        for text, e in entry_of.items():
            toks = [vocab.setdefault(t, len(vocab)) for t in text.split(" ")]
            if len(toks) == 1:
                single[toks[0]] = e
            else:
                multi.append((toks, e))
        self.unknown = unknown = len(vocab)       # index of "in no query"
        self.vocab = pa.array(list(vocab), pa.large_string())
        self.token_entry = np.full(unknown + 1, -1, dtype=np.int64)
        for t, e in single.items():
            self.token_entry[t] = e
        self.automaton = None
        if not multi:
            return

        # Codes: frequent tokens (in the sample captions, else in the queries) get short ones.
        in_multi = np.bincount(np.fromiter(itertools.chain.from_iterable(t for t, _ in multi),
                                           dtype=np.int64), minlength=unknown + 1)
        freq = np.zeros(unknown + 1, dtype=np.int64)
        if sample is not None and len(sample):
            tokens, _ = self.tokens(sample)
            freq = np.bincount(self._lookup(tokens), minlength=unknown + 1)
        used = np.flatnonzero(in_multi[:unknown])
        ranked = used[np.lexsort((used, -in_multi[used], -freq[used]))]
        codes = np.array([BREAK] * (unknown + 1), dtype=object)  # (np.full drops "\x00")
        codes[ranked] = code_book(len(ranked))
        self.code = pa.array(codes.tolist(), pa.string())
        self.code_len = np.array([len(c) for c in codes.tolist()], dtype=np.int64)
        self.in_multi = in_multi > 0
        pairs = np.array([(a, b) for toks, _ in multi for a, b in zip(toks, toks[1:])],
                         dtype=np.int64)
        self.bloom = np.zeros(1 << _BLOOM_BITS, dtype=bool)
        self.bloom[self._pair_hash(pairs[:, 0], pairs[:, 1])] = True
        self.automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for toks, e in multi:
            self.automaton.add_word("".join(codes[toks].tolist()), e)
        self.automaton.make_automaton()

    def _pair_hash(self, a, b):
        """Bloom-filter slot of the token pair (a, b)."""
        import numpy as np
        key = a.astype(np.uint64) * np.uint64(self.unknown + 1) + b.astype(np.uint64)
        return ((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - _BLOOM_BITS)).astype(np.int64)

    def tokens(self, texts):
        """Spaced tokens of `texts` (a list or Arrow array) and the row of each token."""
        import pyarrow as pa
        import pyarrow.compute as pc
        if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = pa.array(list(texts), pa.string())
        if not self.case_sensitive:
            texts = pc.utf8_lower(texts)
        return spaced_tokens(texts.to_pylist(), self.sep, self.stand_in)

    def _lookup(self, tokens):
        """Vocabulary index of each token; `unknown` for tokens in no query."""
        import numpy as np
        import pyarrow.compute as pc
        idx = pc.index_in(tokens, value_set=self.vocab)
        return idx.fill_null(self.unknown).to_numpy().astype(np.int64)

    def match(self, texts) -> "Any":
        """Per text, the sorted distinct query ids it matches (a pyarrow ListArray<int32>)."""
        import numpy as np
        import pyarrow as pa
        n = len(texts)
        if n == 0:
            return pa.array([], pa.list_(pa.int32()))
        tokens, row = self.tokens(texts)
        ids = self._lookup(tokens)
        entry = self.token_entry[ids]
        hit = np.flatnonzero(entry >= 0)
        rows, entries = [row[hit]], [entry[hit]]
        if self.automaton is not None and len(ids) > 1:
            r, e = self._match_multi(ids, row)
            rows.append(r)
            entries.append(e)
        return self._lists(n, np.concatenate(rows), np.concatenate(entries))

    def _match_multi(self, ids, row):
        """(row, entry) of every multi-token match, via the automaton over token codes."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        m = self.in_multi[ids]
        cand = np.flatnonzero(m[:-1] & m[1:])
        cand = cand[self.bloom[self._pair_hash(ids[cand], ids[cand + 1])]]
        if not len(cand):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        keep = np.zeros(len(ids), dtype=bool)
        keep[cand] = True
        keep[cand + 1] = True
        relevant = keep.copy()
        keep[1:] |= relevant[:-1]          # plus one break after each relevant run
        pos = np.flatnonzero(keep)
        sym = np.where(relevant[pos], ids[pos], self.unknown)
        codes = self.code.take(pa.array(sym))
        joined = pc.binary_join(pa.ListArray.from_arrays(
            pa.array([0, len(codes)], pa.int32()), codes), "")[0].as_py()
        symbol_row = np.repeat(row[pos], self.code_len[sym])
        found = np.fromiter(itertools.chain.from_iterable(self.automaton.iter(joined)),
                            dtype=np.int64)
        return symbol_row[found[0::2]], found[1::2]

    def _lists(self, n: int, rows, entries):
        """(row, entry) pairs -> one sorted, distinct list of query ids per row."""
        import numpy as np
        import pyarrow as pa
        shift = max(1, int(self.n_entries).bit_length())
        key = np.sort((rows << shift) | entries, kind="stable")  # runs of rows: a merge
        if len(key):
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        rows, entries = key >> shift, key & ((1 << shift) - 1)
        qids = self.entry_query[entries]
        if self.shared:
            # An entry stands for several ids: expand, then order by (row, id) again.
            per = np.diff(self.id_offsets)[entries]
            first = np.repeat(self.id_offsets[entries] - np.cumsum(per) + per, per)
            qids = self.ids[first + np.arange(int(per.sum()))]
            rows = np.repeat(rows, per)
            order = np.lexsort((qids, rows))
            rows, qids = rows[order], qids[order]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(qids, pa.int32()))


def spacing(text: str) -> str:
    """MetaCLIP's caption spacing (reference form, one caption)."""
    text = f" {text} "
    for p in PUNCTUATION:
        text = text.replace(p, f" {p} ")
    for b in BLANKS:
        text = text.replace(b, " ")
    return text


def reference_automaton(queries: Sequence[str], query_ids: Sequence[int]):
    """MetaCLIP's automaton: every query padded with spaces, valued with its ids."""
    import ahocorasick
    ids_of: dict[str, list[int]] = {}
    for q, i in zip(queries, query_ids):
        ids_of.setdefault(f" {q} ", []).append(int(i))
    automaton = ahocorasick.Automaton()
    for key, ids in ids_of.items():
        automaton.add_word(key, ids)
    automaton.make_automaton()
    return automaton


def reference_match(automaton, text: str) -> list[int]:
    """MetaCLIP's per-caption matching: spacing, iter, set of ids (sorted here)."""
    found: set[int] = set()
    for _end, ids in automaton.iter(spacing(text)):
        found.update(ids)
    return sorted(found)
