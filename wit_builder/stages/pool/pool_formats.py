"""What a candidate file of the pool is, for its readers: the format its name says,
the URL and caption columns recognised by name, the settings a reader follows, and
opening it (local or in a store, gzipped or not) as text or bytes."""
from __future__ import annotations

import contextlib
import gzip
from dataclasses import dataclass
from pathlib import Path

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.io import open_input

URL_NAMES = ("url", "image_url", "img_url", "imageurl", "image_link", "img_link",
             "photo_url", "link", "src", "image")
TEXT_NAMES = ("text", "caption", "captions", "alt_text", "alttext", "alt", "description",
              "caption_reference_description", "title", "sentence", "txt")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
           ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
BLOCK_BYTES = 8 << 20        # the CSV/JSON readers' block: the longest row they take
MAX_JSON_DEPTH = 1000        # deeper nesting would overflow the JSON parser's stack


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


@dataclass
class ReadSpec:
    """What the reader of one file needs from the pool's settings."""
    url_col: str | None
    text_col: str | None
    skip_broken_rows: bool
    buckets: int
    max_caption_chars: int = 0


def pick_column(names: list[str], given: str | None, known: tuple[str, ...], flag: str,
                path: Path, what: str) -> str:
    """The column `given` with `flag`, else the first of `names` that is a `known` name."""
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


def open_text(path, errors: str = "strict"):
    """The file as UTF-8 text (a BOM dropped, decompressed if its name ends in .gz)."""
    if storage.is_remote(path):   # small reads: only the first lines are wanted, often
        return path.fs.open(path.path, "rt", compression="infer", encoding="utf-8-sig",
                            newline="", block_size=1 << 20, errors=errors)
    return gzip.open(path, "rt", encoding="utf-8-sig", newline="", errors=errors) if \
        path.name.lower().endswith(".gz") else open(path, "rt", encoding="utf-8-sig", newline="",
                                                    errors=errors)


def first_line(path: Path) -> str | None:
    """The file's first line that is not blank, or None."""
    with open_text(path) as f:
        for line in f:
            if line.strip():
                return line
    return None


@contextlib.contextmanager
def open_bytes(path):
    """The file's bytes (decompressed if its name ends in .gz)."""
    with open_input(path) as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz
        else:
            yield raw


class SlowPath(Exception):
    """A file with broken lines under --skip-broken-rows: read it again the slow way (a
    clean copy of a CSV/TSV, a JSONL file line by line)."""

