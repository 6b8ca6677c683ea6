"""A MediaWiki XML export read in byte ranges: the pages of one chunk, in a Ray worker.

A dump (`pages-articles*.xml.bz2`, plain or multistream, or `.xml`) is cut into byte
ranges that workers read on their own: a bz2 file is split at its block boundaries
(each block starts with the 48-bit magic 0x314159265359 at any bit offset and can be
decoded alone), so no process decompresses the whole file. A page belongs to the
chunk in which its `<page>` tag starts. `read_pages` returns the wikitext of the
namespace-0 articles of a chunk (redirects and other namespaces are skipped, but
every title is kept); wit_builder/stages/queries/wikitext.py strips and counts it.
"""
from __future__ import annotations

import bz2
import html
import re
from pathlib import Path
from typing import Any

from wit_builder.errors import WitError
from wit_builder.io import open_input

# ---------------------------------------------------------------- bz2 blocks

BLOCK_MAGIC = 0x314159265359   # starts every bz2 block
EOS_MAGIC = 0x177245385090     # ends every bz2 stream, followed by the stream CRC
SCAN_BYTES = 4 << 20           # how far the block scanner reads at a time


def _patterns(magic: int) -> list[tuple[int, bytes, int, int, int]]:
    """For each of the 8 bit offsets: (offset, whole bytes to search, their index in a
    7-byte window, mask and value of the 56-bit window)."""
    out = []
    for s in range(8):
        value, mask = magic << (8 - s), ((1 << 48) - 1) << (8 - s)
        raw = value.to_bytes(7, "big")
        out.append((s, raw[:6], 0, mask, value) if s == 0 else (s, raw[1:6], 1, mask, value))
    return out


_MAGICS = [(p, True) for p in _patterns(BLOCK_MAGIC)] + [(p, False) for p in _patterns(EOS_MAGIC)]


def find_magics(buf: bytes, base_bit: int = 0) -> list[tuple[int, bool]]:
    """(bit position, is_block_start) of every block and end-of-stream magic in `buf`."""
    hits = []
    for (s, needle, off, mask, value), is_block in _MAGICS:
        i = buf.find(needle)
        while i >= 0:
            w = i - off
            if w >= 0 and w + 7 <= len(buf) and int.from_bytes(buf[w:w + 7], "big") & mask == value:
                hits.append((base_bit + 8 * w + s, is_block))
            i = buf.find(needle, i + 1)
    return sorted(hits)


