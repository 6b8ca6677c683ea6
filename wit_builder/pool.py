"""Read candidate (image URL, caption) files into the build's pool.

Takes Parquet, CSV, TSV and JSON Lines files (each optionally gzipped), globs and
directories: CC3M/CC12M TSVs (with or without a header), LAION/DataComp/COYO
Parquet metadata, a user's own lists. The URL and caption columns are recognised
from common names (or given with --url-col/--text-col); other columns are kept.
Rows without a URL or caption, or whose URL is not http(s), are dropped and counted;
exact duplicates of (url, text) are removed and counted. Every row gets
uid = hash(url, text). Writes `pool/part-*.parquet`: uid, url, text, + the rest.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import WitError, disk_full
from . import catalog, storage
from .io import UID_BYTES, open_input
from .stage import StageContext, StageOutput, StageResult, run_stage

URL_NAMES = ("url", "image_url", "img_url", "imageurl", "image_link", "img_link",
             "photo_url", "link", "src", "image")
TEXT_NAMES = ("text", "caption", "captions", "alt_text", "alttext", "alt", "description",
              "caption_reference_description", "title", "sentence", "txt")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
           ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
GOOD_URL = r"(?i)^https?://[^\s/?#]+"
BUCKET_BYTES = 256 << 20     # input bytes per pool part when --pool-parts is 0
CHUNK_ROWS = 250_000         # rows buffered before a chunk is written
ORDER, BUCKET = "_wit_order", "_wit_bucket"
REASONS = ("no_url", "no_text", "bad_url")
MAX_CAPTION_CHARS = 2000  # LAION's longest useful alt texts; a 26 MB "caption" costs the trainer GBs
BLOCK_BYTES = 8 << 20        # the CSV/JSON readers' block: the longest row they take
MAX_JSON_DEPTH = 1000        # deeper nesting would overflow the JSON parser's stack
_SCAN_BYTES = 4 << 20


@dataclass
class Config:
    pool: list[str] = field(default_factory=list, metadata={
        "help": "candidate files: Parquet, CSV, TSV, JSONL (also .gz), globs or directories",
        "metavar": "FILE"})
    url_col: str | None = field(default=None, metadata={
        "help": "column holding the image URL (default: recognised: url, URL, image_url, ...; "
                "columnN for files without a header)"})
    text_col: str | None = field(default=None, metadata={
        "help": "column holding the caption (default: recognised: text, caption, alt_text, ...)"})
    skip_broken_rows: bool = field(default=False, metadata={
        "help": "skip and count malformed CSV/TSV/JSONL rows instead of stopping at the first"})
    max_caption_chars: int = field(default=MAX_CAPTION_CHARS, metadata={
        "help": "cut captions longer than this many characters (counted as captions_cut; "
                "0: no limit); CLIP's text encoder sees 77 tokens, a few hundred characters"})
    pool_parts: int = field(default=0, metadata={
        "help": "number of pool/ files (uid buckets); 0 = one per ~256 MB of input"})
    memory_limit: str = catalog.memory_limit_setting()


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs."""
    if not cfg.pool:
        raise WitError("--pool: give the candidate files (Parquet, CSV, TSV or JSONL, "
                       "optionally .gz; globs and directories work)")
    if cfg.max_caption_chars < 0:
        raise WitError(f"--max-caption-chars {cfg.max_caption_chars}: must be >= 0 (0 = no limit)")
    if cfg.pool_parts < 0:
        raise WitError(f"--pool-parts {cfg.pool_parts}: must be >= 0 (0 = automatic)")
    find_files(cfg.pool)


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Read, clean and deduplicate the candidate files into pool/."""
    from .io import file_fingerprint
    check(cfg)
    files = find_files(cfg.pool)
    params = {"pool": file_fingerprint(files), "url_col": cfg.url_col,
              "text_col": cfg.text_col, "skip_broken_rows": cfg.skip_broken_rows,
              "pool_parts": cfg.pool_parts, "max_caption_chars": cfg.max_caption_chars}
    return run_stage(build, "pool", params, lambda ctx: _pool(ctx, cfg, files),
                     outputs=["pool"], views={"pool": "pool/part-*.parquet"}, force=force)


def find_files(patterns: list[str]) -> list:
    """Expand files, globs and directories (paths or URLs); explicit files of unknown
    format are an error."""
    from .io import expand_inputs
    out: list = []
    for pat in patterns:
        hits = expand_inputs([pat], "pool", "--pool")
        explicit = len(hits) == 1 and str(storage.location(pat, "--pool")) == str(hits[0])
        known = [h for h in hits if fmt_of(h, strict=explicit)]
        if not known:
            raise WitError(f"--pool {pat}: no Parquet, CSV, TSV or JSONL files (.gz too) there")
        out.extend(known)
    return list(dict.fromkeys(out))


def fmt_of(path: Path, strict: bool = True) -> str | None:
    """'parquet', 'csv', 'tsv' or 'jsonl' from the file name (a .gz suffix is allowed)."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None and strict:
        raise WitError(f"{path}: unknown format '{Path(name).suffix or path.name}'; the pool "
                       f"takes Parquet (.parquet), CSV (.csv), TSV (.tsv) or JSON Lines "
                       f"(.jsonl), each optionally gzipped (.gz)")
    return fmt


