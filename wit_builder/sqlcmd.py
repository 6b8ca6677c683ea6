"""`wit-build sql` and `wit-build stats`: read-only views of the manifests."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import catalog
from .errors import WitError
from .stage import records


def format_table(table, max_rows: int = 40, max_width: int = 60) -> str:
    """A plain-text table of a pyarrow Table (first `max_rows` rows)."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(v) -> str:
        s = "NULL" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    out = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    more = table.num_rows - len(rows)
    out.append(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''}"
               + (f", {more:,} not shown; use --format csv --output FILE for all" if more > 0 else "")
               + ")")
    return "\n".join(out)


def write_result(table, fmt: str, output: str | None) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    if fmt == "parquet":
        if not output:
            raise WitError("--format parquet needs --output FILE")
        pq.write_table(table, output)
        return
    if fmt == "csv":
        import io
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        data = buf.getvalue().decode()
    else:  # json: one object per line
        data = "".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist())
    if output:
        Path(output).write_text(data)
    else:
        sys.stdout.write(data)


def run_sql(build: Path, sql: str, fmt: str = "table", output: str | None = None,
            max_rows: int = 40) -> None:
    table = catalog.query(build, sql)
    if fmt == "table":
        text = format_table(table, max_rows=max_rows)
        if output:
            Path(output).write_text(text + "\n")
        else:
            print(text)
    else:
        write_result(table, fmt, output)
    if output:
        print(f"wrote {table.num_rows:,} rows to {output}", file=sys.stderr)


def print_stats(build: Path) -> None:
    """One line per finished stage: rows, seconds, when, and its key numbers."""
    from . import storage
    build = storage.location(build)
    storage.check_reachable(build)
    recs = records(build) if (build / "_stages").exists() else []
    if not recs:
        raise WitError(f"--out {build}: no finished stages here; run a stage first or check --out")
    print(f"{'stage':10s} {'status':8s} {'rows':>12s} {'seconds':>9s}  finished")
    for r in recs:
        print(f"{r['stage']:10s} {r['status']:8s} {r['rows']:>12,} {r['seconds']:>9.1f}  {r['finished']}")
    work = build / "_work"
    running = sorted({p.name.split("-")[0] for p in work.iterdir()} if work.exists() else set())
    if running:
        print(f"unfinished (running or interrupted): {', '.join(running)}")
