"""The generated world: a dump with real parsing work, WordNet and pageviews in their real
formats, a long-tailed pool whose captions are true of the images the server draws."""
from __future__ import annotations

import bz2
import csv
import html
import io
import re
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wit_builder.demo.drawing import Scene, blobs, color_mask
from wit_builder.demo.imageserver import serve
from wit_builder.demo.world import (
    CONCEPTS,
    EVAL_SEED_BASE,
    KINDS,
    SIZES,
    World,
    make_world,
    mentions_of,
    write_pool,
)
from wit_builder.errors import WitError

NS = "{http://www.mediawiki.org/xml/export-0.11/}"
SIMPLE_SHAPES = {"circle", "square", "triangle", "star", "heart", "hexagon", "pentagon", "diamond", "cross"}


@pytest.fixture(scope="module")
def srv():
    with serve() as s:
        yield s


@pytest.fixture(scope="module")
def world(tmp_path_factory, srv):
    t0 = time.monotonic()
    w = make_world(tmp_path_factory.mktemp("world"), size="test", seed=0, base_url=srv.base_url)
    w.seconds = time.monotonic() - t0
    return w


@pytest.fixture(scope="module")
def truth(world):
    return pq.read_table(world.truth).to_pylist()


@pytest.fixture(scope="module")
def pages(world):
    out = []
    with bz2.open(world.wiki_dump) as f:
        for _, el in ET.iterparse(f):
            if el.tag == NS + "page":
                redirect = el.find(NS + "redirect")
                text = el.find(f"{NS}revision/{NS}text")
                out.append({"title": el.findtext(NS + "title"), "ns": int(el.findtext(NS + "ns")),
                            "id": int(el.findtext(NS + "id")), "text": text.text,
                            "bytes": int(text.get("bytes")),
                            "redirect": redirect.get("title") if redirect is not None else None})
    return out