# ----------------------------------------------------------------------------------
# Reading one file (a Ray task): normalise, filter, hash, bucket, write chunks.

@dataclass
class _Spec:
    url_col: str | None
    text_col: str | None
    skip_broken_rows: bool
    buckets: int
    max_caption_chars: int = 0


def _pick(names: list[str], given: str | None, known: tuple[str, ...], flag: str,
          path: Path, what: str) -> str:
    if given is not None:
        if given in names:
            return given
        raise WitError(f"{path}: {flag} {given!r} is not a column; columns are: "
                       f"{', '.join(names)}")
    lower = {n.lower().strip(): n for n in reversed(names)}
    for k in known:
        if k in lower:
            return lower[k]
    raise WitError(f"{path}: no {what} column found among: {', '.join(names)}; "
                   f"name it with {flag}")


def _open_text(path, errors: str = "strict"):
    if storage.is_remote(path):   # small reads: only the first lines are wanted, often
        return path.fs.open(path.path, "rt", compression="infer", encoding="utf-8-sig",
                            newline="", block_size=1 << 20, errors=errors)
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="", errors=errors) if \
        path.name.lower().endswith(".gz") else open(path, "rt", encoding="utf-8-sig", newline="",
                                                    errors=errors)


def _input_stream(path):
    """An Arrow input stream over a (possibly gzipped) file, local or in a store."""
    import pyarrow as pa
    if not storage.is_remote(path):
        return pa.input_stream(str(path), compression="detect")
    gz = "gzip" if path.name.lower().endswith(".gz") else None
    return pa.input_stream(path.fs.open(path.path, "rb"), compression=gz)


def _first_line(path: Path) -> str | None:
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                return line
    return None


# ----------------------------------------------------------------------------------
# Files that are not what their names say: found before the readers see them, and
# named with the line and what to do.

@contextlib.contextmanager
def _binary(path):
    """The file's bytes (decompressed if its name ends in .gz)."""
    with open_input(path) as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz
        else:
            yield raw


def _unreadable(path, e: BaseException) -> WitError:
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


def _check_text_head(path, fmt: str) -> None:
    """Refuse, naming the file, what cannot be the text file its name says: a fake or
    broken .gz, UTF-16, binary data, bad UTF-8 in the first line (the header)."""
    try:
        with _binary(path) as f:
            head = f.read(1 << 16)
    except (OSError, EOFError, zlib.error) as e:
        raise _unreadable(path, e) from None
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


def _bad_line(path, limit: int = BLOCK_BYTES) -> tuple[int, str] | None:
    """(line number, what is wrong) of the first line that is not UTF-8 or is longer than
    `limit` bytes, or None."""
    with _binary(path) as f:
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


def _clean_copy(path, dest: Path, stats: dict, limit: int = BLOCK_BYTES) -> Path:
    """--skip-broken-rows: `path` without its lines that are not UTF-8 or are over `limit`
    bytes (counted as broken rows), written to `dest`. Line 1 (a header) must be good."""
    with _binary(path) as f, open(dest, "wb") as out:
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


_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')


