"""Curate's two copy decisions, in DuckDB: evaluation images (`eval_set`) and
duplicates (`exact_duplicate`, `near_duplicate`).

Both are two-stage. Multi-index hashing (`phash.near_pairs`) finds the candidate
pairs whose pHashes of the canonical view (`canonical`) are within `bits`; the colour
check (`canonical.colour_distance` on the stored thumbnails) confirms those within
`colour` levels, so a red and a green balloon, or two flags of one layout, are kept
apart while resized, re-encoded, slightly cropped and padded copies are caught.
`colour` < 0 confirms every candidate (pHash alone). Blank images take no part.

Works on curate's table `candidates` (rid, uid, width, height, original_width,
original_height, sha256, image_sha256, image_bytes, phash, thumb, reason): `eval_hits`
reads it and `ev` (the eval images) and writes `eval_hits`; `duplicates` reads it and
`eval_hits` and writes `ranked` (the samples left, by rank), `exact` (one
representative per stored sha256), `nodes` (one per distinct signature) and `dups`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from wit_builder.canonical import colour_distance, thumbs
from wit_builder.phash import keepers, near_pairs


def confirm(con, pairs: pa.Table, left: str, right: str, colour: float,
            batch: int = 65536) -> tuple[pa.Table, dict[str, Any]]:
    """The pHash candidate `pairs` (a, b) whose thumbnails (`left`.thumb of id a,
    `right`.thumb of id b) are within `colour` levels; and how many were refused."""
    if colour < 0 or pairs.num_rows == 0:
        return pairs, {"candidates": pairs.num_rows, "refused_by_colour": 0}
    con.register("cand_pairs", pairs)
    reader = con.sql(f"""SELECT p.a, p.b, l.thumb AS ta, r.thumb AS tb FROM cand_pairs p
                         JOIN {left} l ON l.id = p.a JOIN {right} r ON r.id = p.b
                         ORDER BY p.a, p.b""").to_arrow_reader(batch)
    keep_a, keep_b = [], []
    for rb in reader:
        d = colour_distance(thumbs(rb.column("ta").to_pylist()), thumbs(rb.column("tb").to_pylist()))
        ok = d <= colour
        keep_a.append(rb.column("a").to_numpy()[ok])
        keep_b.append(rb.column("b").to_numpy()[ok])
    con.unregister("cand_pairs")
    a = np.concatenate(keep_a) if keep_a else np.zeros(0, np.int64)
    b = np.concatenate(keep_b) if keep_b else np.zeros(0, np.int64)
    out = pa.table({"a": a.astype(np.int64), "b": b.astype(np.int64)})
    return out, {"candidates": pairs.num_rows, "refused_by_colour": pairs.num_rows - out.num_rows}


def eval_hits(con, eval_table: pa.Table | None, bits: int, colour: float,
              blank_detail: float) -> dict[str, Any]:
    """Table `eval_hits` (rid, eval_path): candidates showing an evaluation image —
    the same bytes (as downloaded or as stored), or a confirmed near copy."""
    con.execute("CREATE TABLE eval_hits (rid BIGINT, eval_path VARCHAR)")
    if eval_table is None:
        return {}
    con.register("eval_arrow", eval_table)
    con.execute("CREATE TABLE ev AS SELECT row_number() OVER (ORDER BY path) - 1 AS id, * "
                "FROM eval_arrow")
    con.unregister("eval_arrow")
    # Fetch's sha256 is of the file as downloaded (before any resize), so an eval image
    # served as is matches it; image_sha256 matches one stored unchanged.
    con.execute("""INSERT INTO eval_hits SELECT s.rid, ev.path FROM candidates s JOIN ev
                   ON ev.sha256 = s.sha256 OR ev.sha256 = s.image_sha256
                   WHERE s.reason IS NULL""")
    n, blank = con.execute("SELECT count(*), count(*) FILTER (detail < $blank) FROM ev",
                           {"blank": float(blank_detail)}).fetchall()[0]
    stats: dict[str, Any] = {"eval_images": n, "eval_blank": blank}
    if bits >= 0:
        con.execute("CREATE VIEW cand_h AS SELECT rid AS id, phash, thumb FROM candidates "
                    "WHERE reason IS NULL")
        con.execute("CREATE TABLE ev_h AS SELECT id, phash, thumb FROM ev WHERE detail >= $blank",
                    {"blank": float(blank_detail)})  # a blank image protects nothing
        pairs, search = near_pairs(con, "cand_h", bits, right="ev_h")
        pairs, checked = confirm(con, pairs, "cand_h", "ev_h", colour)
        con.register("eval_pairs", pairs)
        con.execute("INSERT INTO eval_hits SELECT p.a, ev.path FROM eval_pairs p "
                    "JOIN ev ON ev.id = p.b")
        con.unregister("eval_pairs")
        stats["eval_search"] = {**search, **checked}
    return stats


def duplicates(con, bits: int, colour: float) -> dict[str, Any]:
    """Table `dups` (rid, reason, duplicate_of) over the samples passing every filter.

    Samples are ranked by original image area (largest first), then stored bytes
    (of two encodings of one picture, the larger is usually the better), then uid.
    Each exact group (same image_sha256) keeps its best-ranked member, which the
    others name. Those representatives are then taken in rank order, and one is
    dropped when it is a confirmed near copy of one already kept (`phash.keepers`),
    naming the best-ranked such sample. So `duplicate_of` of an exact duplicate
    always has the same bytes; when that sample is itself a near duplicate, its own
    `duplicate_of` names the kept one.
    """
    con.execute("""
        CREATE TABLE ranked AS
        SELECT rid, uid, image_sha256 AS sha256, phash, thumb,
               row_number() OVER (ORDER BY coalesce(original_width, width)::BIGINT
                                             * coalesce(original_height, height) DESC,
                                           image_bytes DESC, uid) - 1 AS rank
        FROM candidates WHERE reason IS NULL AND rid NOT IN (SELECT rid FROM eval_hits)""")
    con.execute("CREATE TABLE exact AS SELECT sha256, min(rank) AS rep_rank FROM ranked GROUP BY sha256")
    # One node per distinct signature (pHash and thumbnail) among the exact
    # representatives (with the search off: per representative), numbered by best rank.
    group = "hash(d.phash, d.thumb)" if bits >= 0 else "d.rank"
    con.execute(f"""
        CREATE TABLE nodes AS
        SELECT row_number() OVER (ORDER BY best) - 1 AS id, grp, phash, thumb, best
        FROM (SELECT {group} AS grp, arg_min(d.phash, d.rank) AS phash,
                     arg_min(d.thumb, d.rank) AS thumb, min(d.rank) AS best
              FROM ranked d JOIN exact e ON d.rank = e.rep_rank GROUP BY 1)""")
    n = con.execute("SELECT count(*) FROM nodes").fetchall()[0][0]
    stats: dict[str, Any] = {}
    if bits >= 0 and n > 1:
        pairs, stats = near_pairs(con, "nodes", bits)
        pairs, checked = confirm(con, pairs, "nodes", "nodes", colour)
        stats.update(checked)
        a = pairs["a"].to_numpy(zero_copy_only=False)
        b = pairs["b"].to_numpy(zero_copy_only=False)
    else:
        a = b = np.zeros(0, dtype=np.int64)
    best = con.sql("SELECT best FROM nodes ORDER BY id").to_arrow_table()["best"].to_numpy()
    final = pa.table({"id": np.arange(n, dtype=np.int64),
                      "final_rank": best[keepers(n, a, b)] if n else best})
    con.register("final_arrow", final)
    con.execute(f"""
        CREATE TABLE dups AS
        WITH rep AS (  -- sha256 -> its representative's rank and the rank finally kept
            SELECT e.sha256, e.rep_rank, f.final_rank
            FROM exact e JOIN ranked d ON d.rank = e.rep_rank
            JOIN nodes n ON n.grp = {group} JOIN final_arrow f ON f.id = n.id)
        SELECT d.rid,
               CASE WHEN d.rank <> rep.rep_rank THEN 'exact_duplicate'
                    WHEN d.rank <> rep.final_rank THEN 'near_duplicate' END AS reason,
               CASE WHEN d.rank <> rep.rep_rank THEN same.uid
                    WHEN d.rank <> rep.final_rank THEN keeper.uid END AS duplicate_of
        FROM ranked d JOIN rep USING (sha256) JOIN ranked same ON same.rank = rep.rep_rank
        JOIN ranked keeper ON keeper.rank = rep.final_rank""")
    con.unregister("final_arrow")
    return stats
