"""`wit-build queries` on a generated Wikipedia: a MediaWiki XML export with templates,
refs, tables, links, redirects and talk pages, a Princeton WordNet and pageviews files.

The world keeps its own books: every word written as prose is counted by the
generator, every word hidden in markup is `yak` (never counted), so exact counts,
bigram counts and the PMI of a pair can be checked against numbers computed here.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit_builder.build.stage import committed
from wit_builder.errors import WitError
from wit_builder.stages.queries import queries

FILLER = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua enim minim veniam quis nostrud").split()
# Markup whose words must never be counted: they are all "yak".
NOISE = [
    "{{Infobox animal|name=yak|size={{convert|3|m|yak}}|note=[[yak]]}}",
    "<ref>yak {{cite web|title=yak yak|url=http://yak.example/yak}}</ref><ref name=\"yak\" />",
    "<!-- yak yak -->",
    "{| class=\"wikitable\"\n! yak !! yak\n|-\n| yak || [[yak|yak]]\n|-\n|\n{|\n| yak\n|}\n|}",
    "[[File:Yak.jpg|thumb|A [[yak]] in the [[Snow|yak]] {{small|yak}}]]",
    "[[Category:Yak]] [[de:Yak]] [[Image:Yak.png]]",
    "<math>yak^2</math> <gallery>\nYak.jpg|yak\n</gallery>",
    "{{yak|{{yak|{{yak}}}}}}",
]


def page_xml(pid: int, title: str, ns: int, text: str, redirect: str | None = None) -> str:
    """One <page> in the MediaWiki export schema (0.11)."""
    red = f"\n    <redirect title={quoteattr(redirect)} />" if redirect else ""
    sha1 = hashlib.sha1(text.encode()).hexdigest()[:31]
    body = escape(text, {'"': "&quot;"})
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{pid}</id>{red}\n"
            f"    <revision>\n      <id>{pid * 10}</id>\n      <parentid>{pid * 10 - 1}</parentid>\n"
            f"      <timestamp>2024-01-0{pid % 9 + 1}T12:00:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Editor{pid}</username>\n        <id>{pid}</id>\n"
            f"      </contributor>\n      <comment>edit &lt;text&gt; {pid}</comment>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f"      <text bytes=\"{len(text.encode())}\" xml:space=\"preserve\">{body}</text>\n"
            f"      <sha1>{sha1}</sha1>\n    </revision>\n  </page>\n")


HEADER = ("<mediawiki xmlns=\"http://www.mediawiki.org/xml/export-0.11/\" "
          "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" version=\"0.11\" xml:lang=\"en\">\n"
          "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
          "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n"
          "    <generator>MediaWiki 1.42.0-wmf.5</generator>\n    <case>first-letter</case>\n"
          "    <namespaces>\n      <namespace key=\"0\" case=\"first-letter\" />\n"
          "      <namespace key=\"1\" case=\"first-letter\">Talk</namespace>\n"
          "      <namespace key=\"2\" case=\"first-letter\">User</namespace>\n"
          "    </namespaces>\n  </siteinfo>\n")
FOOTER = "</mediawiki>\n"


def write_dump(path: Path, pages: list[str], level: int = 1, multistream: bool = False) -> Path:
    """Write pages as a bz2 XML dump: one stream, or multistream (a stream per 3 pages)."""
    if not str(path).endswith(".bz2"):
        path.write_text(HEADER + "".join(pages) + FOOTER, encoding="utf-8")
        return path
    if not multistream:
        path.write_bytes(bz2.compress((HEADER + "".join(pages) + FOOTER).encode(), level))
        return path
    parts = [HEADER] + ["".join(pages[i:i + 3]) for i in range(0, len(pages), 3)] + [FOOTER]
    path.write_bytes(b"".join(bz2.compress(p.encode(), level) for p in parts))
    return path


class World:
    """Pages plus the books: counts of every prose word and bigram."""

    def __init__(self, seed: int = 0, fillers: int = 80):
        self.rnd = random.Random(seed)
        self.words: Counter = Counter()
        self.bigrams: Counter = Counter()
        self.pages: list[str] = []
        self.titles: list[str] = []
        # alpha: exactly 100, beta: exactly 99, spread over many pages.
        alpha, beta = 100, 99
        self.article("Zebra", [
            self.sent(["the", "zebra", "is", "striped"], {1: "'''{w}'''"}),
            NOISE[0], NOISE[1],
            self.sent(["a", "zebra", "eats", "grass"], {3: "[[Poaceae|{w}]]"}),
            NOISE[2], NOISE[3],
            self.sent(["quantum", "flux"] * 2),   # quantum flux x2, flux quantum x1
            NOISE[4],
            self.sent(["Zebras", "and", "quantum", "flux", "alpha"], {0: "[[Zebra]]s"}),
            NOISE[5], NOISE[6], NOISE[7],
        ])
        alpha -= 1
        self.article("Alpha (letter)", [self.sent(["alpha"] * 9 + ["beta"] * 9, {0: "[[Alpha (letter)|{w}]]", 10: "[[beta]]"}),
                                        NOISE[0], self.sent(["quantum", "flux", "and", "quantum", "quantum"]),
                                        NOISE[3]])
        alpha, beta = alpha - 9, beta - 9
        self.article("Beta (letter)", [self.sent(["beta", "café", "naïve", "don't", "rock-and-roll"]),
                                       "Entities: alpha&nbsp;beta &amp; 5&ndash;6 don\u2019t.",
                                       NOISE[1]])
        self.words.update(["Entities", "alpha", "beta", "5", "6", "don't"])
        self.bigrams.update([("alpha", "beta"), ("6", "don't")])
        alpha, beta = alpha - 1, beta - 2
        self.article("Main Page", [self.sent(["welcome", "to", "wikipedia"])])
        for i in range(fillers):
            body = []
            for _ in range(12):
                words = [self.rnd.choice(FILLER) for _ in range(self.rnd.randint(10, 60))]
                if alpha:
                    words.insert(self.rnd.randint(0, len(words)), "alpha")
                    alpha -= 1
                if beta:
                    words.insert(self.rnd.randint(0, len(words)), "beta")
                    beta -= 1
                if alpha and i % 2:
                    words.append("alpha")
                    alpha -= 1
                body += [self.sent(words), self.rnd.choice(NOISE)]
            self.article(f"Filler {i}", body)
        assert alpha == 0 and beta == 0, "make more filler pages"
        # Pages that must not count: talk and user pages, redirects (new and old style).
        self.page("Talk:Zebra", 1, "alpha " * 50 + "gamma " * 500)
        self.page("User:Someone", 2, "alpha beta " * 30)
        self.page("Zebras", 0, "#REDIRECT [[Zebra]] alpha gamma", redirect="Zebra")
        self.page("Old redirect", 0, "#redirect [[Zebra]] alpha gamma")

    def sent(self, words: list[str], markup: dict[int, str] | None = None) -> str:
        """A prose sentence; `markup` dresses some words (the books count the plain word)."""
        self.words.update(words)
        self.bigrams.update(zip(words, words[1:]))
        dressed = [(markup or {}).get(i, "{w}").format(w=w) for i, w in enumerate(words)]
        return " ".join(dressed) + "."

    def article(self, title: str, parts: list[str]) -> None:
        self.page(title, 0, "\n".join(parts) + "\n")

    def page(self, title: str, ns: int, text: str, redirect: str | None = None) -> None:
        self.pages.append(page_xml(len(self.pages) + 1, title, ns, text, redirect))
        self.titles.append(title)

    @property
    def total(self) -> int:
        return sum(self.words.values())

    def dump(self, path: Path, **kw) -> Path:
        return write_dump(path, self.pages, **kw)


WORDNET_HEADER = "".join(f"  {i} This software and database is being provided to you, the LICENSEE, by\n"
                         for i in range(1, 30))
WORDNET = {
    "data.noun": [
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 001 @ 02083346 n 0000 | a member of the genus Canis",
        "07697537 13 n 02 hotdog 0 hot_dog 0 000 | a frankfurter served hot on a bun",
        "06828818 10 n 01 alpha 0 000 | the 1st letter of the Greek alphabet",
        "02391049 05 n 01 zebra 0 000 | any of several fleet black-and-white striped African equines",
    ],
    "data.verb": ["01926311 38 v 02 run 0 scat 0 000 01 + 02 00 | move fast by using one's feet"],
    "data.adj": ["00015247 00 s 01 galore(ip) 0 000 | in great numbers"],
    "data.adv": ["00086000 02 r 02 quickly 0 rapidly 0 000 | with rapid movements"],
}


def write_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in WORDNET.items():
        (folder / name).write_text(WORDNET_HEADER + "\n".join(lines) + "\n")
    return folder


PAGEVIEWS = [
    "en Zebra 50 0", "en.m Zebra 30 0", "en Zebras 10 0",          # 90 (redirect counts)
    "en Alpha_(letter) 70 0",                                       # exactly 70 -> "Alpha"
    "en Beta_(letter) 69 0",                                        # one short
    "de Zebra 1000 0", "en Talk:Zebra 500 0", "en Not_in_the_dump 500 0", "en Main_Page 9999 0",
]


def write_pageviews(path: Path, lines: list[str] = PAGEVIEWS) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def table(build: Path) -> dict[str, dict]:
    """The written query list as {query: row}."""
    rows = pq.read_table(committed(build, "queries") / "queries.parquet").to_pylist()
    return {r["query"]: r for r in rows}


def by_source(rows: dict[str, dict], source: str) -> dict[str, dict]:
    return {q: r for q, r in rows.items() if source in r["sources"]}


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def dump(world, tmp_path_factory) -> Path:
    return world.dump(tmp_path_factory.mktemp("dump") / "enwiki-pages-articles.xml.bz2")


def run(build: Path, **settings) -> queries.StageResult:
    settings.setdefault("wordnet", "none")
    settings.setdefault("chunk_mb", 0.005)
    return queries.run(queries.Config(**settings), build)


# ---------------------------------------------------------------- counting


def test_exact_counts_of_every_word_and_bigram(ray_cluster, world, dump, build):
    res = run(build, wiki=[str(dump)], min_freq=1, min_pmi=-100, max_entries=10 ** 6)
    rows = table(build)
    unigrams = {q: r["wiki_count"] for q, r in by_source(rows, "wiki_unigram").items()}
    assert unigrams == dict(world.words)
    assert "yak" not in rows and "gamma" not in rows and "Yak" not in rows
    assert unigrams["alpha"] == 100 and unigrams["beta"] == 99
    assert unigrams["don't"] == 2 and unigrams["café"] == 1 and unigrams["rock-and-roll"] == 1
    bigrams = {tuple(q.split(" ")): r["wiki_count"] for q, r in by_source(rows, "wiki_bigram").items()}
    assert bigrams == dict(world.bigrams)
    s = res.summary["input"]
    assert s["articles"] == 4 + 80 and s["redirects_skipped"] == 2 and s["other_namespaces_skipped"] == 2
    assert s["words"] == world.total and s["chunks_counted"] > 3


def test_relative_paths_work_with_ray_workers_elsewhere(ray_cluster, dump, tmp_path, monkeypatch):
    """`--wiki dump.xml.bz2 --out wit-data` from the shell's directory, while Ray's
    workers run in another one."""
    shutil.copy(dump, tmp_path / "dump.xml.bz2")
    monkeypatch.chdir(tmp_path)
    res = run(Path("wit-data"), wiki=["dump.xml.bz2"], min_freq=100)
    assert res.rows > 0 and "alpha" in table(tmp_path / "wit-data")


def test_min_freq_boundary_99_100(ray_cluster, dump, build):
    run(build, wiki=[str(dump)], min_freq=100)
    rows = by_source(table(build), "wiki_unigram")
    assert rows["alpha"]["wiki_count"] == 100
    assert "beta" not in rows
    assert all(r["wiki_count"] >= 100 for r in rows.values())


def test_pmi_is_computed_by_hand(ray_cluster, world, dump, build):
    n = world.total
    c_xy, c_x, c_y = world.bigrams[("quantum", "flux")], world.words["quantum"], world.words["flux"]
    assert (c_xy, c_x, c_y) == (4, 6, 4)
    pmi = math.log2((c_xy / n) / ((c_x / n) * (c_y / n)))   # = log2(n / 6)
    run(build, wiki=[str(dump)], min_pmi=pmi, min_bigram_count=4)
    rows = by_source(table(build), "wiki_bigram")
    assert set(rows) == {"quantum flux"}
    assert rows["quantum flux"]["pmi"] == pytest.approx(pmi, abs=1e-9)
    assert rows["quantum flux"]["wiki_count"] == 4
    run(build, wiki=[str(dump)], min_pmi=pmi + 0.01, min_bigram_count=4)
    assert not by_source(table(build), "wiki_bigram")


def test_one_worker_and_several_give_the_same_list(ray_cluster, world, dump, tmp_path):
    multi = world.dump(tmp_path / "enwiki-multistream.xml.bz2", multistream=True)
    plain = world.dump(tmp_path / "enwiki.xml")
    settings = dict(min_freq=2, min_pmi=-100, min_bigram_count=2)
    results = []
    for i, (src, workers, chunk_mb) in enumerate([(dump, 1, 100), (dump, 2, 0.01), (multi, 2, 0.005),
                                                  (plain, 2, 0.05)]):
        res = run(tmp_path / f"b{i}", wiki=[str(src)], workers=workers, chunk_mb=chunk_mb, **settings)
        results.append(pq.read_table(committed(tmp_path / f"b{i}", "queries") / "queries.parquet"))
        assert res.summary["input"]["words"] == world.total
    assert results[1].num_rows > 100
    for other in results[1:]:
        assert other.equals(results[0])


# ---------------------------------------------------------------- titles, WordNet, cap


def test_titles_from_pageviews_and_wordnet(ray_cluster, dump, build, tmp_path):
    pv = write_pageviews(tmp_path / "pageviews-20240101-000000.gz")
    wn = write_wordnet(tmp_path / "wordnet")
    res = run(build, wiki=[str(dump)], pageviews=[str(pv)], wordnet=str(wn), min_freq=100)
    rows = table(build)
    titles = by_source(rows, "wiki_title")
    assert {q: r["pageviews"] for q, r in titles.items()} == {"Zebra": 90, "Alpha": 70}
    assert set(by_source(rows, "wordnet")) == {"dog", "hotdog", "alpha", "zebra", "run", "galore", "quickly"}
    assert rows["alpha"]["sources"] == ["wiki_unigram", "wordnet"]
    assert rows["zebra"]["wiki_count"] == 2 and rows["dog"]["wiki_count"] is None
    assert res.summary["overlaps"] == {"wiki_unigram+wordnet": 1}
    assert "notes" not in res.summary
    assert "wiki_title: Zebra, Alpha | wordnet: alpha, zebra, " in res.summary["examples"]
    # all lemmas, case folding
    run(build, wiki=[str(dump)], pageviews=[str(pv)], wordnet=str(wn), all_lemmas=True, case="fold")
    rows = table(build)
    assert {"hot dog", "Canis familiaris", "scat", "rapidly"} <= set(by_source(rows, "wordnet"))
    assert rows["alpha"]["sources"] == ["wiki_unigram", "wiki_title", "wordnet"]
    assert rows["zebra"]["sources"] == ["wiki_title", "wordnet"] and rows["zebra"]["pageviews"] == 90
    # lower case; no blocklist: the main page's title comes back
    run(build, wiki=[str(dump)], pageviews=[str(pv)], case="lower", blocklist="none")
    rows = table(build)
    assert all(q == q.lower() for q in rows) and rows["main page"]["pageviews"] == 9999
    assert rows["alpha"]["sources"] == ["wiki_unigram", "wiki_title"]


def test_pageviews_hourly_and_complete_formats(ray_cluster, dump, build, tmp_path):
    hourly = write_pageviews(tmp_path / "pageviews-20240101-000000.gz", ["en Zebra 50 0", "en.m Zebra 30 0"])
    complete = tmp_path / "pageviews-20240101-user.bz2"    # wiki title page_id access daily hourly
    complete.write_bytes(bz2.compress(b"en.wikipedia Zebra 12 mobile-web 7 A3D4\n"
                                      b"de.wikipedia Zebra 34 desktop 999 A999\n"))
    run(build, wiki=[str(dump)], pageviews=[str(hourly), str(complete)], min_views=1)
    assert {q: r["pageviews"] for q, r in by_source(table(build), "wiki_title").items()} == {"Zebra": 87}


def test_without_pageviews_titles_are_left_out_and_wordnet_found_in_nltk_data(
        ray_cluster, dump, build, tmp_path, monkeypatch):
    write_wordnet(tmp_path / "nltk" / "corpora" / "wordnet")
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk"))
    res = run(build, wiki=[str(dump)], wordnet="auto")
    assert "no --pageviews: article titles left out" in res.summary["notes"]
    assert not by_source(table(build), "wiki_title")
    assert "dog" in by_source(table(build), "wordnet")


def test_cap_keeps_sources_by_priority(ray_cluster, dump, build, tmp_path):
    wn = write_wordnet(tmp_path / "wordnet")
    settings = dict(wiki=[str(dump)], wordnet=str(wn), min_freq=20, min_pmi=-100, min_bigram_count=20)
    run(build, **settings, max_entries=10 ** 6)
    everything = table(build)
    unigrams = sorted(by_source(everything, "wiki_unigram").values(), key=lambda r: -r["wiki_count"])
    res = run(build, **settings, max_entries=10)
    rows = table(build)
    assert len(rows) == 10
    # WordNet first (7 lemmas), then the three most frequent words
    assert [r["query"] for r in sorted(rows.values(), key=lambda r: r["query_id"])][7:] == \
        [r["query"] for r in unigrams if "wordnet" not in r["sources"]][:3]
    assert set(by_source(rows, "wordnet")) == set(by_source(everything, "wordnet"))
    assert "kept 10 of" in res.summary["cap"] and "wiki_unigram" in res.summary["cap"]
    res = run(build, **settings, max_entries=10, priority=["wiki_bigram", "wiki_unigram"])
    rows = table(build)
    bigrams = sorted(by_source(everything, "wiki_bigram").values(), key=lambda r: (-r["wiki_count"], -r["pmi"]))
    assert [q for q, r in rows.items() if r["sources"] == ["wiki_bigram"]] == [r["query"] for r in bigrams][:10]


def test_count_tables(ray_cluster, build, tmp_path):
    uni = tmp_path / "unigrams.txt"
    uni.write_text("apple\t150\nbanana 100\ncherry\t99\nNew\t8\nYork 4\ndate 1000\n\n")
    bi = tmp_path / "bigrams.txt.gz"
    with gzip.open(bi, "wt") as f:
        f.write("New York\t4\napple banana 3\n")
    res = run(build, unigram_counts=[str(uni)], bigram_counts=[str(bi)], min_pmi=5)
    rows = table(build)
    assert set(by_source(rows, "wiki_unigram")) == {"apple", "banana", "date"}
    n = 150 + 100 + 99 + 8 + 4 + 1000
    assert rows["New York"]["pmi"] == pytest.approx(math.log2(4 * n / (8 * 4)))
    assert rows["New York"]["sources"] == ["wiki_bigram"]
    assert res.summary["input"]["chunks_counted"] == 0
    uni.write_text("apple\t150\nbanana 100\nthis line is bad\n")
    with pytest.raises(WitError, match=r"unigrams.txt: line 3: .*'this line is bad'"):
        run(build, unigram_counts=[str(uni)])


@pytest.mark.slow
def test_article_files_parquet_jsonl_and_hf_folder(ray_cluster, build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    texts = ["Alpha beta gamma. Alpha beta!", "alpha\nbeta", "Gamma delta alpha beta"]
    rows = [{"id": str(i), "url": f"https://en.wikipedia.org/wiki?curid={i}", "title": f"T{i}", "text": t}
            for i, t in enumerate(texts)]
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "train-00000-of-00001.parquet",
                   row_group_size=1)
    jsonl = tmp_path / "articles.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = []
    for i, src in enumerate([str(tmp_path / "hf" / "train-00000-of-00001.parquet"), str(jsonl),
                             f"hf:{tmp_path / 'hf'}"]):
        run(tmp_path / f"b{i}", wiki=[src], min_freq=2, min_pmi=-100, min_bigram_count=2, chunk_mb=1e-5)
        results.append(table(tmp_path / f"b{i}"))
        assert {q: r["wiki_count"] for q, r in results[-1].items()} == \
            {"alpha": 2, "beta": 4, "Alpha": 2, "Alpha beta": 2}
    assert results[0] == results[1] == results[2]
    words = {q: r["wiki_count"] for q, r in by_source(results[0], "wiki_unigram").items()}
    assert words == {"Alpha": 2, "alpha": 2, "beta": 4}
    assert {q: r["wiki_count"] for q, r in by_source(results[0], "wiki_bigram").items()} == {"Alpha beta": 2}
