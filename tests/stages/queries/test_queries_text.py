"""The pieces under `wit-build queries`: bz2 blocks decoded one by one, pages owned by
exactly one chunk, wikitext reduced to plain text, and the tokenisation rules."""
from __future__ import annotations

import bz2
import json
import random

import pyarrow.parquet as pq
import pytest

from tests.stages.queries.test_queries import World, page_xml, write_dump
from wit_builder.errors import WitError
from wit_builder.stages.queries import markup, wikidump, wikitext


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


def test_inline_tags_keep_words_whole_as_the_page_shows_them():
    words, bigrams = words_and_bigrams(markup.strip_markup(
        "'''Carbon dioxide''' ([[chemical formula]] CO<sub>2</sub>) is a gas. Water "
        "(H<sub>2</sub>O) and CO<SUB>2</SUB> form carbonic acid, H<sub>2</sub>CO<sub>3</sub>.\n"
        "The lake covers 5,000&nbsp;km<sup>2</sup>, its basin 1.2{{nbsp}}×{{nbsp}}10<sup>6</sup>"
        "&nbsp;km<sup>2</sup>.\nThe <i>Homo</i>-like skull was found by <span class=\"nowrap\">"
        "Louis Leakey</span><ref>{{cite book |title=Yak |year=1960}}</ref> in the "
        "1<sup>st</sup> season<br />Digging <small>(approx.)</small> went on, "
        "<abbr title=\"Before Common Era\">BCE</abbr> finds in Mc<nowiki/>Donald's "
        "<b>c</b><i>o</i><u>a</u><s>s</s><code>yak</code>t.".encode()).decode())
    assert words == {
        "Carbon": 1, "dioxide": 1, "chemical": 1, "formula": 1, "CO2": 2, "is": 1, "a": 1,
        "gas": 1, "Water": 1, "H2O": 1, "and": 1, "form": 1, "carbonic": 1, "acid": 1,
        "H2CO3": 1, "The": 2, "lake": 1, "covers": 1, "5": 1, "000": 1, "km2": 2, "its": 1,
        "basin": 1, "1": 1, "2": 1, "106": 1, "Homo-like": 1, "skull": 1, "was": 1,
        "found": 1, "by": 1, "Louis": 1, "Leakey": 1, "in": 2, "the": 1, "1st": 1,
        "season": 1, "Digging": 1, "approx": 1, "went": 1, "on": 1, "BCE": 1, "finds": 1,
        "McDonald's": 1, "coas": 1, "t": 1}
    assert {("Homo-like", "skull"), ("Louis", "Leakey"), ("1st", "season"), ("BCE", "finds"),
            ("in", "McDonald's"), ("McDonald's", "coas")} <= bigrams
    assert ("season", "Digging") not in bigrams   # <br /> ends the line


