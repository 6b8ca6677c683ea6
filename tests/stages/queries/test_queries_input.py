"""`wit-build queries` on bad input and interrupted runs: clear messages naming the file
and position, and counts finished so far kept for the rerun."""
from __future__ import annotations

import bz2
import gzip
import json
import os

import pyarrow.parquet as pq
import pytest

from tests.stages.queries.test_queries import World, page_xml, run, table, write_dump, write_wordnet
from wit_builder.app import cli
from wit_builder.build.stage import committed
from wit_builder.errors import WitError
from wit_builder.stages.queries import queries, wikitext


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=1)


@pytest.fixture(scope="module")
def dump(world, tmp_path_factory):
    return world.dump(tmp_path_factory.mktemp("dump") / "enwiki-pages-articles.xml.bz2")


def stored_chunks(build) -> int:
    return len(list((build / "_work" / "queries-counts").glob("*/chunk-*.json")))


def test_truncated_dump_names_file_and_position_and_keeps_finished_counts(
        ray_cluster, world, dump, build, tmp_path):
    data = dump.read_bytes()
    cut = tmp_path / "enwiki-cut.xml.bz2"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    with pytest.raises(WitError, match=r"enwiki-cut\.xml\.bz2: truncated: the file ends inside the bz2 "
                                       r"block that starts at byte [\d,]+"):
        run(build, wiki=[str(dump), str(cut)], min_freq=1)
    assert not (build / "_stages" / "queries.json").exists()
    good = len(wikitext.plan_chunks(dump, "xml.bz2", int(0.005 * 2 ** 20)))
    assert stored_chunks(build) > good > 5     # the whole good dump and the start of the cut one
    # the user downloads the dump again: the good dump is not counted again
    cut.write_bytes(data)
    res = run(build, wiki=[str(dump), str(cut)], min_freq=1)
    assert res.summary["input"]["chunks_reused"] == good
    assert res.summary["input"]["words"] == 2 * world.total
    assert table(build)["alpha"]["wiki_count"] == 200
    assert not (build / "_work" / "queries-counts").exists()   # cleaned after success


