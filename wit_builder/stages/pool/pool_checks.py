"""Candidate files that are not what their names say, found before the pool's readers
see them and named with the line and what to do: a fake or broken .gz, UTF-16,
binary data, a line that is not UTF-8 or longer than the readers take; and the clean
copy --skip-broken-rows reads instead."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from wit_builder.errors import WitError, disk_full
from wit_builder.stages.pool.pool_formats import BLOCK_BYTES, MAX_JSON_DEPTH, open_bytes


def unreadable(path, e: BaseException) -> WitError:
    """The WitError for an exception that reading `path` raised below the format readers."""
    full = disk_full(e)  # writing the pool's own files, not the input's fault
    if full is not None:
        return full
    if isinstance(e, gzip.BadGzipFile):
        return WitError(f"{path}: named .gz but not gzip data ({e}); rename it without .gz or "
                        "compress it with gzip")
    if isinstance(e, (EOFError, zlib.error)) or "compressed" in str(e).lower():
        return WitError(f"{path}: the gzip data is cut short or corrupt ({e}); download or "
                        "compress the file again")
    if isinstance(e, UnicodeDecodeError):
        return WitError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8")
    if isinstance(e, RecursionError):
        return WitError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; flatten it")
    return WitError(f"{path}: cannot be read ({type(e).__name__}: {e})")


def check_text_head(path, fmt: str) -> None:
    """Refuse, naming the file, what cannot be the text file its name says: a fake or
    broken .gz, UTF-16, binary data, bad UTF-8 in the first line (the header)."""
    try:
        with open_bytes(path) as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, zlib.error) as e:
        raise unreadable(path, e) from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            len(head) >= 4 and head.count(b"\0") * 4 >= len(head)):
        raise WitError(f"{path}: UTF-16 text; the pool reads UTF-8 ({fmt.upper()}): convert it, "
                       f"e.g. iconv -f UTF-16 -t UTF-8 {path.name} > utf8-{path.name}")
    nul = head.find(b"\0")
    if nul >= 0:
        raise WitError(f"{path}: binary data, not {fmt.upper()} text (a NUL byte at byte {nul}); "
                       "check the file")
    first = head.split(b"\n", 1)[0]
    if len(first) < len(head) or len(head) < (1 << 16):
        try:
            first.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WitError(f"{path} line 1: not UTF-8 (byte 0x{first[e.start]:02x} at column "
                           f"{e.start + 1}); save the file as UTF-8") from None


def first_bad_line(path, limit: int = BLOCK_BYTES) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first line that is not UTF-8 or is longer than
    `limit` bytes, or None."""
    with open_bytes(path) as f:
        line = 0
        while True:   # one line per turn; ends at the end of the file
            piece = f.readline(limit + 1)
            if not piece:
                return None
            line += 1
            if len(piece) > limit and not piece.endswith(b"\n"):
                return line, (f"longer than the reader's limit of {limit >> 20} MB per row")
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as e:
                return line, f"not UTF-8 (byte 0x{piece[e.start]:02x} at column {e.start + 1})"


def clean_copy(path, dest: Path, stats: dict, limit: int = BLOCK_BYTES) -> Path:
    """--skip-broken-rows: `path` without its lines that are not UTF-8 or are over `limit`
    bytes (counted as broken rows), written to `dest`. Line 1 (a header) must be good."""
    with open_bytes(path) as f, open(dest, "wb") as out:
        line = 0
        while True:
            piece = f.readline(limit + 1)
            if not piece:
                return dest
            line += 1
            bad = len(piece) > limit and not piece.endswith(b"\n")
            while piece and not piece.endswith(b"\n") and len(piece) > limit:
                piece = f.readline(limit + 1)   # the rest of an over-long line
            if not bad:
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError:
                    bad = True
            if bad:
                if line == 1:
                    raise WitError(f"{path} line 1: not UTF-8 or over {limit >> 20} MB; the first "
                                   "line cannot be skipped")
                stats["broken_rows"] += 1
            else:
                out.write(piece)