@pytest.mark.parametrize("source,expected", [
    # a caption with links, and the parameters before it
    ("[[File:Lincoln and McClellan 1862-10-03.jpg|thumb|250px|upright=1.2|alt=Two men in a tent|"
     "Lincoln and [[George B. McClellan|George McClellan]] at [[Sharpsburg, Maryland|Sharpsburg]]"
     " after the battle]]\nThe battle was fought on September 17.",
     "17 September The battle fought on was"),
    # a caption with an external link and a [bracketed] note
    ("Apollo 11 landed.[[File:Aldrin Apollo 11 original.jpg|thumb|right|Buzz Aldrin on the Moon "
     "[photo by Neil Armstrong] ([https://www.hq.nasa.gov/alsj/a11/ NASA])]] It returned.",
     "11 Apollo It landed returned"),
    # over several lines
    ("[[File:Thure de Thulstrup - Battle of Gettysburg.png\n|thumb\n|upright\n|alt=Soldiers on a "
     "field\n|''The Battle of Gettysburg'' by [[Thure de Thulstrup]]\n]]\nThe battle ended.",
     "The battle ended"),
    # in a template argument, beside a table
    ("{{Infobox military conflict\n| image = [[File:Gettysburg.png|300px|alt=A battle]]\n"
     "| caption = ''Battle of Gettysburg'' by [[Thure de Thulstrup]]\n| result = {| class=\"wikitable\"\n"
     "| Union victory\n|}\n}}\nThe '''Battle of Gettysburg''' was fought in 1863.",
     "1863 Battle Gettysburg The fought in of was"),
    # a table written with {{!}} inside a template
    ("{{Quote box\n| quote = {{{!}} class=\"wikitable\"\n{{!}}-\n! Year !! Votes\n{{!}}-\n"
     "{{!}} 1860 {{!}}{{!}} [[File:Lincoln.jpg|20px]] 1,865,908\n{{!}}}\n| align = right\n}}\n"
     "Lincoln won.", "Lincoln won"),
    # in table cells
    ("{| class=\"wikitable\"\n|-\n! Flag !! Country\n|-\n| [[File:Flag of France.svg|border|25px|"
     "alt=Flag of France|link=France]] || [[France]]\n|-\n| [[File:Flag of Chile.svg\n|25px]] || "
     "[[Chile]]\n|}\nBoth countries.", "Both countries"),
    # any case, spaces around the colon, other languages' names
    ("[[image:Yak.png|left|thumb|A yak]] [[ File : Yak herd.jpg |thumb|Yaks in [[Tibet]]]] "
     "[[FILE:Yak.svg]] [[Datei:Yak.jpg|mini|Ein Yak]] [[Fichier:Yak.jpg|vignette|Un yak]] "
     "[[Kategorie:Rinder]] Yaks graze.", "Yaks graze"),
    # a File link, a template and links inside a caption
    ("[[File:Route map.png|thumb|The route {{legend|red|road}} past [[File:Arrow.svg|10px]] "
     "[[Road|roads]]]] Roads.", "Roads"),
    # galleries: the tag with attributes, a template, #tag, and bare lines
    ("<gallery mode=\"packed\" heights=\"160px\">\nFile:Monet - Impression.jpg|''[[Impression, "
     "Sunrise]]'' (1872)\nImage:Monet Water Lilies.jpg|alt=Water lilies|Water Lilies\n</gallery>\n"
     "Monet painted.", "Monet painted"),
    ("{{Gallery\n|title=Works by Monet\n|width=160\n|File:Monet - Impression.jpg|''Impression, "
     "Sunrise'' (1872)\n|File:Monet Water Lilies.jpg|Water Lilies\n}}\nMonet painted.",
     "Monet painted"),
    ("{{#tag:gallery|\nFile:Monet - Impression.jpg{{!}}''Impression, Sunrise''\nFile:Monet Water "
     "Lilies.jpg{{!}}Water Lilies\n|mode=packed}}\nMonet painted.", "Monet painted"),
    ("File:Monet - Impression.jpg|''Impression, Sunrise'' (1872)\nMonet painted.\n<gallery>\n"
     "File:Monet Water Lilies.jpg\n image: Monet - Poppies.JPEG |Poppies\nFile: notes on him\n",
     "File Monet him notes on painted"),
])
def test_file_links_and_galleries_go_whole(source, expected):
    assert plain(source) == expected


def test_an_article_from_a_dump_counts_what_the_page_shows(tmp_path):
    text = ("{{Short description|Chemical compound}}\n{{Infobox chemical\n| ImageFile = "
            "[[File:Carbon-dioxide-3D-vdW.svg|upright|thumb|A [[molecule]] of CO<sub>2</sub>]]\n"
            "| Formula = CO<sub>2</sub>\n}}\n'''Carbon dioxide''' (CO<sub>2</sub>) dissolves in "
            "water (H<sub>2</sub>O).[[File:Keeling curve.png|thumb|The [[Keeling Curve]] of "
            "CO<sub>2</sub> at [https://gml.noaa.gov/ Mauna Loa] [ppm]]] It covers 3&nbsp;km<sup>2"
            "</sup>.\n<gallery mode=packed>\nFile:Dry ice.jpg|[[Dry ice]]\n</gallery>\n"
            "File:Dry ice pellets.jpg|Pellets\n[[Category:Carbon dioxide]]\n[[de:Kohlenstoffdioxid]]")
    path = write_dump(tmp_path / "enwiki-pages-articles.xml.bz2", [page_xml(1, "Carbon dioxide", 0, text)])
    spec = dict(wikitext.plan_chunks(path, "xml.bz2", 1 << 20)[0], out=str(tmp_path / "chunk-00000"))
    wikitext.count_chunk(spec)
    words = pq.read_table(tmp_path / "chunk-00000.words.parquet").to_pylist()
    assert {r["word"]: r["count"] for r in words} == {
        "Carbon": 1, "dioxide": 1, "CO2": 1, "dissolves": 1, "in": 1, "water": 1, "H2O": 1,
        "It": 1, "covers": 1, "3": 1, "km2": 1}


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
    monkeypatch.setattr(wikidump, "SCAN_BYTES", scan_bytes)   # magics straddling scan windows
    rnd = random.Random(3)
    text = " ".join(rnd.choice(["alpha", "beta", "gamma", "delta", "épsilon"]) + str(rnd.randint(0, 999))
                    for _ in range(150_000)).encode()
    for level, streams in ((1, 1), (9, 1), (1, 7)):
        step = len(text) // streams + 1
        path = tmp_path / f"x{level}-{streams}.bz2"
        path.write_bytes(b"".join(bz2.compress(text[i:i + step], level) for i in range(0, len(text), step)))
        blocks = wikidump.Bz2Blocks(path, 0)
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
            got = wikidump.read_pages(path, spec["start"], spec["end"], spec["start"] == 0)
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
