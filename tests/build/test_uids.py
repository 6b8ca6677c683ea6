"""uids at DataComp scale: 128 bits, a collision keeps both pairs, an old build is told to rebuild."""
from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.fetch import make_queries
from wit_builder.app import cli
from wit_builder.build import catalog, stage
from wit_builder.errors import WitError
from wit_builder.io import file_fingerprint, uid_of
from wit_builder.stages.pool import pool

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_uids_are_128_bits_as_datacomp_s():
    uid = uid_of("http://x/a.jpg", "a caption")
    assert len(uid) == 32 and int(uid, 16) < 2**128
    assert uid != uid_of("http://x/a.jpg", "a caption ")


def plant_read(build, cfg: pool.Config, rows: list[dict]) -> None:
    """Stand in for pool's read of its one file: the resume state a read leaves
    (`_work/pool-<hash>/read/f00000/`: chunk files, stats.json last), with uids as given."""
    files = pool.find_files(cfg.pool)
    params = {"pool": file_fingerprint(files), "url_col": cfg.url_col, "text_col": cfg.text_col,
              "skip_broken_rows": cfg.skip_broken_rows, "pool_parts": cfg.pool_parts,
              "max_caption_chars": cfg.max_caption_chars}
    assert set(params) == {f.name for f in dataclasses.fields(cfg)} - {"memory_limit"}
    work = build / stage.WORK_DIR / f"pool-{stage.params_hash({'params': params, 'inputs': {}})}"
    read = work / "read" / "f00000"
    read.mkdir(parents=True)
    pq.write_table(pa.table({
        "uid": [r["uid"] for r in rows], "url": [r["url"] for r in rows], "text": [r["text"] for r in rows],
        pool.ORDER: pa.array(range(len(rows)), pa.int64()), pool.BUCKET: pa.array([0] * len(rows), pa.int32()),
    }), read / "chunk-00000.parquet")
    (read / "stats.json").write_text(json.dumps({
        "file": str(files[0]), "rows_read": len(rows), "broken_rows": 0, "kept": len(rows),
        "no_url": 0, "no_text": 0, "bad_url": 0, "columns": ["url", "text"]}))


def test_a_planted_uid_collision_keeps_both_pairs(build, tmp_path):
    src = tmp_path / "pool.parquet"
    pairs = [("http://x/fox.jpg", "a red fox"), ("http://y/cat.jpg", "a grey cat"),
             ("http://z/owl.jpg", "a snowy owl")]
    pq.write_table(pa.table({"url": [u for u, _ in pairs], "text": [t for _, t in pairs]}), src)
    cfg = pool.Config(pool=[str(src)], pool_parts=1)
    same = uid_of(*pairs[0])  # the cat is given the fox's uid: two pairs, one uid
    plant_read(build, cfg, [{"uid": same, "url": pairs[0][0], "text": pairs[0][1]},
                            {"uid": same, "url": pairs[1][0], "text": pairs[1][1]},
                            {"uid": uid_of(*pairs[2]), "url": pairs[2][0], "text": pairs[2][1]}])
    res = pool.run(cfg, build)
    assert res.summary["uid_collisions"] == 1 and res.summary["uid_bits"] == 128
    got = {r["url"]: r["uid"] for r in catalog.query(build, "SELECT uid, url FROM pool").to_pylist()}
    assert set(got) == {u for u, _ in pairs}  # both colliding pairs kept
    assert got["http://x/fox.jpg"] == same  # the first in input order keeps its uid
    assert len(set(got.values())) == 3 and len(got["http://y/cat.jpg"]) == 32
    pool_again = pool.run(pool.Config(pool=[str(src)], pool_parts=1), build, force=True)
    assert pool_again.summary["uid_collisions"] == 0  # read for real: no collision at 128 bits


def test_a_build_with_64_bit_uids_is_told_to_rebuild(build, tmp_path, capsys):
    src = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["http://x/a.jpg"], "text": ["a fox"]}), src)
    pool.run(pool.Config(pool=[str(src)]), build)
    rec = stage.read_record(build, "pool")
    del rec["summary"]["uid_bits"]  # as an earlier wit wrote it
    (build / "_stages" / "pool.json").write_text(json.dumps(rec))
    make_queries(build, ["fox"])
    with pytest.raises(WitError, match="64-bit uids .* rebuild from the pool"):
        stage.check_uid_width(build)
    assert cli.main(["match", "--out", str(build)]) == 2
    assert "earlier wit with 64-bit uids" in capsys.readouterr().err
    assert stage.read_record(build, "match") is None  # refused before anything ran
