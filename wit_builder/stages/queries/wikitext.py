"""Wikipedia text in, word and bigram counts out (one chunk at a time, in a Ray worker).

The stage plans chunks of each --wiki file (`plan_chunks`): byte ranges of a MediaWiki
XML export (read by wit_builder/stages/queries/wikidump.py, which skips redirects and other
namespaces) or of a JSONL article file, or row groups of a Parquet one. `count_chunk`
reduces a dump's wikitext to plain text with `markup.strip_markup` and tokenises it
with numpy by the rules in docs/queries.md. Article files (Parquet/JSONL with title
and text, the layout of the `wikimedia/wikipedia` dataset) hold plain text and are
only tokenised. `check_input` and `check_dump` say what a --wiki file is when it is
not one of these.
"""
from __future__ import annotations

import bz2
import json
import re
import time
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.io import open_input
from wit_builder.stages.queries.markup import as_bytes, strip_markup
from wit_builder.stages.queries.wikidump import NOT_A_DUMP, Bz2Blocks, read_pages

# Bump when tokenisation or markup stripping changes: finished chunk counts are redone.
COUNT_VERSION = 2

# ---------------------------------------------------------------- tokens

BREAK, SPACE, WORD, JOIN, IGNORE = 0, 1, 2, 3, 4
_TABLES: dict[str, Any] = {}


def _class_tables():
    """Byte classes of ASCII, and classes and ASCII stand-ins of BMP code points."""
    if not _TABLES:
        import unicodedata

        import numpy as np
        ascii_ = np.full(256, WORD, np.uint8)   # bytes >= 0x80 are fixed up per character
        for b in range(128):
            c = chr(b)
            ascii_[b] = WORD if c.isalnum() else SPACE if c in " \t" else JOIN if c in "'-" else BREAK
        bmp = np.full(0x10000, BREAK, np.uint8)
        for cp in range(0x80, 0x10000):
            cat = unicodedata.category(chr(cp))
            bmp[cp] = (WORD if cat[0] in "LNM" else SPACE if cat == "Zs"
                       else IGNORE if cat == "Cf" else BREAK)
        stand_in = np.zeros(0x10000, np.uint8)
        for cp, ch in ((0x2019, "'"), (0x2010, "-"), (0x2011, "-")):
            bmp[cp], stand_in[cp] = JOIN, ord(ch)
        _TABLES.update(ascii=ascii_, bmp=bmp, stand_in=stand_in)
    return _TABLES


def byte_classes(data: bytes):
    """(bytes, class of each byte) with ignorable characters removed and ’ ‐ ‑ written
    as ASCII ' and -; every byte of a UTF-8 character gets the character's class."""
    import numpy as np
    t = _class_tables()
    a = np.frombuffer(data, np.uint8)
    k = t["ascii"][a]
    lead = np.flatnonzero(a >= 0xC0)
    if len(lead):
        n = len(a)
        b = [a[lead].astype(np.uint32)] + [a[np.minimum(lead + i, n - 1)].astype(np.uint32) & 0x3F
                                           for i in (1, 2, 3)]
        size = np.where(b[0] >= 0xF0, 4, np.where(b[0] >= 0xE0, 3, 2))
        cp = np.where(size == 2, (b[0] & 0x1F) << 6 | b[1],
                      np.where(size == 3, (b[0] & 0x0F) << 12 | b[1] << 6 | b[2],
                               (b[0] & 0x07) << 18 | b[1] << 12 | b[2] << 6 | b[3]))
        bmp = cp < 0x10000
        cls = np.where(bmp, t["bmp"][np.where(bmp, cp, 0)],
                       np.where((cp >= 0x1F000) & (cp < 0x1FC00), BREAK,
                                np.where((cp >= 0xE0000) & (cp < 0xE0080), IGNORE, WORD))).astype(np.uint8)
        for i in range(4):
            sel = size > i
            k[np.minimum(lead[sel] + i, n - 1)] = cls[sel]
        swap = np.flatnonzero(np.where(bmp, t["stand_in"][np.where(bmp, cp, 0)], 0))
        if len(swap):   # ’ -> ' and friends: the lead byte becomes ASCII, the rest is dropped
            a = a.copy()
            a[lead[swap]] = t["stand_in"][cp[swap]]
            for i in range(1, 3):
                k[np.minimum(lead[swap] + i, n - 1)] = IGNORE
    keep = k != IGNORE
    if not keep.all():
        a, k = a[keep], k[keep]
    return a, k


