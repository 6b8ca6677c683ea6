"""`wit-build takedown`: remove samples from the published shards, and record why.

    wit-build takedown --out wit-data --uids uids.txt --reason "owner request 2026-12-01"
    wit-build takedown --out wit-data --domains domains.txt --urls urls.txt

Each file is a plain list (one uid, URL or domain a line; a domain also names its
subdomains). The samples of the published set (the manifest, view `shards`) that the
lists name are removed: only the shards that held them are rewritten (the other
members kept in order, byte for byte; the other shards untouched), and with them
their `NNNNN.parquet` / `NNNNN_stats.json` where publish wrote those, `sizes.json`,
the manifest and the publish record's counts. Every removal is a row of
`takedowns/` (view `takedowns`: uid, url, shard, key, reason, matched_by, removed_at),
an append-only log, and a later `wit-build publish` leaves those uids out. Running the
same takedown again finds nothing and changes nothing; a run killed midway is
finished by running it again.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import tarfile
import tempfile
import uuid
from pathlib import Path

from wit_builder import storage
from wit_builder.build import catalog, lock
from wit_builder.build.stage import output_dir, read_record, record_path, require
from wit_builder.errors import WitError
from wit_builder.io import read_list

LOG_DIR = "takedowns"
VIEW = "takedowns"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uids", metavar="FILE", help="plain list of uids to remove")
    p.add_argument("--urls", metavar="FILE", help="plain list of image URLs to remove")
    p.add_argument("--domains", metavar="FILE",
                   help="plain list of domains whose images are removed (subdomains included)")
    p.add_argument("--reason", default="takedown request", help="why, recorded with each removal")


def main(args: argparse.Namespace) -> int:
    build = storage.location(getattr(args, "out", "wit-data"))
    res = run(build, uids=args.uids, urls=args.urls, domains=args.domains, reason=args.reason)
    if not res["removed"]:
        print(f"[takedown] nothing to remove: no published sample matches (already removed: "
              f"{res['already']:,})")
    else:
        print(f"[takedown] removed {res['removed']:,} samples from {len(res['shards'])} shard(s): "
              f"{', '.join(res['shards'][:10])}{' ...' if len(res['shards']) > 10 else ''}")
    return 0


def _matches(con, manifest_glob: str, lists: dict[str, list[str]]) -> list[dict]:
    """Manifest rows the lists name (set logic in DuckDB), with matched_by."""
    from wit_builder.stages.fetch.polite import HOST_SQL, domain_hits
    for name in ("uids", "urls", "domains"):
        con.execute(f"CREATE TEMP TABLE t_{name} (v VARCHAR)")
        if lists.get(name):
            con.executemany(f"INSERT INTO t_{name} VALUES (?)", [[v] for v in sorted(set(lists[name]))])
    con.execute(f"CREATE TEMP TABLE m AS SELECT uid, url, shard, key, {HOST_SQL} AS host "
                f"FROM read_parquet({manifest_glob})")
    rows = con.execute(f"""
        WITH d AS ({domain_hits("m", "t_domains", "v")})
        SELECT uid, url, shard, key,
               CASE WHEN uid IN (SELECT v FROM t_uids) THEN 'uid'
                    WHEN url IN (SELECT v FROM t_urls) THEN 'url' ELSE 'domain' END AS matched_by
        FROM m WHERE uid IN (SELECT v FROM t_uids) OR url IN (SELECT v FROM t_urls)
                     OR host IN (SELECT host FROM d)
        ORDER BY shard, key""").fetchall()
    return [dict(zip(("uid", "url", "shard", "key", "matched_by"), r)) for r in rows]


def run(build, uids: str | None = None, urls: str | None = None, domains: str | None = None,
        reason: str = "takedown request") -> dict:
    """Remove the named samples from the published shards; returns what was done."""
    build = storage.location(build)
    if not (uids or urls or domains):
        raise WitError("takedown: give --uids FILE, --urls FILE or --domains FILE (plain lists)")
    lists = {name: read_list(path, f"--{name}", name == "domains")
             for name, path in (("uids", uids), ("urls", urls), ("domains", domains)) if path}
    require(build, "publish")
    with lock.held(build, "wit-build takedown"):
        return _run(build, lists, reason)


def _run(build, lists: dict[str, list[str]], reason: str) -> dict:
    rec = read_record(build, "publish")
    shards_dir = output_dir(build, rec, "shards")
    manifest_dir = output_dir(build, rec, "manifest")
    manifests = sorted(manifest_dir.glob("*.parquet"), key=str)
    con = catalog.scratch(tempfile.mkdtemp(prefix="wit-takedown-"), remote=build)
    try:
        hits = _matches(con, storage.sql_path(manifest_dir / "*.parquet"), lists) if manifests else []
    finally:
        con.close()
    logged = _logged(build)
    already = sum(1 for v in lists.get("uids", []) if v in logged and v not in {h["uid"] for h in hits})
    if not hits:
        return {"removed": 0, "shards": [], "already": already}
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    new = [{**h, "reason": reason, "removed_at": now} for h in hits if h["uid"] not in logged]
    if new:  # the log first: a run killed after it still removes these when run again
        _write_log(build, new)
    gone: dict[str, set[str]] = {}
    for h in hits:
        gone.setdefault(h["shard"].rsplit("/", 1)[-1], set()).add(h["key"])
    sizes = storage.read_json(shards_dir / "sizes.json")
    for name in sorted(gone):
        sizes[name] = _rewrite_shard(shards_dir / name, gone[name])
    removed_uids = {h["uid"] for h in hits}
    for m in manifests:
        _rewrite_manifest(m, removed_uids)
    storage.write_json(shards_dir / "sizes.json", dict(sorted(sizes.items())))
    _update_record(build, rec, sum(sizes.values()), len(_logged(build)))
    catalog.refresh(build)
    return {"removed": len(hits), "shards": sorted(gone), "already": already}


def _logged(build) -> set[str]:
    """uids already in the takedowns log."""
    folder = storage.child(build, LOG_DIR)
    files = sorted(folder.glob("*.parquet"), key=str) if folder.exists() else []
    import pyarrow.parquet as pq
    out: set[str] = set()
    for f in files:
        with f.open("rb") as fh:
            out |= set(pq.read_table(fh, columns=["uid"])["uid"].to_pylist())
    return out


def _write_log(build, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    schema = pa.schema([(c, pa.string()) for c in
                        ("uid", "url", "shard", "key", "matched_by", "reason", "removed_at")])
    stamp = rows[0]["removed_at"].replace(":", "").replace("-", "")
    with tempfile.TemporaryDirectory(prefix="wit-takedown-") as tmp:
        local = Path(tmp) / "log.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), local)
        storage.upload_file(local, storage.child(build, LOG_DIR, f"{stamp}-{uuid.uuid4().hex[:8]}.parquet"))
    # the catalog gets its view from a record, as every stage's output does
    storage.write_json(record_path(build, "takedown"), {
        "stage": "takedown", "run_id": "log", "status": "done", "params": {},
        "started": rows[0]["removed_at"], "finished": rows[0]["removed_at"], "seconds": 0.0, "rows": len(_logged(build)),
        "outputs": {LOG_DIR: LOG_DIR}, "views": {VIEW: f"{LOG_DIR}/*.parquet"}, "summary": {}})


def _rewrite_shard(tar_path, keys: set[str]) -> int:
    """Drop the members of `keys` from one shard (and its side files); returns how many
    samples it keeps. Kept members keep their headers and bytes, in their order."""
    with tempfile.TemporaryDirectory(prefix="wit-takedown-") as tmp:
        local = storage.download_file(tar_path, Path(tmp) / "in.tar")
        out = Path(tmp) / "out.tar"
        kept: set[str] = set()
        with tarfile.open(local) as src, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as sink:
            for m in src.getmembers():
                key = m.name.split(".", 1)[0]
                if key in keys:
                    continue
                kept.add(key)
                sink.addfile(m, src.extractfile(m) if m.isfile() else None)
        _rewrite_side_files(tar_path, keys, Path(tmp))
        storage.upload_file(out, tar_path)
    return len(kept)


def _rewrite_side_files(tar_path, keys: set[str], tmp: Path) -> None:
    """NNNNN.parquet and NNNNN_stats.json beside a shard, where publish wrote them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    side = tar_path.with_name(tar_path.name[:-4] + ".parquet")
    removed = 0
    if side.exists():
        with side.open("rb") as f:
            table = pq.read_table(f)
        if "key" in table.column_names:
            kept = table.filter(pc.invert(pc.is_in(table["key"], value_set=pa.array(sorted(keys)))))
            removed = table.num_rows - kept.num_rows
            if removed:
                pq.write_table(kept, tmp / "side.parquet")
                storage.upload_file(tmp / "side.parquet", side)
    stats = tar_path.with_name(tar_path.name[:-4] + "_stats.json")
    if removed and stats.exists():
        data = json.loads(stats.read_bytes())
        for k in ("count", "successes"):
            if isinstance(data.get(k), int):
                data[k] = max(0, data[k] - removed)
        if isinstance(data.get("status_dict"), dict) and isinstance(data["status_dict"].get("success"), int):
            data["status_dict"]["success"] = max(0, data["status_dict"]["success"] - removed)
            if not data["status_dict"]["success"]:
                del data["status_dict"]["success"]
        storage.write_bytes(stats, json.dumps(data, indent=4).encode("utf-8"))


def _rewrite_manifest(path, uids: set[str]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    with path.open("rb") as f:
        table = pq.read_table(f)
    kept = table.filter(pc.invert(pc.is_in(table["uid"], value_set=pa.array(sorted(uids), pa.string()))))
    if kept.num_rows == table.num_rows:
        return
    buf = io.BytesIO()
    pq.write_table(kept, buf)
    storage.write_bytes(path, buf.getvalue())


def _update_record(build, rec: dict, samples: int, taken_down: int) -> None:
    """The publish record's counts follow the shards (the record stays the commit)."""
    summary = {**rec.get("summary", {}), "samples": samples, "taken_down": taken_down}
    storage.write_json(record_path(build, "publish"), {**rec, "rows": samples, "summary": summary})


def taken_down_sql(build) -> str | None:
    """A SQL list source of the uids in the takedowns log, for publish to leave out."""
    folder = storage.child(storage.location(build), LOG_DIR)
    if not folder.exists() or not list(folder.glob("*.parquet")):
        return None
    return f"(SELECT uid FROM read_parquet({storage.sql_path(folder / '*.parquet')}))"
