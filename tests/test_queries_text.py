"""The pieces under `wit-build queries`: bz2 blocks decoded one by one, pages owned by
exactly one chunk, wikitext reduced to plain text, and the tokenisation rules."""
from __future__ import annotations

import bz2
import json
import random

import pytest

from test_queries import World
from wit_builder import markup, wikitext
from wit_builder.errors import WitError


def plain(wikitext_: str) -> str:
    """Wikitext -> the words that are counted, space-joined."""
    words, _, _ = wikitext.count_words(markup.strip_markup(wikitext_.encode()))
    counts = dict(zip(words.column("word").to_pylist(), words.column("count").to_pylist()))
    return " ".join(sorted(w for w, n in counts.items() for _ in range(n)))


def words_and_bigrams(text: str) -> tuple[dict, set]:
    words, bigrams, n = wikitext.count_words(text.encode())
    assert n == sum(words.column("count").to_pylist())
    return (dict(zip(words.column("word").to_pylist(), words.column("count").to_pylist())),
            {(r["word1"], r["word2"]) for r in bigrams.to_pylist()})


@pytest.mark.parametrize("source,expected", [
    ("a {{x|{{y|z {{w}}}}}} b {{unclosed", "a b unclosed"),
    ('a<ref name="r">yak {{cite|yak}}</ref> b<ref name="y" /> c<ref>yak</ref>', "a b c"),
    ("a\n{| class=x\n| yak || yak\n|-\n|\n{|\n| yak\n|}\n| yak\n|}\nb", "a b"),
    ("[[Poaceae|grass]] [[dog]]s [[File:X.jpg|thumb|A [[yak]] [[y|yak]]]] [[Category:Yak]] "
     "[[fr:Yak]] [[:Category:Dogs|dogs]] [[Star Wars: A New Hope|film]]", "dogs dogs film grass"),
    ("[http://example.com/yak label text] [//example.org/yak] http://yak.example/path end",
     "end label text"),
    ("<!-- yak --> a <math>yak</math> '''b''' ''c'' == Head == <br/>d<small>e</small>",
     "Head a b c de"),
    ("a&nbsp;b caf&eacute; x&amp;y", "a b café x y"),
    ("<gallery>\nyak.jpg|yak\n</gallery> <syntaxhighlight lang=python>yak()</syntaxhighlight> z",
     "z"),
])
def test_markup_is_reduced_to_prose(source, expected):
    assert plain(source) == expected


def test_pages_joined_by_nul_do_not_leak_into_each_other():
    assert plain("a {{open\n\x00\nb }} c") == "a b c open"   # an unclosed template stays text


def test_tokenisation_rules():
    words, bigrams = words_and_bigrams(
        "Don\u2019t stop-the rock - roll's 'quoted' a--b co\u00adoperate caf\u00e9 na\u00efve "
        "\u6771\u4eac 5\u00b0C cat\U0001F600dog line\nnext x\u00a0y 1990s")
    assert words == {w: 1 for w in ["Don't", "stop-the", "rock", "roll's", "quoted", "a", "b",
                                    "cooperate", "café", "naïve", "東京", "5", "C", "cat", "dog",
                                    "line", "next", "x", "y", "1990s"]}
    assert ("Don't", "stop-the") in bigrams and ("stop-the", "rock") in bigrams
    assert ("東京", "5") in bigrams and ("x", "y") in bigrams and ("naïve", "東京") in bigrams
    for broken in [("rock", "roll's"), ("a", "b"), ("5", "C"), ("cat", "dog"), ("line", "next")]:
        assert broken not in bigrams


def test_empty_and_punctuation_only_text():
    assert words_and_bigrams("") == ({}, set())
    assert words_and_bigrams(" ... --- '' \n") == ({}, set())


@pytest.mark.parametrize("scan_bytes", [4 << 20, 997])
def test_every_bz2_block_decodes_alone(tmp_path, monkeypatch, scan_bytes):
    monkeypatch.setattr(wikitext, "SCAN_BYTES", scan_bytes)   # magics straddling scan windows
    rnd = random.Random(3)
    text = " ".join(rnd.choice(["alpha", "beta", "gamma", "delta", "épsilon"]) + str(rnd.randint(0, 999))
                    for _ in range(150_000)).encode()
    for level, streams in ((1, 1), (9, 1), (1, 7)):
        step = len(text) // streams + 1
        path = tmp_path / f"x{level}-{streams}.bz2"
        path.write_bytes(b"".join(bz2.compress(text[i:i + step], level) for i in range(0, len(text), step)))
        blocks = wikitext.Bz2Blocks(path, 0)
        parts = []
        while (blk := blocks.next_block()) is not None:
            parts.append(blocks.decode(*blk))
        blocks.close()
        assert b"".join(parts) == text
        assert len(parts) >= max(streams, len(text) // (level * 100_000))


@pytest.mark.parametrize("name,kw", [("d.xml.bz2", {}), ("d.xml.bz2", {"multistream": True}),
                                     ("d.xml", {})])
def test_each_page_belongs_to_exactly_one_chunk(tmp_path, name, kw):
    world = World(seed=2, fillers=30)
    path = world.dump(tmp_path / name, **kw)
    size = path.stat().st_size
    for chunk in (size + 1, 4096, 1500, 777):
        titles, pages = [], 0
        for spec in wikitext.plan_chunks(path, wikitext.input_kind(path), chunk):
            got = wikitext.read_pages(path, spec["start"], spec["end"], spec["start"] == 0)
            titles += got["titles"]
            pages += got["stats"]["pages"]
        assert pages == len(world.titles)
        assert sorted(titles) == sorted(t for t in world.titles if ":" not in t)


def test_each_jsonl_line_belongs_to_exactly_one_chunk(tmp_path):
    path = tmp_path / "articles.jsonl"
    rows = [{"title": f"T{i}", "text": "x" * (i % 7)} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" + ("\n" if i % 5 == 0 else "") for i, r in enumerate(rows)))
    for chunk in range(1, 60):
        titles = []
        for spec in wikitext.plan_chunks(path, "jsonl", chunk):
            titles += wikitext.read_articles(spec)[0]
        assert titles == [r["title"] for r in rows], chunk
    path.write_text(path.read_text() + '{"title": "bad", "text": \n')
    with pytest.raises(WitError, match=rf"articles.jsonl: the line at byte {path.stat().st_size - 26:,} "
                                       "is not valid JSON"):
        for spec in wikitext.plan_chunks(path, "jsonl", 100):
            wikitext.read_articles(spec)
