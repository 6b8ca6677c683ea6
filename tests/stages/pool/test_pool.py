"""The candidate pool: formats, column recognition, cleaning, dedup, bad input."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed, read_record
from wit_builder.errors import WitError
from wit_builder.io import uid_of
from wit_builder.stages.pool import pool

pytestmark = pytest.mark.usefixtures("ray_cluster")


def rows(build, order="url"):
    t = catalog.query(build, f"SELECT * FROM pool ORDER BY {order}")
    return t.to_pylist()


def gz(path):
    out = path.with_name(path.name + ".gz")
    with open(path, "rb") as f, gzip.open(out, "wb") as g:
        shutil.copyfileobj(f, g)
    path.unlink()
    return out


@pytest.fixture
def sources(tmp_path):
    """One file per format, each the way its usual source writes it."""
    d = tmp_path / "in"
    d.mkdir()
    # CC3M: caption<TAB>url, no header; one exact duplicate, one empty caption.
    (d / "cc3m.tsv").write_text("a red circle\thttp://cc3m.test/1.jpg\n"
                                "blue square, big\thttps://cc3m.test/2.jpg\n"
                                "\thttp://cc3m.test/3.jpg\n"
                                "a red circle\thttp://cc3m.test/1.jpg\n", encoding="utf-8")
    # CC12M with a header, gzipped; a quoted caption would break in a TSV, so none here.
    (d / "cc12m.tsv").write_text("url\tcaption\nhttp://cc12m.test/1.jpg\tthe \"star\" shape\n")
    gz(d / "cc12m.tsv")
    # A user's CSV: quoted comma, an extra column, a non-http URL, a missing URL.
    (d / "mine.csv").write_text('image_url,alt_text,license\n'
                                'http://mine.test/1.jpg,"a heart, red",cc-by\n'
                                'ftp://mine.test/2.jpg,a house,cc0\n'
                                ',no url here,cc0\n')
    # LAION-style JSONL with upper-case names and a numeric extra column.
    (d / "laion.jsonl").write_text(
        json.dumps({"URL": "http://laion.test/1.jpg", "TEXT": "a snowman", "similarity": 0.3}) + "\n"
        + json.dumps({"URL": "javascript:alert(1)", "TEXT": "bad", "similarity": 0.1}) + "\n")
    gz(d / "laion.jsonl")
    # DataComp-style Parquet with uid of its own (renamed) and a duplicate of CC3M's row.
    pq.write_table(pa.table({"uid": ["dc-1", "dc-2"], "url": ["http://dc.test/1.jpg",
                                                              "http://cc3m.test/1.jpg"],
                             "text": ["a tree", "a red circle"]}), d / "datacomp.parquet")
    (d / "README.md").write_text("not a pool file\n")
    return d


def test_every_format_in_one_pool(build, sources):
    res = pool.run(pool.Config(pool=[str(sources)]), build)   # a directory: README.md is skipped
    got = rows(build)
    by_url = {r["url"]: r for r in got}
    assert sorted(by_url) == sorted([
        "http://cc3m.test/1.jpg", "https://cc3m.test/2.jpg", "http://cc12m.test/1.jpg",
        "http://mine.test/1.jpg", "http://laion.test/1.jpg", "http://dc.test/1.jpg"])
    assert by_url["https://cc3m.test/2.jpg"]["text"] == "blue square, big"
    assert by_url["http://cc12m.test/1.jpg"]["text"] == 'the "star" shape'
    assert by_url["http://mine.test/1.jpg"]["text"] == "a heart, red"
    assert by_url["http://mine.test/1.jpg"]["license"] == "cc-by"          # extras kept
    assert by_url["http://laion.test/1.jpg"]["similarity"] == pytest.approx(0.3)
    assert by_url["http://dc.test/1.jpg"]["source_uid"] == "dc-1"         # renamed, not lost
    for r in got:
        assert r["uid"] == uid_of(r["url"], r["text"])
    assert len(got) == len({r["uid"] for r in got})
    s = res.summary
    assert (s["files"], s["rows_read"], s["rows"]) == (5, 12, 6)
    assert (s["dropped_no_url"], s["dropped_no_text"], s["dropped_bad_url"]) == (1, 1, 2)
    assert s["duplicates"] == 2          # within cc3m.tsv and across to datacomp.parquet
    assert s["columns"]["cc3m.tsv"] == ["column1", "column0"]
    assert s["columns"]["laion.jsonl.gz"] == ["URL", "TEXT"]
    # The first occurrence wins: files in name order, rows in file order.
    assert by_url["http://cc3m.test/1.jpg"]["source_uid"] is None   # cc3m.tsv sorts first
    assert pool.run(pool.Config(pool=[str(sources)]), build).skipped


def test_relative_paths_work_with_ray_workers_elsewhere(ray_cluster, sources, monkeypatch):
    monkeypatch.chdir(sources.parent)
    res = pool.run(pool.Config(pool=[f"{sources.name}/*.tsv*"]), Path("wit-data"))
    assert res.rows == 3 and rows(sources.parent / "wit-data")


def test_parts_and_globs_give_the_same_pool(build, tmp_path, sources):
    pool.run(pool.Config(pool=[str(sources / "*.tsv*"), str(sources / "mine.csv")]), build)
    one = rows(build, "uid")
    pool.run(pool.Config(pool=[str(sources / "*.tsv*"), str(sources / "mine.csv")],
                         pool_parts=4), build)
    assert len(list(committed(build, "pool").glob("part-*.parquet"))) > 1
    assert rows(build, "uid") == [{**r} for r in one]


def test_explicit_columns_and_helpful_errors(build, tmp_path):
    f = tmp_path / "odd.csv"
    f.write_text("link_to_image,words,n\nhttp://x.test/1.jpg,a ring,1\n")
    with pytest.raises(WitError, match=r"no URL column found among: link_to_image, words, n.*--url-col"):
        pool.run(pool.Config(pool=[str(f)]), build)
    with pytest.raises(WitError, match=r"--text-col 'caption' is not a column; columns are: "
                                       r"link_to_image, words, n"):
        pool.run(pool.Config(pool=[str(f)], url_col="link_to_image", text_col="caption"), build)
    pool.run(pool.Config(pool=[str(f)], url_col="link_to_image", text_col="words"), build)
    assert [(r["url"], r["text"], r["n"]) for r in rows(build)] == [("http://x.test/1.jpg", "a ring", "1")]


def test_unknown_format_and_missing_files(build, tmp_path):
    f = tmp_path / "pool.xlsx"
    f.write_bytes(b"PK\x03\x04")
    with pytest.raises(WitError, match=r"pool.xlsx: unknown format '.xlsx'.*Parquet.*CSV.*TSV.*JSON Lines"):
        pool.run(pool.Config(pool=[str(f)]), build)
    with pytest.raises(WitError, match="--pool .*nope.tsv: no such file"):
        pool.run(pool.Config(pool=[str(tmp_path / "nope.tsv")]), build)
    with pytest.raises(WitError, match="--pool: give the candidate files"):
        pool.run(pool.Config(), build)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(WitError, match="broken.parquet: not a readable Parquet file"):
        pool.run(pool.Config(pool=[str(bad)]), build)


@pytest.mark.parametrize("name,content,error", [
    ("cc.tsv", "url\tcaption\nhttp://a.test/1\tone\nhttp://a.test/2\ttwo\textra\n"
               "http://a.test/3\tthree\n", r"cc.tsv line 3: expected 2 fields, found 3"),
    ("my.csv", 'url,text\nhttp://a.test/1,one\nhttp://a.test/2,"two",x\nhttp://a.test/3,three\n',
     r"my.csv line 3: expected 2 fields, found 3"),
    ("l.jsonl", '{"url": "http://b.test/1", "text": "one"}\n{"url": "http://b.test/2", text}\n'
                '{"url": "http://b.test/3", "text": "three"}\n', r"l.jsonl line 2: not valid JSON"),
    ("a.jsonl", '{"url": "http://b.test/1", "text": "one"}\n[1, 2]\n'
                '{"url": "http://b.test/3", "text": "three"}\n', r"a.jsonl line 2: not a JSON object"),
])
def test_broken_rows_name_file_and_line(build, tmp_path, name, content, error):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(WitError, match=error + ".*--skip-broken-rows"):
        pool.run(pool.Config(pool=[str(f)]), build)
    res = pool.run(pool.Config(pool=[str(f)], skip_broken_rows=True), build)
    assert (res.rows, res.summary["broken_rows_skipped"]) == (2, 1)
    assert sorted(r["text"] for r in rows(build)) == ["one", "three"]


def test_empty_pool_is_an_error_that_leaves_no_pool(build, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("url,text\nftp://x/1,a\n,b\nhttp://x/3,   \n")
    with pytest.raises(WitError, match=r"the pool is empty: 3 rows read.*1 without a URL, "
                                       r"1 without a caption, 1 with a non-http\(s\) URL"):
        pool.run(pool.Config(pool=[str(f)]), build)
    assert read_record(build, "pool") is None
    assert not (build / "pool").exists()
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(WitError, match="the pool is empty: 0 rows read"):
        pool.run(pool.Config(pool=[str(tmp_path / "empty.tsv")]), build)


def test_cli_prints_the_summary_and_exits_2_on_mistakes(build, tmp_path, capsys):
    f = tmp_path / "p.csv"
    f.write_text("url,caption\nhttp://x.test/1,a star\nhttp://x.test/1,a star\n")
    assert cli.main(["pool", "--pool", str(f), "--out", str(build)]) == 0
    out = capsys.readouterr().out
    assert "[pool] 1 rows" in out and "duplicates: 1" in out
    assert cli.main(["pool", "--pool", str(f), "--url-col", "nope", "--out", str(build)]) == 2
    assert "--url-col 'nope' is not a column" in capsys.readouterr().err