def test_corrupt_block_is_named(ray_cluster, dump, build, tmp_path):
    data = bytearray(dump.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    bad = tmp_path / "corrupt.xml.bz2"
    bad.write_bytes(bytes(data))
    with pytest.raises(WitError, match=r"corrupt\.xml\.bz2: corrupt bz2 data in the block at byte [\d,]+"):
        run(build, wiki=[str(bad)])


@pytest.mark.parametrize("name,content,message", [
    ("notes.xml.bz2", bz2.compress(b'{"this": "is json, not a dump"}\n' * 100), "not a MediaWiki XML export"),
    ("random.xml.bz2", os.urandom(5000), "not a bz2 file"),
    ("page.xml", b"<html><body>a web page</body></html>\n", "not a MediaWiki XML export"),
])
def test_files_that_are_no_dump(build, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WitError, match=f"{name}: {message}"):
        run(build, wiki=[str(path)])


def test_empty_results(ray_cluster, build, tmp_path):
    only_talk = write_dump(tmp_path / "talk.xml.bz2", [
        page_xml(1, "Talk:Zebra", 1, "zebra " * 200),
        page_xml(2, "Zebras", 0, "#REDIRECT [[Zebra]]", redirect="Zebra")])
    with pytest.raises(WitError, match=r"talk\.xml\.bz2: no namespace-0 articles found \(pages read: 2; "
                                       r"in other namespaces: 1; redirects: 1\)"):
        run(build, wiki=[str(only_talk)])
    small = write_dump(tmp_path / "small.xml.bz2", [page_xml(1, "Zebra", 0, "zebra " * 5)])
    with pytest.raises(WitError, match=r"no entries passed the thresholds: the most frequent word "
                                       r"occurs 5 times \(--min-freq 100\)"):
        run(build, wiki=[str(small)])


def test_bad_lines_in_count_tables_pageviews_and_wordnet(build, tmp_path):
    bigrams = tmp_path / "bigrams.txt"
    bigrams.write_text("New York\t4\nYork\t7\n")
    unigrams = tmp_path / "unigrams.txt"
    unigrams.write_text("New\t8\nYork\t7\n")
    with pytest.raises(WitError, match=r"bigrams\.txt: line 2: expected 'word1 word2<TAB>count'.*'York\\t7'"):
        run(build, unigram_counts=[str(unigrams)], bigram_counts=[str(bigrams)])
    pv = tmp_path / "pageviews.gz"
    with gzip.open(pv, "wt") as f:
        f.write("en Zebra 5 0\nen Yak many 0\n")
    with pytest.raises(WitError, match=r"pageviews\.gz: .*Line: 2"):
        run(build, unigram_counts=[str(unigrams)], pageviews=[str(pv)])
    wn = write_wordnet(tmp_path / "wn")
    with open(wn / "data.verb", "a") as f:
        f.write("garbage line\n")
    with pytest.raises(WitError, match=r"data\.verb: line \d+ is not a WordNet synset line"):
        run(build, unigram_counts=[str(unigrams)], wordnet=str(wn))
    with pytest.raises(WitError, match=r"--wordnet .*: no data\.noun here"):
        run(build, unigram_counts=[str(unigrams)], wordnet=str(tmp_path))


def test_cli_prints_the_error_without_traceback(tmp_path, capsys):
    path = tmp_path / "x.xml.bz2"
    path.write_bytes(b"not bz2 at all")
    code = cli.main(["queries", "--wiki", str(path), "--out", str(tmp_path / "b"), "--wordnet", "none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {path}: not a bz2 file") and "Traceback" not in err


COUNT_TABLE = "this is a count table ({} lines), not Wikipedia text; give it with {}"
ARTICLES = ('article files hold one {"title": ..., "text": ...} object a line (JSONL), or are '
            "Parquet with title and text columns")


@pytest.mark.parametrize("name,content,message", [
    ("enwiki-unigrams.tsv", b"the\t104331\nof\t61240\nCO2\t311\n",
     "--wiki {path}: " + COUNT_TABLE.format("word<TAB>count", "--unigram-counts")),
    ("enwiki-bigrams.txt.gz", gzip.compress(b"New York\t2211\nLos Angeles\t1450\n"),
     "--wiki {path}: " + COUNT_TABLE.format("word1 word2<TAB>count", "--bigram-counts")),
    ("counts.txt.bz2", bz2.compress(b"the 104331\nof 61240\n"),   # read as a dump: .bz2
     "{path}: " + COUNT_TABLE.format("word<TAB>count", "--unigram-counts")),
    ("articles.json", json.dumps([{"title": "Yak", "text": "The yak is a bovine."}]).encode(),
     "--wiki {path}: a JSON array; " + ARTICLES + "; convert with: jq -c '.[]' articles.json > "
     "articles.jsonl"),
    ("articles.jsonl", b'{\n  "title": "Yak",\n  "text": "The yak is a bovine."\n}\n',
     "--wiki {path}: not JSON Lines; " + ARTICLES),
    ("articles.csv", b'title,text\nYak,"The yak is a bovine."\n',
     "--wiki {path}: CSV and TSV files are not read; convert the articles to Parquet with title and "
     "text columns (in DuckDB: COPY (FROM 'articles.csv') TO 'articles.parquet'), or JSONL, or give "
     ".xml.bz2 / .xml dumps"),
    ("notes.txt", b"Yaks are bovines.\nThey live in Tibet.\n",
     "--wiki {path}: unknown kind of file; give .xml.bz2 / .xml dumps, .parquet or .jsonl article "
     "files, or hf:NAME:CONFIG"),
])
def test_cli_says_what_a_wrong_wiki_file_is_and_what_to_give(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code = cli.main(["queries", "--wiki", str(path), "--out", str(tmp_path / "b"), "--wordnet", "none"])
    assert (code, capsys.readouterr().err) == (2, "error: " + message.replace("{path}", str(path)) + "\n")


def test_json_lines_in_a_json_file_are_articles(ray_cluster, build, tmp_path):
    path = tmp_path / "articles.json"   # datasets' to_json writes JSON Lines under this name
    path.write_text("".join(json.dumps({"title": f"Yak {i}", "text": "The yak grazes."}) + "\n"
                            for i in range(3)))
    res = run(build, wiki=[str(path)], min_freq=3)
    assert {q: r["wiki_count"] for q, r in table(build).items()} == {"The": 3, "yak": 3, "grazes": 3}
    assert res.summary["input"]["words"] == 9


def test_killed_run_resumes_from_finished_chunks(ray_cluster, dump, build, tmp_path, monkeypatch):
    done = []

    def interrupt_after_three(stats):
        done.append(stats["index"])
        if len(done) == 3:
            raise KeyboardInterrupt   # as Ctrl-C or a kill between two chunks

    monkeypatch.setattr(queries, "_chunk_done", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(build, wiki=[str(dump)], min_freq=1, workers=1)
    assert not (build / "_stages" / "queries.json").exists()
    assert stored_chunks(build) >= 3
    monkeypatch.setattr(queries, "_chunk_done", lambda stats: None)
    res = run(build, wiki=[str(dump)], min_freq=1)
    reused, counted = res.summary["input"]["chunks_reused"], res.summary["input"]["chunks_counted"]
    assert reused >= 3 and counted >= 1
    fresh = run(tmp_path / "fresh", wiki=[str(dump)], min_freq=1)
    assert fresh.summary["input"]["chunks_reused"] == 0
    assert fresh.summary["input"]["chunks_counted"] <= reused + counted
    assert pq.read_table(committed(build, "queries") / "queries.parquet").equals(
        pq.read_table(committed(tmp_path / "fresh", "queries") / "queries.parquet"))
    # unchanged parameters: skipped; a changed threshold reruns
    assert run(build, wiki=[str(dump)], min_freq=1).skipped
    rec = json.loads((build / "_stages" / "queries.json").read_text())
    assert rec["params"]["min_freq"] == 1 and rec["params"]["wiki"][0][0] == str(dump.resolve())
    assert not run(build, wiki=[str(dump)], min_freq=2).skipped