class Bz2Blocks:
    """The blocks of a bz2 file from a byte offset on, found by scanning for magics."""

    def __init__(self, path: Path, start: int):
        self.path, self.f = path, open_input(path)   # a local path or a URL's location
        self.size = path.stat().st_size
        head = self.f.read(4)
        if len(head) < 4 or head[:3] != b"BZh" or head[3:4] not in b"123456789":
            raise WitError(f"{path}: not a bz2 file (it does not start with 'BZh'); "
                           "give a pages-articles .xml.bz2 dump or an uncompressed .xml")
        self.scanned = max(0, start)     # bytes scanned so far (absolute)
        self.last = 8 * max(0, start) - 1  # the last magic found (bit), or before the start
        self.magics: list[tuple[int, bool]] = []

    def close(self) -> None:
        self.f.close()

    def _scan(self) -> bool:
        """Scan the next window; False at the end of the file."""
        if self.scanned >= self.size:
            return False
        lo = max(0, self.scanned - 6)    # overlap: a magic may straddle two windows
        self.f.seek(lo)
        buf = self.f.read(SCAN_BYTES + (self.scanned - lo))
        new = [m for m in find_magics(buf, 8 * lo) if m[0] > self.last]
        self.magics += new
        self.last = new[-1][0] if new else self.last
        self.scanned = lo + len(buf)
        return True

    def next_block(self) -> tuple[int, int] | None:
        """(start bit, end bit) of the next block, or None after the last one."""
        while True:
            while self.magics and not self.magics[0][1]:
                self.magics.pop(0)        # end-of-stream marks are only block ends
            if len(self.magics) >= 2 or not self._scan():
                break
        if not self.magics:
            return None
        start = self.magics.pop(0)[0]
        if not self.magics:
            raise WitError(f"{self.path}: truncated: the file ends inside the bz2 block that "
                           f"starts at byte {start // 8:,}; download the dump again "
                           "(counts finished so far are kept)")
        return start, self.magics[0][0]

    def decode(self, start: int, end: int) -> bytes:
        """Decompress one block by wrapping its bits in a one-block bz2 stream."""
        lo, hi = start // 8, (end + 7) // 8
        self.f.seek(lo)
        raw = self.f.read(hi - lo)
        n = end - start
        v = (int.from_bytes(raw, "big") >> (8 * hi - end)) & ((1 << n) - 1)
        crc = (v >> (n - 80)) & 0xFFFFFFFF   # the block's CRC follows its magic
        v = (((v << 48) | EOS_MAGIC) << 32) | crc   # the stream CRC of one block is its CRC
        n += 80
        pad = -n % 8
        try:
            return bz2.decompress(b"BZh9" + (v << pad).to_bytes((n + pad) // 8, "big"))
        except (OSError, ValueError, EOFError) as e:
            raise WitError(f"{self.path}: corrupt bz2 data in the block at byte {lo:,} ({e}); "
                           "download the dump again (counts finished so far are kept)") from None


class _Bz2Source:
    """Decoded text of the blocks that start in [start, end), then more on demand."""

    def __init__(self, path: Path, start: int, end: int):
        self.blocks, self.end_bit = Bz2Blocks(path, start), 8 * end
        self.pending: tuple[int, int] | None = None
        self.where = start

    def _decode_next(self, owned: bool) -> bytes | None:
        blk = self.pending or self.blocks.next_block()
        self.pending = None
        if blk is None:
            return None
        if owned and blk[0] >= self.end_bit:
            self.pending = blk
            return None
        self.where = blk[0] // 8
        return self.blocks.decode(*blk)

    def owned(self) -> bytes:
        parts = []
        while (data := self._decode_next(True)) is not None:
            parts.append(data)
        return b"".join(parts)

    def more(self) -> bytes:
        return self._decode_next(False) or b""

    def close(self) -> None:
        self.blocks.close()


class _XmlSource:
    """Bytes [start, end) of an uncompressed XML file, then more on demand."""

    def __init__(self, path: Path, start: int, end: int):
        self.f, self.start, self.end = open_input(path), start, end
        self.where = start

    def owned(self) -> bytes:
        self.f.seek(self.start)
        return self.f.read(self.end - self.start)

    def more(self) -> bytes:
        self.where = self.f.tell()
        return self.f.read(1 << 20)

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------- pages

def _xml_unescape(b: bytes) -> bytes:
    if b"&" not in b:
        return b
    return (b.replace(b"&lt;", b"<").replace(b"&gt;", b">").replace(b"&quot;", b'"')
            .replace(b"&#039;", b"'").replace(b"&amp;", b"&"))


def _between(buf: bytes, open_: bytes, close: bytes, lo: int, hi: int) -> bytes | None:
    i = buf.find(open_, lo, hi)
    if i < 0:
        return None
    j = buf.find(close, i, hi)
    return buf[i + len(open_):j] if j >= 0 else None


NOT_A_DUMP = ("not a MediaWiki XML export (no <mediawiki> element at the start); give a "
              "pages-articles dump, or Parquet/JSONL article files, or a count table with "
              "--unigram-counts")

def read_pages(path: Path, start: int, end: int, first: bool) -> dict[str, Any]:
    """The pages whose `<page>` starts in bytes [start, end) of a dump (bz2 or XML).

    Returns the wikitext of namespace-0 articles (redirects skipped), every ns-0
    title with its redirect target, and page statistics.
    """
    compressed = path.name.lower().endswith(".bz2")
    src = (_Bz2Source if compressed else _XmlSource)(path, start, end)
    try:
        buf = src.owned()
        owned = len(buf)
        if first:
            head = buf[:buf.find(b"<page>")] if b"<page>" in buf else buf[:65536]
            if b"<mediawiki" not in head:
                raise WitError(f"{path}: {NOT_A_DUMP}")

        def unfinished() -> bool:  # the last page that starts here has not ended yet
            last = buf.rfind(b"<page>", 0, owned + 5)
            return len(buf) < owned + 5 or (last >= 0 and buf.find(b"</page>", last) < 0)

        while owned and unfinished():
            more = src.more()
            if not more:
                break
            buf += more
        where = src.where
    finally:
        src.close()

    texts, titles, redirects = [], [], []
    stats = {"pages": 0, "articles": 0, "redirects": 0, "other_namespaces": 0, "wikitext_bytes": 0}
    p = buf.find(b"<page>")
    while 0 <= p < owned:
        q = buf.find(b"</page>", p)
        if q < 0:
            raise WitError(f"{path}: truncated XML: the file ends inside a <page> (after "
                           f"{'compressed ' if compressed else ''}byte {where:,}); download the "
                           "dump again (counts finished so far are kept)")
        stats["pages"] += 1
        ns = _between(buf, b"<ns>", b"</ns>", p, q)
        if ns is not None and ns.strip() == b"0":
            title = html.unescape((_between(buf, b"<title>", b"</title>", p, q) or b"").decode())
            r = buf.find(b"<redirect", p, q)
            target = None
            if r >= 0:
                m = re.match(rb'<redirect\s+title="([^"]*)"', buf[r:r + 1024])
                target = html.unescape(m.group(1).decode()) if m else ""
            ts = buf.rfind(b"<text", p, q)          # the last revision's text
            te = buf.find(b">", ts, q) if ts >= 0 else -1
            text = b""
            if te > 0 and buf[te - 1:te] != b"/":
                tend = buf.find(b"</text>", te, q)
                text = buf[te + 1:tend if tend >= 0 else q]
            if target is None and text[:9].upper().startswith(b"#REDIRECT"):
                target = ""
            titles.append(title)
            redirects.append(target)
            if target is None:
                stats["articles"] += 1
                texts.append(text)
            else:
                stats["redirects"] += 1
        else:
            stats["other_namespaces"] += 1
        p = buf.find(b"<page>", q)
    joined = _xml_unescape(b"\n\x00\n".join(texts))
    stats["wikitext_bytes"] = len(joined)
    return {"text": joined, "titles": titles, "redirects": redirects, "stats": stats}
