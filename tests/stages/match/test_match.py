"""Matching: MetaCLIP's substring semantics, edge cases, equivalence, the stage."""
from __future__ import annotations

import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wit_builder.build import catalog
from wit_builder.build.stage import StageOutput, committed, read_record, run_stage
from wit_builder.errors import WitError
from wit_builder.stages.match import match
from wit_builder.stages.match.match import Matcher, code_book, reference_automaton, reference_match
from wit_builder.stages.pool import pool

# ----------------------------------------------------------------------------------
# Helpers shared with test_balance.py: a queries stage and a pool file.

def write_queries(build, queries: list[str]):
    """A finished `queries` stage holding `queries` (ids 0..n-1), as the contract says."""
    def work(ctx):
        n = len(queries)
        pq.write_table(pa.table({
            "query_id": pa.array(range(n), pa.int32()),
            "query": pa.array(queries, pa.string()),
            "sources": pa.array([["wiki_unigram"]] * n, pa.list_(pa.string())),
            "wiki_count": pa.array([100] * n, pa.int64()),
            "pmi": pa.array([0.0] * n, pa.float64()),
            "pageviews": pa.array([0] * n, pa.int64()),
        }), ctx.output("queries") / "queries.parquet")
        return StageOutput(rows=n)
    return run_stage(build, "queries", {"queries": queries}, work, outputs=["queries"],
                     views={"queries": "queries/*.parquet"})


def write_pool_file(path, captions: list[str]):
    """A Parquet candidate file: one http URL per caption."""
    pq.write_table(pa.table({"url": [f"http://img.test/{i}.jpg" for i in range(len(captions))],
                             "caption": captions}), path)
    return path


def matched(build) -> dict[str, list[int]]:
    """uid -> query_ids from the matches view."""
    t = catalog.query(build, "SELECT uid, query_ids FROM matches")
    return dict(zip(t.column("uid").to_pylist(), t.column("query_ids").to_pylist()))


def run_match(matcher_queries, captions, case_sensitive=True):
    m = Matcher(matcher_queries, list(range(len(matcher_queries))), case_sensitive=case_sensitive)
    return m.match(pa.array(captions, pa.string())).to_pylist()


# ----------------------------------------------------------------------------------
# Semantics, case by case (each also checked against the reference).

QUERIES = ["dog", "hot dog", "hot", "U.S.", "new", "new york", "york", "new york city",
           "york city", "Apple", "café", "(dog)", "code", "a  b", "🙂 face", "dogs", "e.g", "?"]
CASES = [
    ("a dog.", ["dog"]),                        # punctuation is split off
    ("dog,cat;dog:", ["dog"]),                  # repeated: listed once
    ("dogs and hot dogs", ["dogs", "hot"]),     # whole words only
    ("a hot dog!", ["dog", "hot dog", "hot"]),  # overlapping queries all count
    ("hot\tdog", ["dog", "hot dog", "hot"]),    # tab -> space
    ("hot\ndog\r", ["dog", "hot dog", "hot"]),  # newline, CR -> space
    ("hot  dog", ["dog", "hot"]),               # two spaces: "hot dog" is not there...
    ("a  b", ["a  b"]),                         # ...but a query with two spaces is
    ("new york city", ["new", "new york", "york", "new york city", "york city"]),
    ("U.S. army", []),                          # spacing breaks "U.S." apart: never matches
    ("e.g. this", []),
    ("is it? yes", ["?"]),                      # a punctuation query matches the mark
    ("apple pie", []),                          # case-sensitive
    ("Apple pie", ["Apple"]),
    ("un café.", ["café"]),
    ("a (dog) here", ["(dog)"]),                # parentheses are not spaced: token "(dog)"
    ("`code`", ["code"]),                       # backtick is
    ("🙂 face", ["🙂 face"]),
]


@pytest.mark.parametrize("caption,expected", CASES)
def test_metaclip_semantics_case_by_case(caption, expected):
    ids = {q: i for i, q in enumerate(QUERIES)}
    want = sorted(ids[q] for q in expected)
    assert run_match(QUERIES, [caption]) == [want]
    assert reference_match(reference_automaton(QUERIES, range(len(QUERIES))), caption) == want


