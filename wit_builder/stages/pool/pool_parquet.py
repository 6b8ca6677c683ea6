"""The pool's Parquet reader (LAION, DataComp, COYO metadata), gzipped or in a store."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any, Iterator

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.io import open_input
from wit_builder.stages.pool.pool_formats import TEXT_NAMES, URL_NAMES, ReadSpec, pick_column


def read_parquet(path: Path, spec: ReadSpec, stats: dict, scratch: Path) -> Iterator[Any]:
    """(batch, url column, caption column) of a Parquet file; a .gz one is first
    decompressed into `scratch`."""
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


def _read_parquet_file(path, src, spec: ReadSpec, stats: dict) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as e:
        raise WitError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    url = pick_column(names, spec.url_col, URL_NAMES, "--url-col", path, "URL")
    text = pick_column(names, spec.text_col, TEXT_NAMES, "--text-col", path, "caption")
    stats["columns"] = [url, text]
    try:
        for batch in pf.iter_batches(batch_size=65536):
            yield batch, url, text
    except (pa.ArrowInvalid, OSError) as e:
        raise WitError(f"{path}: corrupt Parquet data ({e})") from None