class _Depth:
    """Exact JSON nesting depth of a line fed in pieces (strings and escapes understood)."""

    def __init__(self):
        self.depth = self.deepest = 0
        self.string = False
        self.escaped = -1   # index in the next piece of a character a backslash escapes

    def feed(self, data: bytes) -> int:
        skip = self.escaped
        for m in _JSON_SPECIAL.finditer(data):
            i = m.start()
            if i == skip:
                continue
            c = data[i]
            if c == 0x5C:
                if self.string:
                    skip = i + 1
            elif c == 0x22:
                self.string = not self.string
            elif not self.string:
                self.depth += 1 if c in b"[{" else -1
                self.deepest = max(self.deepest, self.depth)
        self.escaped = 0 if skip == len(data) else -1
        return self.deepest


class _DepthScan:
    """Finds the first JSON Lines line nested deeper than `limit` in bytes fed in blocks.

    Only a line longer than `limit` bytes can be; those are found with numpy and scanned
    exactly, so ordinary data costs one newline search."""

    def __init__(self, limit: int = MAX_JSON_DEPTH):
        self.limit, self.line, self.partial, self.scanner = limit, 1, b"", None
        self.deep: int | None = None   # the line number, once found

    def feed(self, block: bytes) -> int | None:
        import numpy as np
        if self.deep is not None or not block:
            return self.deep
        nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        starts = np.concatenate(([0], nl + 1))
        ends = np.concatenate((nl, [len(block)]))
        lengths = ends - starts
        lengths[0] += len(self.partial)
        todo = set(np.flatnonzero(lengths > self.limit).tolist())
        if self.scanner is not None:
            todo.add(0)
        for k in sorted(todo):
            if k > 0 or self.scanner is None:
                self.scanner = _Depth()
                if k == 0:
                    self.scanner.feed(self.partial)
            if self.scanner.feed(block[starts[k]:ends[k]]) > self.limit:
                self.deep = self.line + k
                return self.deep
            if k < len(nl):
                self.scanner = None
        last = len(nl)
        if last in todo:
            self.partial = b""      # the scanner carries the open line on
        else:
            self.scanner = None
            self.partial = (self.partial if last == 0 else b"") + block[starts[last]:]
        self.line += len(nl)
        return None


class _Scanned(io.RawIOBase):
    """A read-only file that feeds what it reads to a _DepthScan first and ends early
    (an EOF) at a block holding a line nested too deep, so Arrow never parses it."""

    def __init__(self, f, scan: _DepthScan):
        self.f, self.scan = f, scan

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.scan.deep is not None:
            return b""
        data = self.f.read(n)
        return b"" if self.scan.feed(data) is not None else data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _deep_line(path, limit: int = MAX_JSON_DEPTH) -> int | None:
    """Line number of the first JSON Lines line nested deeper than `limit`, or None."""
    scan = _DepthScan(limit)
    with _binary(path) as f:
        while scan.deep is None:   # ends at the end of the file
            block = f.read(_SCAN_BYTES)
            if not block:
                break
            scan.feed(block)
    return scan.deep


def _looks_like_url(value: str) -> bool:
    v = value.strip().lower()
    return v.startswith("http://") or v.startswith("https://")


