"""The pool's JSON Lines reader: Arrow's parser over the file, guarded by a scan that
stops before a line nested deeper than the parser's stack takes, and the line-by-line
reader --skip-broken-rows falls back to."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

from wit_builder.errors import WitError
from wit_builder.stages.pool.pool_checks import clean_copy, first_bad_line
from wit_builder.stages.pool.pool_formats import (
    BLOCK_BYTES,
    MAX_JSON_DEPTH,
    TEXT_NAMES,
    URL_NAMES,
    ReadSpec,
    SlowPath,
    first_line,
    open_bytes,
    open_text,
    pick_column,
)

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


def read_jsonl(path: Path, spec: ReadSpec, stats: dict) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.json as pjson
    first = first_line(path)
    if first is None:
        return
    obj, problem = _json_object(first)
    if obj is None:
        if spec.skip_broken_rows:
            raise SlowPath()
        raise WitError(f"{path} line 1: {problem}; fix or remove the line, or pass "
                       f"--skip-broken-rows")
    url = pick_column(list(obj), spec.url_col, URL_NAMES, "--url-col", path, "URL")
    text = pick_column(list(obj), spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    stats["columns"] = [url, text]
    # Arrow's parser would overflow its stack on a line nested 10,000s deep: the bytes it
    # reads are scanned first, and the read ends before such a line reaches it
    scan = _DepthScan()

    def too_deep():
        if spec.skip_broken_rows:
            return SlowPath()
        return WitError(f"{path} line {scan.deep}: JSON nested deeper than the reader's limit of "
                        f"{MAX_JSON_DEPTH} levels; fix or remove the line, or pass --skip-broken-rows")
    try:
        with open_bytes(path) as raw:
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
            raise SlowPath() from None
        raise WitError(f"{path} line {line}: {problem}; fix or remove the line, or pass "
                       f"--skip-broken-rows") from None


def _bad_json_line(path: Path) -> tuple[int | None, str]:
    bad = first_bad_line(path)
    if bad:
        return bad
    with open_text(path) as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                obj, problem = _json_object(line)
                if obj is None:
                    return i, problem
    return None, ""


def read_jsonl_by_line(path: Path, spec: ReadSpec, stats: dict, tmp: Path) -> Iterator[Any]:
    """Slow path for --skip-broken-rows: parse line by line, skipping bad lines (not UTF-8,
    over the row limit, not a JSON object, nested too deep)."""
    import pyarrow as pa
    rows: list[dict] = []
    url = text = None
    shown, path = path, clean_copy(path, tmp / "clean.jsonl", stats)
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            obj, _ = _json_object(line)
            if obj is None:
                stats["broken_rows"] += 1
                continue
            if url is None:
                url = pick_column(list(obj), spec.url_col, URL_NAMES, "--url-col", shown, "URL")
                text = pick_column(list(obj), spec.text_col, TEXT_NAMES, "--text-col", shown, "caption")
                stats["columns"] = [url, text]
            rows.append({k: (v if k not in (url, text) or v is None else str(v))
                         for k, v in obj.items()})
            if len(rows) >= 65536:
                yield pa.RecordBatch.from_pylist(rows), url, text
                rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows), url, text