def count_words(data: bytes):
    """Word and bigram counts of plain text, as Arrow tables (word, count) and
    (word1, word2, count), and the number of words. Rules: docs/queries.md."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    a, k = byte_classes(data)
    word = k == WORD
    w = word.copy()
    if len(w) > 2:   # ' and - join two word characters
        w[1:-1] |= (k[1:-1] == JOIN) & word[:-2] & word[2:]
    prev = np.concatenate(([False], w[:-1]))
    nxt = np.concatenate((w[1:], [False]))
    starts = np.flatnonzero(w & ~prev)
    ends = np.flatnonzero(w & ~nxt) + 1
    n = len(starts)
    # two neighbours form a bigram when only spaces lie between them
    breaks = np.append(np.flatnonzero(~w & (k != SPACE)), len(a))
    same = breaks[np.searchsorted(breaks, ends[:-1])] >= starts[1:]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(ends - starts, out=offsets[1:])
    tokens = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                   pa.py_buffer(np.ascontiguousarray(a[w]))])
    enc = pc.dictionary_encode(tokens)
    vocab = pc.cast(enc.dictionary, pa.string())
    idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    words = pa.table({"word": vocab, "count": np.bincount(idx, minlength=len(vocab)).astype(np.int64)})
    keys = np.sort((idx[:-1] << 32 | idx[1:])[same])   # sorting beats hashing here
    first = np.flatnonzero(np.diff(keys, prepend=-1))
    counts = np.diff(np.append(first, len(keys)))
    key = keys[first]
    bigrams = pa.table({"word1": vocab.take(pa.array(key >> 32)),
                        "word2": vocab.take(pa.array(key & 0xFFFFFFFF)),
                        "count": counts.astype(np.int64)})
    return words, bigrams, n


# ---------------------------------------------------------------- article files

def read_articles(spec: dict[str, Any]) -> tuple[list[str], Any]:
    """(titles, text column) of one chunk of a Parquet or JSONL article file."""
    import pyarrow as pa
    path = storage.location(spec["path"])
    if spec["kind"] == "parquet":
        import pyarrow.parquet as pq
        try:
            with open_input(path) as f:
                t = pq.ParquetFile(f).read_row_groups(spec["row_groups"], columns=["title", "text"])
        except (pa.ArrowInvalid, OSError, KeyError) as e:
            raise WitError(f"{path}: cannot read title and text columns ({e}); article files "
                           "need the layout of wikimedia/wikipedia (id, url, title, text)") from None
        return t.column("title").to_pylist(), t.column("text")
    titles, texts = [], []
    start, end = spec["start"], spec["end"]
    with open_input(path) as f:   # a line belongs to the chunk in which it starts
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()
        pos = f.tell()
        while pos < end and (line := f.readline()):
            if line.strip():
                try:
                    row = json.loads(line)
                    titles.append(row["title"])
                    texts.append(row["text"])
                except json.JSONDecodeError as e:
                    raise WitError(f"{path}: the line at byte {pos:,} is not valid JSON ({e.msg}); "
                                   "fix or remove it and rerun (counts finished so far are kept)") from None
                except (KeyError, TypeError) as e:
                    raise WitError(f"{path}: the line at byte {pos:,} has no {e} field; article "
                                   "files need title and text") from None
            pos += len(line)
    return titles, pa.array(texts, pa.string())


def _join_texts(column) -> bytes:
    """A string column as one buffer, rows separated by NUL lines (no word or bigram
    crosses them)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    column = pc.fill_null(column.cast(pa.large_string()), "")
    rows = pa.LargeListArray.from_arrays(pa.array([0, len(column)], pa.int64()), column)
    return as_bytes(pc.binary_join(rows, pa.scalar("\n\x00\n", pa.large_string())))


# ---------------------------------------------------------------- one chunk

def _write(table, path: Path) -> None:
    import pyarrow.parquet as pq
    with storage.writing(path) as tmp:   # whole or not at all, local or in a bucket
        pq.write_table(table, tmp, compression="zstd")


def count_chunk(spec: dict[str, Any], table=None) -> dict[str, Any]:
    """Count one chunk and write `<out>.words.parquet`, `<out>.bigrams.parquet`,
    `<out>.titles.parquet`, then `<out>.json` (its stats; the chunk's done-mark)."""
    import pyarrow as pa
    t0, cpu0 = time.time(), time.process_time()
    out = storage.location(spec["out"])
    kind = spec["kind"]
    if kind in ("xml", "xml.bz2"):
        got = read_pages(storage.location(spec["path"]), spec["start"], spec["end"], spec["start"] == 0)
        text, stats = strip_markup(got["text"]), got["stats"]
        titles, redirects = got["titles"], got["redirects"]
    else:
        if kind == "arrow":
            titles, column = table.column("title").to_pylist(), table.column("text")
        else:
            titles, column = read_articles(spec)
        text = _join_texts(column)
        redirects = [None] * len(titles)
        stats = {"pages": len(titles), "articles": len(titles), "redirects": 0,
                 "other_namespaces": 0, "wikitext_bytes": len(text)}
    words, bigrams, n = count_words(text)
    _write(words, out.with_name(out.name + ".words.parquet"))
    _write(bigrams, out.with_name(out.name + ".bigrams.parquet"))
    _write(pa.table({"title": pa.array(titles, pa.string()),
                     "redirect": pa.array(redirects, pa.string())}),
           out.with_name(out.name + ".titles.parquet"))
    stats.update(tokens=n, seconds=round(time.time() - t0, 3), index=spec["index"], path=spec["path"],
                 cpu_seconds=round(time.process_time() - cpu0, 3))
    storage.write_bytes(out.with_name(out.name + ".json"), json.dumps(stats).encode())
    return stats