@pytest.mark.parametrize("caption,expected", [
    ("", [0]),            # an empty caption spaces to "  ": the empty query's "  "
    ("x", []),
    (" x", [0, 1]),       # "  x " holds "  " and the padded " x"
    ("a.", [0]),          # "a." spaces to " a .  ": two spaces at the end
    ("a b", []),
])
def test_queries_with_edge_spaces(caption, expected):
    assert run_match(["", " x"], [caption]) == [expected]
    assert reference_match(reference_automaton(["", " x"], [0, 1]), caption) == expected


def test_case_insensitive_lowercases_both_sides():
    got = run_match(["Apple", "new YORK"], ["apple pie in New York"], case_sensitive=False)
    assert got == [[0, 1]]
    assert run_match(["Apple", "new YORK"], ["apple pie in New York"]) == [[]]


def test_duplicate_queries_report_every_id():
    m = Matcher(["red", "blue", "red"], [5, 6, 2])
    assert m.match(pa.array(["a red blue car", "red"])).to_pylist() == [[2, 5, 6], [2, 5]]


def test_row_separator_inside_captions_is_harmless():
    # The matcher joins rows with a control character; captions containing it still
    # match exactly like the reference (no leaking across rows either).
    qs = ["a b", "b", "x\x1fy"]
    caps = ["a", "b", "a\x1f", "\x1fb", "x\x1fy", "a b\x1f"]
    auto = reference_automaton(qs, range(3))
    assert run_match(qs, caps) == [reference_match(auto, c) for c in caps]


def test_batches_are_independent_rows():
    # A multi-word query must never match across two captions of one batch.
    assert run_match(["new york"], ["we flew to new", "york was cold", "new york"]) == [[], [], [0]]


def test_code_book_is_prefix_free_and_self_synchronising():
    for n in (1, 100, 101, 100 + 14 * 120 + 1, 60_000):
        codes = code_book(n)
        assert len(set(codes)) == n
        starts = {c[0] for c in codes}
        assert all(ch not in starts for c in codes for ch in c[1:])  # first symbols only first
        lengths = {}
        for c in codes:
            assert lengths.setdefault(c[0], len(c)) == len(c)        # first symbol fixes length


# ----------------------------------------------------------------------------------
# Randomised equivalence with the reference.

ALPHABET = "abAB" + " ,.;:?!`\t\n\r" + "é\x1f("
texts = st.text(alphabet=ALPHABET, max_size=30)


@st.composite
def worlds(draw):
    caps = draw(st.lists(texts, min_size=1, max_size=12))
    queries = draw(st.lists(st.text(alphabet=ALPHABET, max_size=6), max_size=12))
    # Queries cut out of the captions' words, so that many of them do match.
    for cap in caps[:4]:
        words = match.spacing(cap).split(" ")
        if len(words) > 2:
            i = draw(st.integers(0, len(words) - 2))
            j = draw(st.integers(i + 1, min(len(words), i + 4)))
            queries.append(" ".join(words[i:j]))
    return queries or ["a"], caps


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.booleans())
def test_matcher_equals_reference_on_random_inputs(world, with_sample):
    queries, caps = world
    ids = list(range(len(queries)))
    m = Matcher(queries, ids, sample=caps if with_sample else None)
    auto = reference_automaton(queries, ids)
    assert m.match(pa.array(caps, pa.string())).to_pylist() == [reference_match(auto, c) for c in caps]


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_case_insensitive_equals_lowercased_reference(world):
    queries, caps = world
    ids = list(range(len(queries)))
    m = Matcher(queries, ids, case_sensitive=False)
    auto = reference_automaton([q.lower() for q in queries], ids)
    assert m.match(pa.array(caps)).to_pylist() == [reference_match(auto, c.lower()) for c in caps]