def fetch(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def plain_text(wikitext: str) -> str:
    """A small reference parser: what a careful plain-text extractor keeps of an article."""
    t = re.sub(r"<!--.*?-->", "", wikitext, flags=re.S)
    t = re.sub(r"<ref[^>/]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    t = re.sub(r"<gallery>.*?</gallery>", "", t, flags=re.S)
    while "{{" in t:
        t = re.sub(r"\{\{[^{}]*\}\}", "", t)          # innermost templates first
    t = re.sub(r"^\{\|.*?^\|\}", "", t, flags=re.S | re.M)
    t = re.sub(r"\[\[(?:File|Category):[^\]]*\]\]", "", t)
    t = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"^=+.*=+$", "", t, flags=re.M)
    t = re.sub(r"'{2,}|__\w+__", "", t)
    return html.unescape(t)


def test_test_world_is_quick_and_reloads(world):
    assert world.seconds < 2
    assert World.load(world.root) == world
    with pytest.raises(WitError, match="make_world"):
        World.load(world.root / "nowhere")
    with pytest.raises(WitError, match="demo"):
        make_world(world.root / "x", size="huge")


def test_dump_is_a_mediawiki_export_with_parsing_work(world, pages):
    assert all(p["bytes"] == len(p["text"].encode()) for p in pages)
    articles = [p for p in pages if p["ns"] == 0 and not p["redirect"]]
    assert sorted(p["title"] for p in articles) == sorted(world.titles)
    redirects = {p["title"]: p["redirect"] for p in pages if p["redirect"]}
    assert redirects == world.redirects
    assert all(re.match(r"#redirect \[\[", p["text"], re.I) for p in pages if p["redirect"])
    assert any(p["text"].startswith("#redirect") for p in pages if p["redirect"])   # lower case too
    assert {p["title"] for p in pages if p["ns"] == 1} == set(world.talk_titles)
    assert {p["ns"] for p in pages} >= {0, 1, 4, 10, 14}
    text = "\n".join(p["text"] for p in articles)
    for construct in (r"\{\{[^{}]*\{\{nowrap\|", r"<ref name=\"k\d+\">", r"<ref name=\"k\d+\" />",
                      r"^\{\| class=\"wikitable\"", r"\[\[File:[^]]+\|thumb\|", r"\[\[Category:",
                      r"<!--", r"^== .+ ==$", r"^=== .+ ===$", r"'''\w+'''", r"''\w+''",
                      r"\[\[\w+\|\w+\]\]", r"\[\[\w+\]\]s\b", r"<gallery>", r"&nbsp;"):
        assert re.search(construct, text, re.M), construct


def test_plain_text_counts_are_exact_and_long_tailed(world, pages):
    counts, bigrams = Counter(), Counter()
    for p in pages:
        if p["ns"] == 0 and not p["redirect"]:
            toks = re.findall(r"[^\W_]+", plain_text(p["text"]))
            counts.update(toks)
            bigrams.update(f"{a} {b}" for a, b in zip(toks, toks[1:]))
    assert {w: counts[w] for w in world.wiki_counts} == world.wiki_counts
    assert {b: bigrams[b] for b in world.wiki_bigram_counts} == world.wiki_bigram_counts
    # Markup-only and talk-only words are absent from plain text, yet frequent in the raw dump.
    raw = Counter(re.findall(r"[^\W_]+", "\n".join(p["text"] for p in pages)))
    for word in [*world.markup_only_words, *world.talk_only_words]:
        assert world.wiki_counts[word] == 0 and raw[word] >= 3 * world.min_freq
    # Zipf-like: the min_freq threshold splits the concepts.
    c = {w: world.wiki_bigram_counts.get(w, world.wiki_counts.get(w, 0)) for w in CONCEPTS}
    assert set(world.frequent_concepts) == {w for w in CONCEPTS if c[w] >= world.min_freq}
    assert len(world.frequent_concepts) >= 5 and len(world.rare_concepts) >= 10
    assert c["red"] > 5 * np.median(list(c.values()))


def test_multistream_copy_and_index(world, pages):
    index = bz2.decompress(world.wiki_multistream_index.read_bytes()).decode().splitlines()
    assert len(index) == len(pages)
    data = world.wiki_multistream.read_bytes()
    offset, page_id, title = index[-1].split(":", 2)
    xml = bz2.BZ2Decompressor().decompress(data[int(offset):]).decode()
    assert f"<title>{title}</title>" in xml and f"<id>{page_id}</id>" in xml
    assert bz2.decompress(data) == bz2.decompress(world.wiki_dump.read_bytes())


def test_wordnet_is_in_princeton_format(world):
    files = {pos: (world.wordnet_dir / f"data.{name}").read_bytes()
             for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))}
    starts = {pos: set() for pos in files}
    parsed = []
    for pos, data in files.items():
        offset = 0
        for line in data.decode().splitlines(keepends=True):
            if line.startswith("  "):           # license header
                assert re.match(r"  \d+ ", line)
            else:
                fields, gloss = line.split(" | ", 1)
                f = fields.split()
                assert int(f[0]) == offset and re.fullmatch(r"\d{8}", f[0]) and re.fullmatch(r"\d\d", f[1])
                assert f[2] in ({"a", "s"} if pos == "a" else {pos})
                n_words = int(f[3], 16)
                words = f[4:4 + 2 * n_words:2]
                n_ptrs = int(f[4 + 2 * n_words])
                ptrs = [f[5 + 2 * n_words + 4 * i: 9 + 2 * n_words + 4 * i] for i in range(n_ptrs)]
                if pos == "v":
                    assert f[5 + 2 * n_words + 4 * n_ptrs] == "01"   # frame count
                parsed.append((words, ptrs))
                starts[pos].add(offset)
                assert gloss.endswith("  \n")
            offset += len(line.encode())
    for _, ptrs in parsed:
        for _sym, target, tpos, srctgt in ptrs:
            assert int(target) in starts[tpos] and re.fullmatch(r"[0-9a-f]{4}", srctgt)
    lemmas = {w for words, _ in parsed for w in words}
    assert {"stop_sign", "traffic_light", "smiley_face", "polka_dot", "light_up", "at_night"} <= lemmas
    assert "galore(ip)" in lemmas   # adjective markers, as in the real files
    index = (world.wordnet_dir / "index.noun").read_text().splitlines()
    row = next(r for r in index if r.startswith("traffic_light "))
    assert int(row.split()[-1]) in starts["n"]


