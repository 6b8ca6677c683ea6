"""`wit-build sql` and `wit-build stats`: read-only views of the manifests."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from wit_builder.build import catalog
from wit_builder.build.records import records, stale
from wit_builder.errors import WitError

# C0/C1 controls (ESC starts a terminal escape sequence), DEL, and the bidi overrides and
# isolates that reorder what a terminal shows: escaped in table output.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(s: str) -> str:
    """`s` with control characters written as escapes (`\\x1b`, `\\n`, `\\u202e`)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), s)


def format_table(table, max_rows: int = 40, max_width: int = 60) -> str:
    """A plain-text table of a pyarrow Table (first `max_rows` rows); control characters
    in names and values are escaped, so a caption cannot drive the terminal."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(v) -> str:
        s = "NULL" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        s = printable(s)
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(r[n]) for n in names] for r in rows]
    names = [printable(n) for n in names]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    out = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    more = table.num_rows - len(rows)
    out.append(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''}"
               + (f", {more:,} not shown; use --format csv --output FILE for all" if more > 0 else "")
               + ")")
    return "\n".join(out)


def _flat(table):
    """`table` with its list/struct/map columns as JSON text (CSV has no nested values)."""
    import pyarrow as pa
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            values = [None if v is None else json.dumps(v, default=str, ensure_ascii=False)
                      for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(values, pa.string()))
    return table


def check_output(output: str | None) -> None:
    """--output must name a file in a folder that exists (checked before the query runs)."""
    if not output:
        return
    out = Path(output)
    if out.is_dir():
        raise WitError(f"--output {output}: is a folder; name a file, e.g. {out / 'result.csv'}")
    if not out.parent.is_dir():
        raise WitError(f"--output {output}: the folder {out.parent} does not exist; create it "
                       "first (nothing was written)")


def _write(output: str, data) -> None:
    try:
        if isinstance(data, bytes):
            Path(output).write_bytes(data)
        else:
            Path(output).write_text(data)
    except OSError as e:
        raise WitError(f"--output {output}: cannot write ({e.strerror or e})") from None


def write_result(table, fmt: str, output: str | None) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    if fmt == "parquet":
        if not output:
            raise WitError("--format parquet needs --output FILE")
        import io
        buf = io.BytesIO()
        pq.write_table(table, buf)
        _write(output, buf.getvalue())
        return
    if fmt == "csv":
        import io
        buf = io.BytesIO()
        pacsv.write_csv(_flat(table), buf)
        data = buf.getvalue().decode()
    else:  # json: one object per line
        data = "".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist())
    if output:
        _write(output, data)
    else:
        sys.stdout.write(data)


def run_sql(build: Path, sql: str, fmt: str = "table", output: str | None = None,
            max_rows: int = 40, allow_files=()) -> None:
    """Run a read-only query and print (or write) its result; list/struct columns go
    into CSV as JSON text."""
    check_output(output)
    if fmt == "parquet" and not output:
        raise WitError("--format parquet needs --output FILE")
    table = catalog.query(build, sql, allow_files=allow_files)
    if fmt == "table":
        text = format_table(table, max_rows=max_rows)
        if output:
            _write(output, text + "\n")
        else:
            print(text)
    else:
        write_result(table, fmt, output)
    if output:
        print(f"wrote {table.num_rows:,} rows to {output}", file=sys.stderr)


def print_stats(build: Path) -> None:
    """One line per finished stage: rows, seconds, when, and its key numbers."""
    from wit_builder import storage
    build = storage.location(build)
    storage.check_reachable(build)
    recs = records(build) if (build / "_stages").exists() else []
    if not recs:
        raise WitError(f"--out {build}: no finished stages here; run a stage first or check --out")
    old = stale(recs)
    print(f"{'stage':10s} {'status':8s} {'rows':>12s} {'seconds':>9s}  finished")
    for r in recs:
        status = "stale" if r["stage"] in old else r["status"]
        print(f"{r['stage']:10s} {status:8s} {r['rows']:>12,} {r['seconds']:>9.1f}  {r['finished']}")
    if old:
        print("stale (made from an upstream run that has since been replaced): "
              + "; ".join(f"{n}: {why}" for n, why in old.items())
              + f". Rerun them in order (wit-build {' / '.join(old)}) to bring them up to date")
    work = build / "_work"
    running = sorted({p.name.split("-")[0] for p in work.iterdir()} if work.exists() else set())
    if running:
        print(f"unfinished (running or interrupted): {', '.join(running)}")