def plan_chunks(path: Path, kind: str, chunk_bytes: int) -> list[dict[str, Any]]:
    """Chunks of one input file: byte ranges (XML, bz2, JSONL) or row groups (Parquet)."""
    if kind == "parquet":
        import pyarrow.parquet as pq
        try:
            with open_input(path) as f:
                meta = pq.ParquetFile(f).metadata
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise WitError(f"{path}: not a readable Parquet file ({e})") from None
        groups, size, plan = [], 0, []
        for i in range(meta.num_row_groups):
            groups.append(i)
            size += meta.row_group(i).total_byte_size
            if size >= chunk_bytes or i == meta.num_row_groups - 1:
                plan.append({"row_groups": groups})
                groups, size = [], 0
    else:
        size = path.stat().st_size
        plan = [{"start": s, "end": min(size, s + chunk_bytes)} for s in range(0, max(size, 1), chunk_bytes)]
    return [dict(p, kind=kind, path=str(path), index=i) for i, p in enumerate(plan)]


def input_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in ((".xml.bz2", "xml.bz2"), (".xml", "xml"), (".parquet", "parquet"),
                         (".jsonl", "jsonl"), (".json", "jsonl"), (".bz2", "xml.bz2")):
        if name.endswith(suffix):
            return kind
    return None


# ---------------------------------------------------------------- what a --wiki file is

_COUNT_LINE = re.compile(r"^\s*(\S+(?:\s+\S+)*?)\s+(\d+)\s*$")
ACCEPTED = ".xml.bz2 / .xml dumps, .parquet or .jsonl article files, or hf:NAME:CONFIG"
COUNT_TABLES = {1: ("word<TAB>count", "--unigram-counts"), 2: ("word1 word2<TAB>count", "--bigram-counts")}


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """The first bytes of a file, decompressed when it is .gz or .bz2 (b"" if unreadable)."""
    import gzip
    name = path.name.lower()
    unpack = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else None
    try:
        with open_input(path) as raw:
            if unpack is None:
                return raw.read(size)
            with unpack(raw, "rb") as f:
                return f.read(size)
    except (OSError, EOFError, ValueError):
        return b""


def count_table_hint(head: bytes) -> str | None:
    """What to say when the first lines of a file are those of a count table, else None."""
    lines = [line for line in head.decode("utf-8", "replace").splitlines()[:20] if line.strip()]
    matches = [_COUNT_LINE.match(line) for line in lines]
    if not lines or not all(matches):
        return None
    words = {len(m.group(1).split()) for m in matches}
    if len(words) != 1 or (n := words.pop()) not in COUNT_TABLES:
        return None
    line, flag = COUNT_TABLES[n]
    return f"this is a count table ({line} lines), not Wikipedia text; give it with {flag}"


def check_dump(path: Path) -> None:
    """Raise WitError unless `path` starts like a MediaWiki XML export."""
    if path.name.lower().endswith(".bz2"):
        blocks = Bz2Blocks(path, 0)
        try:
            first = blocks.next_block()
            head = blocks.decode(*first) if first else b""
        finally:
            blocks.close()
    else:
        with open_input(path) as f:
            head = f.read(1 << 16)
    if b"<mediawiki" not in head[:1 << 16]:
        raise WitError(f"{path}: {count_table_hint(head[:1 << 16]) or NOT_A_DUMP}")


def _starts_with_json_object(head: bytes) -> bool:
    """Whether the first line is a JSON object (or too long to tell: the worker will)."""
    first, newline, _ = head.lstrip().partition(b"\n")
    if not first.startswith(b"{"):
        return False
    try:
        return not newline or isinstance(json.loads(first), dict)
    except ValueError:
        return False


def check_input(path: Path) -> str:
    """The kind of a --wiki file (see input_kind); WitError, saying what the file looks like
    and what to give instead, for files of another kind."""
    kind = input_kind(path)
    head = _head(path) if kind in (None, "jsonl") else b""
    if kind is None and (hint := count_table_hint(head)):
        raise WitError(f"--wiki {path}: {hint}")
    if kind is None and path.name.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        raise WitError(f"--wiki {path}: CSV and TSV files are not read; convert the articles to Parquet with "
                       f"title and text columns (in DuckDB: COPY (FROM '{path.name}') TO "
                       f"'{path.name.split('.')[0]}.parquet'), or JSONL, or give .xml.bz2 / .xml dumps")
    if kind is None:
        raise WitError(f"--wiki {path}: unknown kind of file; give {ACCEPTED}")
    if kind == "jsonl" and not _starts_with_json_object(head):
        array = head.lstrip().startswith(b"[")
        raise WitError(f"--wiki {path}: {'a JSON array' if array else 'not JSON Lines'}; article "
                       'files hold one {"title": ..., "text": ...} object a line (JSONL), or are '
                       "Parquet with title and text columns"
                       + (f"; convert with: jq -c '.[]' {path.name} > articles.jsonl" if array else ""))
    return kind