def test_pageviews_cover_the_dump(world):
    lines = [line.split(" ") for line in world.pageviews.read_text(encoding="utf-8").splitlines()]
    assert all(len(x) == 4 and x[2].isdigit() and x[3] == "0" for x in lines)
    en = {t: int(v) for p, t, v, _ in lines if p == "en.wikipedia"}
    assert {t.replace(" ", "_") for t in world.titles} <= set(en)
    assert {p for p, *_ in lines} > {"en.wikipedia"}
    assert en["Circle"] > en["Snowman"]          # views follow the concepts' ranks
    assert world.popular_titles and all(en[t.replace(" ", "_")] >= world.pageview_min for t in world.popular_titles)
    assert any(en[t.replace(" ", "_")] < world.pageview_min for t in world.titles)


def test_pool_files_and_mix(world, truth, srv):
    pool = pq.read_table(world.pool_parquet)
    assert pool.column_names == ["url", "caption", "source_id", "license"]
    with open(world.pool_tsv, newline="", encoding="utf-8") as f:
        tsv = list(csv.DictReader(f, delimiter="\t"))
    assert len(tsv) == pool.num_rows == SIZES["test"].pool_rows == len(truth)
    assert [r["caption"] for r in tsv] == pool.column("caption").to_pylist()
    assert set(world.pool_kinds) == set(KINDS) and all(world.pool_kinds[k] >= 1 for k in KINDS)
    urls = pool.column("url").to_pylist()
    assert None in urls and "" in urls
    http = [u for u in urls if u and u.startswith("http")]
    assert all(u.startswith(srv.base_url + "/") for u in http)
    assert any(u and not u.startswith("http") for u in urls)
    for r in truth:
        if r["dup_of"] is not None:
            assert truth[r["dup_of"]]["scene"] == r["scene"] and r["url"] != truth[r["dup_of"]]["url"]


def test_pool_is_long_tailed(world, truth):
    things = Counter(r["thing"] for r in truth)
    counts = sorted(things.values(), reverse=True)
    assert counts[0] >= 5 * np.median(counts)
    mentioned = Counter(m for r in truth for m in r["mentions"])
    assert mentioned["circle"] > 5 * np.median(list(mentioned.values()))


def test_captions_are_true_of_their_scenes(truth):
    bg_words = {"sky": {"sky", "blue"}, "grass": {"grass", "green"}, "night": {"night", "sky"},
                "sand": {"sand"}, "white": {"white"}, "black": {"black"}, "gray": {"gray"}}
    for r in truth:
        if r["kind"] in ("short_caption", "no_concept") or not r["scene"]:
            continue
        allowed = {r["thing"], r["color"], r["texture"]} | bg_words[r["background"]]
        assert r["thing"] in r["mentions"] and set(r["mentions"]) <= allowed, r
    assert mentions_of("THREE RED CROSSES, on green grass") == ["red", "green", "cross", "grass"]


def test_images_show_what_captions_say(world, truth):
    rows = [r for r in truth if r["kind"] in ("ok", "png", "webp") and r["texture"] == "plain"
            and r["thing"] in SIMPLE_SHAPES and r["color"] in r["mentions"]][:12]
    assert len(rows) >= 6
    for r in rows:
        img = Image.open(io.BytesIO(fetch(r["url"])))
        shape = color_mask(img, r["color"])
        assert len(blobs(shape, min_size=10)) == r["count"], r
        assert shape.mean() > 0.04, r


def test_duplicates_and_eval_leaks_are_byte_identical(world, truth):
    exact = next(r for r in truth if r["kind"] == "exact_dup")
    assert fetch(exact["url"]) == fetch(truth[exact["dup_of"]]["url"])
    leak = next(r for r in truth if r["kind"] == "eval_leak")
    assert fetch(leak["url"]) == (world.eval_dir / leak["thing"] / f"{leak['scene']}.jpg").read_bytes()
    near = next(r for r in truth if r["kind"] == "near_dup_quality")
    assert fetch(near["url"]) != fetch(truth[near["dup_of"]]["url"])