def _delimited_columns(path: Path, fmt: str, spec: _Spec) -> tuple[list[str], bool]:
    """Column names of a CSV/TSV and whether its first line is a header."""
    first = _first_line(path)
    if first is None:
        return [], False
    delim = "\t" if fmt == "tsv" else ","
    fields = next(csv.reader([first], delimiter=delim,
                             quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    fields = [f.strip() for f in fields]
    given = {c for c in (spec.url_col, spec.text_col) if c}
    recognised = {f.lower() for f in fields} & set(URL_NAMES + TEXT_NAMES)
    if given & set(fields) or (recognised and not any(_looks_like_url(f) for f in fields)):
        return fields, True
    if any(_looks_like_url(f) for f in fields):
        return [f"column{i}" for i in range(len(fields))], False   # CC3M/CC12M: no header
    return fields, True


def _headerless_columns(path: Path, names: list[str], first: str, fmt: str,
                        spec: _Spec) -> tuple[str, str]:
    """URL and caption columns of a header-less file: the one holding a URL, the other."""
    fields = next(csv.reader([first], delimiter="\t" if fmt == "tsv" else ",",
                             quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    url = spec.url_col or next(n for n, f in zip(names, fields) if _looks_like_url(f))
    if spec.url_col and spec.url_col not in names:
        _pick(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
    if spec.text_col:
        return url, _pick(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    others = [n for n in names if n != url]
    if not others:
        raise WitError(f"{path}: only one column (the URLs); the pool needs a caption column too")
    return url, others[0]


def _broken_line(path: Path, fmt: str, n_fields: int, header: bool) -> int | None:
    """Line number of the first row whose field count is not `n_fields` (None if none)."""
    delim = "\t" if fmt == "tsv" else ","
    with _open_text(path, errors="replace") as f:
        if fmt == "tsv":
            for i, line in enumerate(f, start=1):
                if (header and i == 1) or not line.strip("\r\n"):
                    continue
                if len(line.rstrip("\r\n").split(delim)) != n_fields:
                    return i
            return None
        reader = csv.reader(f, delimiter=delim)
        for row in reader:
            if header and reader.line_num == 1 or not row:
                continue
            if len(row) != n_fields:
                return reader.line_num
    return None


def _read_delimited(path: Path, fmt: str, spec: _Spec, stats: dict) -> Iterator[Any]:
    import pyarrow as pa
    names, header = _delimited_columns(path, fmt, spec)
    if not names:
        return
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in seen:
            raise WitError(f"{path} line 1: the header names column {n!r} twice (columns "
                           f"{seen[n]} and {i}); rename one")
        seen[n] = i
    if header:
        url = _pick(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
        text = _pick(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    else:
        url, text = _headerless_columns(path, names, _first_line(path), fmt, spec)
    stats["columns"] = [url, text]
    broken: list[tuple[str, int, int]] = []   # (row text, fields expected, found)

    def on_invalid(row):
        if spec.skip_broken_rows:
            stats["broken_rows"] += 1
            return "skip"
        broken.append((row.text or "", row.expected_columns, row.actual_columns))
        return "error"

    try:
        yield from _csv_batches(path, fmt, names, header, on_invalid, url, text)
    except pa.ArrowInvalid as e:
        if not broken and re.search(r"(?i)utf-?8|straddl", str(e)):
            bad = _bad_line(path)
            if bad and spec.skip_broken_rows:
                raise _SlowPath() from None
            if bad:
                raise WitError(f"{path} line {bad[0]}: {bad[1]}; fix or remove the row, or pass "
                               f"--skip-broken-rows") from None
            if "straddl" in str(e):
                raise WitError(f"{path}: a row (a quoted value across lines?) is longer than the "
                               f"reader's limit of {BLOCK_BYTES >> 20} MB per row") from None
        if broken:
            row, expected, found = broken[0]
            line = _broken_line(path, fmt, len(names), header)
            where = f"line {line}" if line else f"the row starting {row[:60]!r}"
            raise WitError(f"{path} {where}: expected {expected} fields, found {found}; "
                           f"fix or remove the row, or pass --skip-broken-rows") from None
        raise WitError(f"{path}: not readable as {fmt.upper()} ({e})") from None


def _csv_batches(path: Path, fmt: str, names: list[str], header: bool, on_invalid, url, text):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    reader = pcsv.open_csv(
        _input_stream(path),
        read_options=pcsv.ReadOptions(column_names=names, skip_rows=1 if header else 0,
                                      block_size=BLOCK_BYTES, encoding="utf8"),
        parse_options=pcsv.ParseOptions(
            delimiter="\t" if fmt == "tsv" else ",",
            quote_char=False if fmt == "tsv" else '"',
            newlines_in_values=fmt == "csv", ignore_empty_lines=True,
            invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                            strings_can_be_null=False))
    for batch in reader:
        yield batch, url, text


def _json_object(line: str) -> tuple[dict | None, str]:
    """(the object on a JSON Lines line, or None and what is wrong with the line)."""
    dup: list[str] = []

    def pairs(items):
        keys = [k for k, _ in items]
        dup.extend(k for i, k in enumerate(keys) if k in keys[:i])
        return dict(items)
    try:
        obj = json.loads(line, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    except RecursionError:
        return None, f"JSON nested deeper than the reader's limit of {MAX_JSON_DEPTH} levels"
    if not isinstance(obj, dict):
        return None, "not a JSON object (JSON Lines: one object per line)"
    if dup:
        return None, f"the key {dup[0]!r} appears twice in one object"
    return obj, ""


class _SlowPath(Exception):
    """A JSONL file with broken lines under --skip-broken-rows: reread it line by line."""


def _read_jsonl(path: Path, spec: _Spec, stats: dict) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.json as pjson
    first = _first_line(path)
    if first is None:
        return
    obj, problem = _json_object(first)
    if obj is None:
        if spec.skip_broken_rows:
            raise _SlowPath()
        raise WitError(f"{path} line 1: {problem}; fix or remove the line, or pass "
                       f"--skip-broken-rows")
    url = _pick(list(obj), spec.url_col, URL_NAMES, "--url-col", path, "URL")
    text = _pick(list(obj), spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    stats["columns"] = [url, text]
    # Arrow's parser would overflow its stack on a line nested 10,000s deep: the bytes it
    # reads are scanned first, and the read ends before such a line reaches it
    scan = _DepthScan()

    def too_deep():
        if spec.skip_broken_rows:
            return _SlowPath()
        return WitError(f"{path} line {scan.deep}: JSON nested deeper than the reader's limit of "
                        f"{MAX_JSON_DEPTH} levels; fix or remove the line, or pass --skip-broken-rows")
    try:
        with _binary(path) as raw:
            reader = pjson.open_json(
                pa.PythonFile(_Scanned(raw, scan), mode="r"),
                read_options=pjson.ReadOptions(block_size=BLOCK_BYTES),
                parse_options=pjson.ParseOptions(
                    explicit_schema=pa.schema([(url, pa.string()), (text, pa.string())]),
                    unexpected_field_behavior="infer"))
            for batch in reader:
                yield batch, url, text
        if scan.deep is not None:
            raise too_deep()
    except pa.ArrowInvalid as e:
        if scan.deep is not None:
            raise too_deep() from None
        line, problem = _bad_json_line(path)
        if line is None:
            if "straddl" in str(e):
                raise WitError(f"{path}: a line is longer than the reader's limit of "
                               f"{BLOCK_BYTES >> 20} MB per row") from None
            raise WitError(f"{path}: not readable as JSON Lines ({e})") from None
        if spec.skip_broken_rows:
            raise _SlowPath() from None
        raise WitError(f"{path} line {line}: {problem}; fix or remove the line, or pass "
                       f"--skip-broken-rows") from None


def _bad_json_line(path: Path) -> tuple[int | None, str]:
    bad = _bad_line(path)
    if bad:
        return bad
    with _open_text(path) as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                obj, problem = _json_object(line)
                if obj is None:
                    return i, problem
    return None, ""


def _jsonl_by_line(path: Path, spec: _Spec, stats: dict, tmp: Path) -> Iterator[Any]:
    """Slow path for --skip-broken-rows: parse line by line, skipping bad lines (not UTF-8,
    over the row limit, not a JSON object, nested too deep)."""
    import pyarrow as pa
    rows: list[dict] = []
    url = text = None
    shown, path = path, _clean_copy(path, tmp / "clean.jsonl", stats)
    with _open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            obj, _ = _json_object(line)
            if obj is None:
                stats["broken_rows"] += 1
                continue
            if url is None:
                url = _pick(list(obj), spec.url_col, URL_NAMES, "--url-col", shown, "URL")
                text = _pick(list(obj), spec.text_col, TEXT_NAMES, "--text-col", shown, "caption")
                stats["columns"] = [url, text]
            rows.append({k: (v if k not in (url, text) or v is None else str(v))
                         for k, v in obj.items()})
            if len(rows) >= 65536:
                yield pa.RecordBatch.from_pylist(rows), url, text
                rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows), url, text


def _read_parquet(path: Path, spec: _Spec, stats: dict, scratch: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    src = path
    if path.name.lower().endswith(".gz"):
        src = scratch / path.name[:-3]
        with open_input(path) as raw, gzip.open(raw, "rb") as fin, open(src, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
    elif storage.is_remote(path):
        with open_input(path) as raw:   # a file object only lives as long as its reader
            yield from _read_parquet_file(path, raw, spec, stats)
        return
    yield from _read_parquet_file(path, src, spec, stats)


def _read_parquet_file(path, src, spec: _Spec, stats: dict) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as e:
        raise WitError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    url = _pick(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
    text = _pick(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    stats["columns"] = [url, text]
    try:
        for batch in pf.iter_batches(batch_size=65536):
            yield batch, url, text
    except (pa.ArrowInvalid, OSError) as e:
        raise WitError(f"{path}: corrupt Parquet data ({e})") from None


def _as_text(col, name: str, path: Path):
    import pyarrow as pa
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string())
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        raise WitError(f"{path}: column {name!r} holds {t}, not text; pick another with "
                       f"--url-col/--text-col")
    return col.cast(pa.string())


def _clean(batch, url_col: str, text_col: str, path: Path, stats: dict, first_row: int,
           file_index: int, buckets: int, max_chars: int = 0):
    """Rename, filter and hash one batch; returns a table with uid, url, text, extras."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from .io import uids
    url = pc.utf8_trim_whitespace(_as_text(batch.column(url_col), url_col, path))
    text = _as_text(batch.column(text_col), text_col, path)
    no_url = pc.fill_null(pc.equal(url, ""), True)
    no_text = pc.and_(pc.invert(no_url),
                      pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), True))
    ok = pc.and_(pc.invert(no_url), pc.invert(no_text))
    good = pc.fill_null(pc.match_substring_regex(url, GOOD_URL), False)
    bad_url = pc.and_(ok, pc.invert(good))
    keep = pc.and_(ok, good)
    for reason, mask in zip(REASONS, (no_url, no_text, bad_url)):
        stats[reason] += int(pc.sum(mask).as_py() or 0)
    cols = {"url": url.filter(keep), "text": text.filter(keep)}
    if max_chars:
        long = pc.greater(pc.utf8_length(cols["text"]), max_chars)
        cut = int(pc.sum(long).as_py() or 0)
        if cut:
            stats["captions_cut"] += cut
            cols["text"] = pc.if_else(long, pc.utf8_slice_codeunits(cols["text"], 0, max_chars),
                                      cols["text"])
    uid_list = uids(cols["url"], cols["text"])
    extras = {}
    for name in batch.schema.names:
        if name in (url_col, text_col):
            continue
        out_name = f"source_{name}" if name in ("uid", "url", "text", ORDER, BUCKET) else name
        extras[out_name] = batch.column(name).filter(keep)
    order = (np.int64(file_index) << np.int64(40)) + first_row + np.flatnonzero(
        keep.to_numpy(zero_copy_only=False))
    return pa.table({
        "uid": pa.array(uid_list, pa.string()), **cols, **extras,
        ORDER: pa.array(order, pa.int64()),
        BUCKET: pa.array([int(u[:8], 16) % buckets for u in uid_list], pa.int32()),
    })


def _write_chunk(tables: list, dest: Path) -> None:
    """One chunk file, rows grouped by bucket (a row group per bucket, for pruning)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.take(pc.sort_indices(table, [(BUCKET, "ascending"), (ORDER, "ascending")]))
    bucket = table.column(BUCKET).to_numpy()
    cuts = [0, *((bucket[1:] != bucket[:-1]).nonzero()[0] + 1).tolist(), len(bucket)]
    with pq.ParquetWriter(dest, table.schema) as w:
        for a, b in zip(cuts, cuts[1:]):
            w.write_table(table.slice(a, b - a))


def read_file(path: str, file_index: int, spec: _Spec, out_dir: str) -> dict:
    """Ray task: read one candidate file (a path or URL) into bucketed chunk files under
    out_dir (in the build), stats.json last: its presence says the file is done."""
    src, out = storage.location(path, "--pool"), storage.location(out_dir)
    if storage.is_remote(out):   # written on this machine, then put into the store
        with tempfile.TemporaryDirectory(prefix="wit-pool-") as tmp:
            stats = _read_any(src, file_index, spec, Path(tmp))
            chunks = sorted(Path(tmp).glob("chunk-*.parquet"))
            if chunks:
                out.fs.put([str(c) for c in chunks], [f"{out.path}/{c.name}" for c in chunks])
            storage.write_bytes(out / "stats.json", (Path(tmp) / "stats.json").read_bytes())
        return stats
    tmp = out.with_name(out.name + ".tmp")   # a local build: the folder appears whole
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = _read_any(src, file_index, spec, tmp)
    tmp.rename(out)
    return stats


def _read_any(path, file_index: int, spec: _Spec, tmp: Path) -> dict:
    try:
        try:
            return _read_file(path, file_index, spec, tmp, slow=False)
        except _SlowPath:
            for stale in tmp.glob("*"):
                stale.unlink()
            return _read_file(path, file_index, spec, tmp, slow=True)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, RecursionError) as e:
        raise _unreadable(path, e) from None


def _renamed(batches, copy: Path, path) -> Iterator[Any]:
    """`batches`, with errors naming `path` instead of its clean `copy`."""
    try:
        yield from batches
    except WitError as e:
        raise WitError(str(e).replace(str(copy), str(path))) from None


def _read_file(path, file_index: int, spec: _Spec, tmp: Path, slow: bool) -> dict:
    stats: dict[str, Any] = {"file": str(path), "rows_read": 0, "broken_rows": 0, "kept": 0,
                             "captions_cut": 0, **{r: 0 for r in REASONS}}
    fmt = fmt_of(path)
    if fmt != "parquet":
        _check_text_head(path, fmt)
    if fmt == "parquet":
        batches = _read_parquet(path, spec, stats, tmp)
    elif fmt == "jsonl":
        batches = _jsonl_by_line(path, spec, stats, tmp) if slow else _read_jsonl(path, spec, stats)
    elif slow:   # --skip-broken-rows after a bad byte or an over-long row: read a clean copy
        batches = _renamed(_read_delimited(_clean_copy(path, tmp / f"clean.{fmt}", stats), fmt,
                                           spec, stats), tmp / f"clean.{fmt}", path)
    else:
        batches = _read_delimited(path, fmt, spec, stats)
    pending: list = []
    pending_rows = chunks = 0
    for batch, url_col, text_col in batches:
        table = _clean(batch, url_col, text_col, path, stats, stats["rows_read"], file_index,
                       spec.buckets, spec.max_caption_chars)
        stats["rows_read"] += batch.num_rows
        stats["kept"] += table.num_rows
        if table.num_rows:
            pending.append(table)
            pending_rows += table.num_rows
        if pending_rows >= CHUNK_ROWS:
            _write_chunk(pending, tmp / f"chunk-{chunks:05d}.parquet")
            pending, pending_rows, chunks = [], 0, chunks + 1
    if pending:
        _write_chunk(pending, tmp / f"chunk-{chunks:05d}.parquet")
    for scratch in tmp.glob("*"):
        if not scratch.name.startswith("chunk-"):
            scratch.unlink()
    (tmp / "stats.json").write_text(json.dumps(stats))
    return stats


# ----------------------------------------------------------------------------------
# The stage: read every file (Ray tasks), then dedupe each bucket in DuckDB.

def _buckets(cfg: Config, files: list) -> int:
    if cfg.pool_parts:
        return cfg.pool_parts
    size = sum(p.stat().st_size * (3 if fmt_of(p) == "parquet" or p.name.endswith(".gz") else 1)
               for p in files)
    return max(1, min(1024, math.ceil(size / BUCKET_BYTES)))


def _pool(ctx: StageContext, cfg: Config, files: list) -> StageOutput:
    from . import cluster
    spec = _Spec(cfg.url_col, cfg.text_col, cfg.skip_broken_rows, _buckets(cfg, files),
                 cfg.max_caption_chars)
    read_dir = ctx.work / "read"
    dirs = [read_dir / f"f{i:05d}" for i in range(len(files))]
    finished = {p.parent.name for p in read_dir.glob("f*/stats.json")} if read_dir.exists() else set()
    todo = [i for i, d in enumerate(dirs) if d.name not in finished]
    if todo:
        cluster.run_units(read_file, ((str(files[i]), i, spec, str(dirs[i])) for i in todo),
                          "pool: reading", total=len(todo), done=len(files) - len(todo),
                          unit="file")
    per_file = [json.loads(b) for b in storage.read_all([d / "stats.json" for d in dirs])]
    totals = {k: sum(s.get(k, 0) for s in per_file)
              for k in ("rows_read", "kept", "broken_rows", "captions_cut", *REASONS)}
    if totals["kept"] == 0:
        raise WitError(
            f"the pool is empty: {totals['rows_read']:,} rows read from {len(files)} file(s), "
            f"{totals['no_url']:,} without a URL, {totals['no_text']:,} without a caption, "
            f"{totals['bad_url']:,} with a non-http(s) URL, {totals['broken_rows']:,} broken. "
            f"Check --url-col/--text-col (used: {per_file[0].get('columns')})")
    ctx.output("pool")
    rows = _dedupe(ctx, dirs, spec.buckets, cfg.memory_limit)
    summary = {
        "files": len(files),
        "rows_read": totals["rows_read"],
        "dropped_no_url": totals["no_url"],
        "dropped_no_text": totals["no_text"],
        "dropped_bad_url": totals["bad_url"],
        "broken_rows_skipped": totals["broken_rows"],
        "captions_cut": totals["captions_cut"],
        "duplicates": totals["kept"] - rows["rows"],
        "rows": rows["rows"],
        "pairs_per_text": round(rows["rows"] / max(rows["texts"], 1), 3),
        "parts": rows["parts"],
        "uid_collisions": rows["uid_collisions"],  # distinct pairs given a fresh uid, all kept
        "uid_bits": UID_BYTES * 8,
        "columns": {Path(s["file"]).name: s.get("columns") for s in per_file},
    }
    return StageOutput(rows=rows["rows"], summary=summary)


def _dedupe(ctx: StageContext, dirs: list, buckets: int, memory_limit: str) -> dict[str, int]:
    """Keep the first occurrence of each (url, text) per bucket into work/parts/part-B.parquet
    (resumable); the non-empty parts become pool/part-B.parquet at the commit.

    Distinct pairs whose uids collide (the same uid lands in the same bucket) are all
    kept: the first in input order keeps its uid, the n-th gets md5(uid:n), 32 hex digits
    as well. The count (pairs kept less distinct uids read) is in work/parts/part-B.json,
    written after the part; a part counts as finished only with it."""
    import pyarrow.parquet as pq
    names = {d.name for d in dirs}
    chunks = sorted((c for c in dirs[0].parent.glob("f*/chunk-*.parquet") if c.parent.name in names),
                    key=str)
    done_dir = ctx.work / "parts"
    finished = ({p.name for p in done_dir.glob("part-*.parquet") if p.with_suffix(".json").exists()}
                if done_dir.exists() else set())
    con = catalog.scratch(ctx.scratch, memory_limit, keep_order=False, remote=ctx.build)
    try:
        files = "[" + ", ".join(map(storage.sql_path, chunks)) + "]"
        for b in range(buckets):
            dest = done_dir / f"part-{b:05d}.parquet"
            if dest.name in finished:
                continue
            bucket = (f"SELECT * FROM read_parquet({files}, union_by_name = true) "
                      f"WHERE {BUCKET} = {b} QUALIFY row_number() OVER "
                      f"(PARTITION BY uid, url, text ORDER BY {ORDER}) = 1")
            with storage.writing(dest) as tmp:
                con.execute(f"COPY (SELECT * EXCLUDE ({ORDER}, {BUCKET}) FROM ({bucket}) "
                            f"ORDER BY {ORDER}) TO {storage.sql_path(tmp)} (FORMAT parquet)")
                with open(tmp, "rb") as f:
                    kept_rows = pq.ParquetFile(f).metadata.num_rows
                # distinct pairs kept less distinct uids read (the uid column alone): collisions
                uids = con.execute(f"SELECT count(DISTINCT uid) FROM read_parquet({files}, "
                                   f"union_by_name = true) WHERE {BUCKET} = {b}").fetchall()[0][0]
                if kept_rows > uids:  # rare: write the bucket again, later pairs renamed
                    con.execute(f"""
                        COPY (SELECT * EXCLUDE ({ORDER}, {BUCKET}, _wit_n) REPLACE (
                                     CASE WHEN _wit_n = 1 THEN uid ELSE md5(uid || ':' || _wit_n) END AS uid)
                              FROM (SELECT *, row_number() OVER (PARTITION BY uid ORDER BY {ORDER}) AS _wit_n
                                    FROM ({bucket}))
                              ORDER BY {ORDER})
                        TO {storage.sql_path(tmp)} (FORMAT parquet)""")
            storage.write_json(done_dir / f"part-{b:05d}.json", {"uid_collisions": int(kept_rows - uids)})
        rows = parts = 0
        kept = []
        for b in range(buckets):
            src = done_dir / f"part-{b:05d}.parquet"
            with src.open("rb") as f:
                n = pq.ParquetFile(f).metadata.num_rows
            if n:
                ctx.adopt(src, f"pool/{src.name}")
                kept.append(src)
                rows, parts = rows + n, parts + 1
        texts = con.execute(f"SELECT count(DISTINCT hash(text)) FROM read_parquet("
                            f"[{', '.join(map(storage.sql_path, kept))}])").fetchall()[0][0]
        collisions = sum(storage.read_json(done_dir / f"part-{b:05d}.json")["uid_collisions"]
                         for b in range(buckets))
        return {"rows": rows, "texts": int(texts), "parts": parts, "uid_collisions": collisions}
    finally:
        con.close()
