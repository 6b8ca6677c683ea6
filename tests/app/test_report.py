"""`wit-build report`: every fact on the data card equals SQL over the same build."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.stages.balance.test_balance import QUERIES, skewed_captions
from tests.stages.match.test_match import write_pool_file, write_queries
from tests.support.fetch import Sample, encode, make_fetch, picture
from wit_builder.app import cli, report
from wit_builder.build import catalog
from wit_builder.build.stage import committed, read_record
from wit_builder.stages.balance import balance
from wit_builder.stages.curate import curate
from wit_builder.stages.match import match
from wit_builder.stages.pool import pool
from wit_builder.stages.publish import publish


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_cluster):
    """queries -> pool -> match -> balance (real stages, a skewed pool) -> a fetch of the
    selected pairs (some failed, some tiny, some copies) -> curate -> publish."""
    root = tmp_path_factory.mktemp("report")
    build = root / "wit-data"
    build.mkdir()
    write_queries(build, QUERIES)
    src = write_pool_file(root / "pool.parquet", skewed_captions(600))
    pool.run(pool.Config(pool=[str(src)]), build)
    match.run(match.Config(workers=1), build)
    balance.run(balance.Config(per_query=40), build)
    selected = catalog.query(build, "SELECT url, text, selected_by, query_ids FROM selected "
                                    "ORDER BY url").to_pylist()
    samples = []
    for i, r in enumerate(selected):
        kw = dict(selected_by=r["selected_by"], query_ids=r["query_ids"])
        if i % 9 == 0:
            samples.append(Sample(r["url"], r["text"], None, status="not_found", error="HTTP 404", **kw))
            continue
        image = encode(picture(1000 + (i if i % 7 else i - 7), 320, 240))  # every 7th a copy
        size = (150, 120) if i % 11 == 0 else (640, 480)  # originals: some too small
        samples.append(Sample(r["url"], r["text"], image, original_size=size, **kw))
    make_fetch(build, samples, shards=3)
    curate.run(curate.Config(min_caption_words=1, min_caption_chars=1), build)
    publish.run(publish.Config(shard_size=25), build)
    train = build / "train"
    train.mkdir()
    (train / "eval.json").write_text(json.dumps({"zero_shot": {
        "accuracy": 0.14, "chance": 0.1, "n": 300, "per_class": {"cat": 0.2, "dog": 0.08}}}))
    return build


def one(build, sql: str):
    return next(iter(catalog.query(build, sql).to_pylist()[0].values()))


@pytest.mark.slow  # Ray
def test_facts_equal_sql_over_the_build(built):
    build = built
    path = report.write_report(build)
    facts = json.loads((path.parent / "facts.json").read_text())
    n_queries = one(build, "SELECT count(*) FROM queries")
    matched = one(build, "SELECT count(DISTINCT q) FROM (SELECT unnest(query_ids) AS q FROM matches)")
    assert facts["queries_matched"] == matched < n_queries  # not every query has a match
    assert facts["pairs_matched"] == one(build, "SELECT count(*) FROM matches") \
        < one(build, "SELECT sum(matches) FROM match_counts")  # pairs, not caption-query hits
    assert facts["pairs_selected"] == one(build, "SELECT count(*) FROM selected")
    cap = read_record(build, "balance")["params"]["per_query"]
    claimed = one(build, f"""SELECT count(*) FROM (SELECT m.query_id FROM matches, unnest(query_ids)
                             AS m(query_id) GROUP BY 1 HAVING count(*) > {cap})""")
    assert 0 < facts["queries_capped"] <= claimed  # only queries with more than the cap
    assert facts["queries_capped"] == one(build, f"""
        SELECT count(*) FROM (SELECT selected_by FROM selected GROUP BY 1 HAVING count(*) = {cap})""")
    assert facts["samples"] == one(build, "SELECT count(*) FROM samples")
    assert facts["downloaded"] == one(build, "SELECT count(*) FROM samples WHERE status = 'success'")
    assert facts["kept"] == one(build, "SELECT count(*) FROM samples WHERE keep") > 0
    assert facts["kept"] < facts["downloaded"]  # the small images and the copies are dropped
    assert facts["shards"] == len(list((committed(build, "publish", "shards")).glob("*.tar"))) > 1
    assert facts["published"] == facts["kept"]
    assert facts["zero_shot_accuracy"] == 0.14 and facts["eval_results"].endswith("train/eval.json")


@pytest.mark.slow  # Ray
def test_tables_name_queries_and_sizes_are_original(built):
    build = built
    html = report.write_report(build).read_text()
    top = catalog.query(build, """SELECT q.query FROM match_counts m JOIN queries q USING (query_id)
                                  ORDER BY m.matches DESC, m.query_id LIMIT 3""").to_pylist()
    for r in top:  # the most matched table shows the query's text
        assert f"<td>{r['query']}</td>" in html
    assert "<th>query</th>" in html and "<th>query_id</th>" not in html
    sizes = report._fetch(build, "sizes", {"samples"})
    assert {min(r["width"], r["height"]) for r in sizes} == {120, 480}  # originals, not 240 stored
    largest = read_record(build, "balance")["summary"]["largest_queries"]
    assert largest[0].startswith("photo: ")  # balance's summary names the query too


@pytest.mark.slow  # Ray
def test_wit_train_eval_results_reach_the_report(built, tmp_path, capsys):
    """The newest results win: a recipe's reports/eval.json or wit-train eval's file."""
    build = built
    assert cli.main(["report", "--out", str(build)]) == 0
    assert "0.140" in (build / "reports" / "index.html").read_text()
    newer = build / "reports" / "eval.json"
    newer.write_text(json.dumps({"zero_shot": {"accuracy": 0.25, "chance": 0.1, "n": 300}}))
    later = time.time() + 5
    os.utime(newer, (later, later))
    facts = json.loads((report.write_report(build).parent / "facts.json").read_text())
    assert facts["zero_shot_accuracy"] == 0.25
    newer.unlink()