def test_each_kind_fetches_as_expected(world, truth):
    """One row of each kind, fetched the way img2dataset does (urllib, a timeout)."""
    def outcome(r):
        if not r["url"] or not r["url"].startswith("http://"):
            return "not http"
        try:
            with urllib.request.urlopen(r["url"], timeout=1.5) as resp:
                body = resp.read()
                robots = resp.headers.get("X-Robots-Tag")
        except urllib.error.HTTPError as e:
            return f"http {e.code}"
        except OSError:
            return "timeout"
        if robots:
            return robots
        try:
            img = Image.open(io.BytesIO(body))
            img.load()
        except Image.DecompressionBombError:
            return "bomb"
        except OSError:
            return "undecodable"
        return f"{img.width}px"
    want = {"ok": "64px", "png": "64px", "webp": "64px", "redirect": "64px", "exact_dup": "64px",
            "near_dup_resized": "48px", "near_dup_quality": "64px", "eval_leak": "64px",
            "tiny_1px": "1px", "tiny_8px": "8px", "short_caption": "64px", "no_concept": "64px",
            "flaky_429": "http 429", "slow": "timeout", "truncated": "undecodable",
            "http_404": "http 404", "http_500": "http 500", "http_429": "http 429",
            "html": "undecodable", "html_as_image": "undecodable", "bomb": "bomb",
            "redirect_loop": "http 302", "noai": "noai", "noimageai": "noimageai",
            "no_url": "not http", "non_http": "not http"}
    assert set(want) == set(KINDS)
    first = {}
    for r in truth:
        first.setdefault(r["kind"], r)
    assert {k: outcome(r) for k, r in first.items()} == want
    assert outcome(first["flaky_429"]) == "64px"           # a retry succeeds


def test_eval_folder_is_held_out(world, truth):
    classes = sorted(p.name for p in world.eval_dir.iterdir() if p.is_dir())
    assert classes == world.classnames == (world.eval_dir / "classnames.txt").read_text().split("\n")[:-1]
    assert all("{}" in p for p in world.prompts)
    eval_specs = set()
    for c in classes:
        files = sorted((world.eval_dir / c).glob("*.jpg"))
        assert len(files) == SIZES["test"].eval_per_class
        for f in files:
            s = Scene.parse(f.stem)
            assert s.thing == c and s.seed >= EVAL_SEED_BASE
            eval_specs.add(f.stem)
    pool = [r for r in truth if r["scene"] and r["kind"] != "eval_leak"]
    assert all(Scene.parse(r["scene"]).seed < EVAL_SEED_BASE for r in pool)
    assert all(r["scene"] in eval_specs for r in truth if r["kind"] == "eval_leak")


def test_write_pool_moves_urls_to_another_server(tmp_path):
    w = make_world(tmp_path, size="test", seed=1)
    assert pq.read_table(w.pool_parquet).column("url")[0].as_py().startswith("http://127.0.0.1:9/")
    with serve() as s:
        write_pool(w, s.base_url)
        urls = [u for u in pq.read_table(w.pool_parquet).column("url").to_pylist() if u and u.startswith("http")]
        assert urls and all(u.startswith(s.base_url + "/") for u in urls)
        assert World.load(tmp_path).base_url == s.base_url
        assert fetch(next(u for u in urls if "/img/" in u and u.count("/") == 4))


def test_demo_world_is_quick_and_big_enough(tmp_path):
    t0 = time.monotonic()
    w = make_world(tmp_path, size="demo")
    assert time.monotonic() - t0 < 20
    rows = pq.read_table(w.truth).to_pylist()
    assert len(rows) == SIZES["demo"].pool_rows
    things = Counter(r["thing"] for r in rows)
    assert set(things) == set(w.classnames) and min(things.values()) >= 20   # every class learnable
    assert Path(w.eval_dir / "circle").is_dir()
