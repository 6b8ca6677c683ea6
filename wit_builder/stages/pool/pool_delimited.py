"""The pool's CSV and TSV reader: the header found or told apart from a first row of
data (CC3M/CC12M have none), Arrow's CSV parser, and broken rows named by line."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Iterator

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.stages.pool.pool_checks import first_bad_line
from wit_builder.stages.pool.pool_formats import (
    BLOCK_BYTES,
    TEXT_NAMES,
    URL_NAMES,
    ReadSpec,
    SlowPath,
    first_line,
    open_text,
    pick_column,
)


def _input_stream(path):
    """An Arrow input stream over a (possibly gzipped) file, local or in a store."""
    import pyarrow as pa
    if not storage.is_remote(path):
        return pa.input_stream(str(path), compression="detect")
    gz = "gzip" if path.name.lower().endswith(".gz") else None
    return pa.input_stream(path.fs.open(path.path, "rb"), compression=gz)



def _looks_like_url(value: str) -> bool:
    v = value.strip().lower()
    return v.startswith("http://") or v.startswith("https://")


def _delimited_columns(path: Path, fmt: str, spec: ReadSpec) -> tuple[list[str], bool]:
    """Column names of a CSV/TSV and whether its first line is a header."""
    first = first_line(path)
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
                        spec: ReadSpec) -> tuple[str, str]:
    """URL and caption columns of a header-less file: the one holding a URL, the other."""
    fields = next(csv.reader([first], delimiter="\t" if fmt == "tsv" else ",",
                             quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL))
    url = spec.url_col or next(n for n, f in zip(names, fields) if _looks_like_url(f))
    if spec.url_col and spec.url_col not in names:
        pick_column(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
    if spec.text_col:
        return url, pick_column(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    others = [n for n in names if n != url]
    if not others:
        raise WitError(f"{path}: only one column (the URLs); the pool needs a caption column too")
    return url, others[0]


def _broken_line(path: Path, fmt: str, n_fields: int, header: bool) -> int | None:
    """Line number of the first row whose field count is not `n_fields` (None if none)."""
    delim = "\t" if fmt == "tsv" else ","
    with open_text(path, errors="replace") as f:
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


def read_delimited(path: Path, fmt: str, spec: ReadSpec, stats: dict) -> Iterator[Any]:
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
        url = pick_column(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
        text = pick_column(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    else:
        url, text = _headerless_columns(path, names, first_line(path), fmt, spec)
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
            bad = first_bad_line(path)
            if bad and spec.skip_broken_rows:
                raise SlowPath() from None
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