def test_larger_random_world_with_realistic_query_mix():
    # Zipf words, pairs and titles at a few thousand captions: the code book, the
    # Bloom filter and the batch joins all get exercised beyond toy sizes.
    rng = np.random.default_rng(3)
    words = ["".join(rng.choice(list(string.ascii_lowercase), rng.integers(1, 5)))
             for _ in range(3000)]
    p = 1 / np.arange(1, len(words) + 1)
    p /= p.sum()
    draw = lambda k: [words[i] for i in rng.choice(len(words), k, p=p)]  # noqa: E731
    caps = [" ".join(draw(rng.integers(3, 15))) + rng.choice(["", ".", "!", " ,x"])
            for _ in range(3000)]
    queries = list(dict.fromkeys(words[:1500] + [" ".join(draw(2)) for _ in range(1500)]
                                 + [" ".join(draw(3)).title() for _ in range(300)]))
    ids = list(range(len(queries)))
    m = Matcher(queries, ids, sample=caps[:500])
    auto = reference_automaton(queries, ids)
    got = [m.match(pa.array(caps[i:i + 700])).to_pylist() for i in range(0, len(caps), 700)]
    assert sum(got, []) == [reference_match(auto, c) for c in caps]


# ----------------------------------------------------------------------------------
# The stage.

CAPTIONS = ["a red circle", "a blue square.", "Red star", "nothing at all", "stop sign, red",
            "a red circle"] + [f"red thing {i}" for i in range(30)]
STAGE_QUERIES = ["red", "circle", "red circle", "blue", "square", "stop sign", "star", "unused"]


@pytest.fixture
def small_build(build, tmp_path, ray_cluster):
    write_queries(build, STAGE_QUERIES)
    pool.run(pool.Config(pool=[str(write_pool_file(tmp_path / "p.parquet", CAPTIONS))],
                         pool_parts=2), build)
    return build


@pytest.mark.slow
def test_match_stage_writes_matches_and_counts_whatever_the_workers(small_build):
    res = match.run(match.Config(workers=2, batch_size=7), small_build)
    pool_t = catalog.query(small_build, "SELECT uid, text FROM pool")
    auto = reference_automaton(STAGE_QUERIES, range(len(STAGE_QUERIES)))
    want = {u: reference_match(auto, t) for u, t in zip(pool_t.column("uid").to_pylist(),
                                                         pool_t.column("text").to_pylist())}
    want = {u: q for u, q in want.items() if q}
    assert matched(small_build) == want
    counts = catalog.query(small_build, "SELECT query_id, matches FROM match_counts ORDER BY 1")
    expect = [sum(i in q for q in want.values()) for i in range(len(STAGE_QUERIES))]
    assert counts.column("matches").to_pylist() == expect
    assert counts.column("query_id").to_pylist() == list(range(len(STAGE_QUERIES)))
    assert res.summary["matched_captions"] == len(want)
    assert res.summary["captions"] == len(CAPTIONS)
    assert res.summary["queries_matched"] == sum(c > 0 for c in expect)
    schema = pq.read_schema(next(committed(small_build, "match", "matches").glob("part-*.parquet")))
    assert schema.field("query_ids").type == pa.list_(pa.int32())

    assert match.run(match.Config(workers=1), small_build).skipped   # workers: same output
    match.run(match.Config(workers=1, batch_size=100_000), small_build, force=True)
    assert matched(small_build) == want


@pytest.mark.slow
def test_bad_inputs_are_clear_errors_and_leave_nothing(build, tmp_path, ray_cluster):
    with pytest.raises(WitError, match="queries stage has not finished"):
        match.run(match.Config(), build)
    write_queries(build, [])
    pool.run(pool.Config(pool=[str(write_pool_file(tmp_path / "p.parquet", CAPTIONS))]), build)
    with pytest.raises(WitError, match="query list is empty"):
        match.run(match.Config(), build)
    write_queries(build, ["zebra", "giraffe"])
    with pytest.raises(WitError, match="contains any of the 2 queries"):
        match.run(match.Config(), build)
    assert read_record(build, "match") is None
    assert not (build / "matches").exists()
