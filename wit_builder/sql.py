"""The one way wit writes a value into SQL text for DuckDB.

Prefer a bound parameter (`con.execute(sql, [value])`) where DuckDB takes one; paths
in `read_parquet(...)`, `COPY ... TO` and view definitions cannot be parameters, so
they go through `literal`.
"""
from __future__ import annotations


def literal(value) -> str:
    """`value` (a string, path or URL) as a quoted SQL string literal, single quotes doubled."""
    return "'" + str(value).replace("'", "''") + "'"
