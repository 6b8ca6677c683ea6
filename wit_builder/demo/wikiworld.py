"""The generated world's Wikipedia side: the XML dump, pageviews and WordNet.

Part of the generated world (`wit_builder.demo.world` calls these writers); the pages' prose
and markup come from `wit_builder.demo.wikiprose`, whose (plain, wikitext) token pairs make
the plain-text word counts known exactly.
"""
from __future__ import annotations

import bz2
import hashlib
import re
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from wit_builder.demo.drawing import COLORS
from wit_builder.demo.wikiprose import (
    ADJECTIVES,
    CONCEPTS,
    FILLER,
    FILLER_TITLES,
    MARKUP_ONLY_WORDS,
    TALK_ONLY_WORD,
    WIKI_RANK,
    Wiki,
    page_text,
    plural_of,
    prose_plan,
    talk_text,
    title_case,
)
from wit_builder.demo.worldspec import Size, World

# ---------------------------------------------------------------------------
# The MediaWiki export: pages as XML, one bz2 stream and the multistream copy with its index.

_NAMESPACES = [(-2, "Media"), (-1, "Special"), (0, ""), (1, "Talk"), (2, "User"), (3, "User talk"),
               (4, "Wikipedia"), (5, "Wikipedia talk"), (6, "File"), (7, "File talk"),
               (10, "Template"), (11, "Template talk"), (14, "Category"), (15, "Category talk")]


def _sha1_base36(text: str) -> str:
    n = int(hashlib.sha1(text.encode()).hexdigest(), 16)
    digits = ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return digits.rjust(31, "0")


def _page_xml(title: str, ns: int, page_id: int, text: str, redirect: str | None) -> str:
    sha = _sha1_base36(text)
    rev = 1_100_000_000 + page_id * 7
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n"
            + (f"    <redirect title={quoteattr(redirect)} />\n" if redirect else "")
            + f"    <revision>\n      <id>{rev}</id>\n      <parentid>{rev - 3}</parentid>\n"
            f"      <timestamp>2024-01-0{1 + page_id % 9}T12:00:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Editor{page_id % 13}</username>\n"
            f"        <id>{40000 + page_id % 13}</id>\n      </contributor>\n"
            f"      <comment>copyedit</comment>\n      <origin>{rev}</origin>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" sha1="{sha}" xml:space="preserve">{escape(text)}</text>\n'
            f"      <sha1>{sha}</sha1>\n    </revision>\n  </page>\n")


_XML_HEAD = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.11/ '
    'http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" xml:lang="en">\n'
    "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
    "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n"
    "    <generator>MediaWiki 1.42.0-wmf.1</generator>\n    <case>first-letter</case>\n"
    "    <namespaces>\n"
    + "".join(f'      <namespace key="{k}" case="first-letter"'
              + (f">{escape(n)}</namespace>\n" if n else " />\n") for k, n in _NAMESPACES)
    + "    </namespaces>\n  </siteinfo>\n")


def _write_wiki(w: World, sz: Size, rng: np.random.Generator) -> None:
    wk = Wiki(rng)
    concept_titles = [title_case(c) for c in WIKI_RANK]
    filler_titles = [FILLER_TITLES[i % len(FILLER_TITLES)] + ("" if i < len(FILLER_TITLES) else f" ({i})")
                     for i in range(sz.filler_pages)]
    titles = concept_titles + filler_titles
    # Every concept page opens with its own concept; the rest of the prose is shared out.
    plan = prose_plan(sz, rng)
    leads: dict[str, str] = {}
    rest = []
    for template, fills in plan:
        words = fills["t"] + fills["a"] + fills["s"]
        own = next((x for x in words if title_case(x) in concept_titles and title_case(x) not in leads), None)
        if own is not None and len(words) == 1:
            leads[title_case(own)] = wk.sentence(template, fills)
        else:
            rest.append(wk.sentence(template, fills))
    n_filler = max(len(rest), len(titles))
    rest += [wk.sentence(FILLER[int(rng.integers(len(FILLER)))], {}) for _ in range(n_filler)]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    share = np.array_split(np.arange(len(rest)), len(titles))
    pages: list[tuple[str, int, str, str | None]] = []
    for n, (title, idx) in enumerate(zip(titles, share)):
        sentences = ([leads[title]] if title in leads else []) + [rest[i] for i in idx]
        pages.append((title, 0, page_text(wk, title, sentences, title in concept_titles, n), None))
    redirects = {}
    for c in WIKI_RANK[:12]:
        src = plural_of(title_case(c)) if c not in ADJECTIVES else f"{title_case(c)} (colour)"
        redirects[src] = title_case(c)
    redirects["Smiley"] = "Smiley face"
    for j, (src, dst) in enumerate(redirects.items()):
        word = "#redirect" if j % 5 == 4 else "#REDIRECT"
        pages.append((src, 0, f"{word} [[{dst}]]\n\n{{{{Redirect category shell|\n{{{{R from "
                               f"{'plural' if src.endswith('s') else 'alternative name'}}}}}\n}}}}\n", dst))
    talk = [f"Talk:{t}" for t in concept_titles[:sz.talk_pages]]
    pages += [(t, 1, talk_text(wk, t, WIKI_RANK[i]), None) for i, t in enumerate(talk)]
    while wk.traps[TALK_ONLY_WORD] < 3 * sz.min_freq:   # enough that counting talk pages shows
        t = f"{talk[len(talk) % sz.talk_pages]}/Archive {len(talk)}"
        pages.append((t, 1, talk_text(wk, t, "flower"), None))
        talk.append(t)
    # Enough markup-only words that a parser which keeps templates, refs or comments shows it.
    extras = {"plugh": lambda: f"{{{{Infobox shape|name={wk.trap('plugh', 4)}}}}}",
              "xyzzy": lambda: f"<ref>{wk.trap('xyzzy', 4)}</ref>",
              "frobnitz": lambda: f"<!-- {wk.trap('frobnitz', 4)} -->"}
    k = 0
    for word, make in extras.items():
        while wk.traps[word] < 3 * sz.min_freq:
            t, ns, text, red = pages[k % len(titles)]
            pages[k % len(titles)] = (t, ns, text.replace("\n\n", f"\n{make()}\n\n", 1), red)
            k += 1
    pages += [("Template:Infobox shape", 10, '{| class="infobox"\n! {{{name}}}\n|-\n| [[File:{{{image}}}]]\n|}'
               "<noinclude>[[Category:Infobox templates]]</noinclude>\n", None),
              ("Category:Plane figures", 14, "Articles about flat figures.\n[[Category:Geometry]]\n", None),
              ("Wikipedia:Manual of Style/Figures", 4, "Guidance for editors.\n", None)]

    lower_aside = {a.lower() for a in wk.aside}
    clash = [c for c in CONCEPTS for part in c.split() if part in lower_aside]
    assert not clash, f"concept words in parser-dependent text: {clash}"
    body = [_page_xml(t, ns, 10 + 3 * i, text, red) for i, (t, ns, text, red) in enumerate(pages)]
    with bz2.open(w.wiki_dump, "wt", encoding="utf-8") as f:
        f.write(_XML_HEAD + "".join(body) + "</mediawiki>\n")
    _write_multistream(w, body, pages)

    w.wiki_counts = {k: v for k, v in sorted(wk.prose.items()) if k not in wk.aside}
    w.wiki_counts.update({k: 0 for k in MARKUP_ONLY_WORDS} | {TALK_ONLY_WORD: 0})
    w.wiki_bigram_counts = {c: wk.bigrams[c] for c in CONCEPTS if " " in c}
    count = {c: (w.wiki_bigram_counts[c] if " " in c else w.wiki_counts.get(c, 0)) for c in CONCEPTS}
    w.frequent_concepts = [c for c in CONCEPTS if count[c] >= sz.min_freq]
    w.rare_concepts = [c for c in CONCEPTS if count[c] < sz.min_freq]
    w.titles = [t for t, ns, _, red in pages if ns == 0 and not red]
    w.redirects = redirects
    w.talk_titles = talk


def _write_multistream(w: World, body: list[str], pages: list) -> None:
    """The same pages as bz2 streams of 100 pages, with an `offset:page_id:title` index."""
    streams, index, offset = [bz2.compress(_XML_HEAD.encode())], [], 0
    offset += len(streams[0])
    for start in range(0, len(body), 100):
        index += [f"{offset}:{10 + 3 * i}:{pages[i][0]}" for i in range(start, min(start + 100, len(body)))]
        streams.append(bz2.compress("".join(body[start:start + 100]).encode()))
        offset += len(streams[-1])
    streams.append(bz2.compress(b"</mediawiki>\n"))
    w.wiki_multistream.write_bytes(b"".join(streams))
    w.wiki_multistream_index.write_bytes(bz2.compress(("\n".join(index) + "\n").encode()))


# ---------------------------------------------------------------------------
# Pageviews: `project title views bytes`, underscores for spaces, other projects mixed in.

def _write_pageviews(w: World, rng: np.random.Generator) -> None:
    views: dict[str, int] = {}
    for rank, c in enumerate(WIKI_RANK, 1):
        views[title_case(c)] = int(60000 / rank ** 1.3)
    for t in w.titles:
        views.setdefault(t, int(rng.integers(20, 1500)))
    for src in w.redirects:
        views[src] = int(rng.integers(1, 200))
    views |= {"Main_Page": 250000, "Not in the dump": 9000, "Special:Search": 40000}
    lines = [("en.wikipedia", t.replace(" ", "_"), v) for t, v in views.items()]
    lines += [("en.wikipedia", t.replace(" ", "_"), int(rng.integers(1, 50))) for t in w.talk_titles]
    lines += [("en.wikipedia", "-", 120)]
    for project, title in [("de.wikipedia", "Kreis"), ("fr.wikipedia", "Cercle"), ("de.wikipedia", "Circle"),
                           ("en.wiktionary", "circle"), ("en.wiktionary", "red"),
                           ("commons.wikimedia", "File:Emblem_1.svg"), ("en.wikibooks", "Geometry"),
                           ("fr.wikipedia", "Snowman"), ("ja.wikipedia", "円")]:
        lines.append((project, title, int(rng.integers(100, 90000))))
    lines.sort(key=lambda x: (x[0], x[1].encode()))
    w.pageviews.write_text("".join(f"{p} {t} {v} 0\n" for p, t, v in lines), encoding="utf-8")
    w.pageviews_en = {t.replace("_", " "): v for p, t, v in lines if p == "en.wikipedia"}
    w.popular_titles = sorted(t for t in w.titles + list(w.redirects) if views.get(t, 0) >= w.pageview_min)


# ---------------------------------------------------------------------------
# WordNet in the Princeton database format (wndb(5WN)).

_LICENSE = [
    "WordNet Release 3.0 This software and database is being provided to you, the LICENSEE, by",
    "Princeton University under the following license.  By obtaining, using and/or copying this",
    "software and database, you agree that you have read, understood, and will comply with these",
    "terms and conditions.: (This copy is a small generated sample for the wit test world.)",
    "THIS SOFTWARE AND DATABASE IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO",
    "REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.",
]
# (key, pos, lex_filenum, lemmas, gloss, pointers as (symbol, target key)); pos a/s/n/v/r.
_SYNSETS = [
    ("shape", "n", 3, ["shape", "form"], "the spatial arrangement of something as distinct from its substance",
     [("~", "plane_figure")]),
    ("plane_figure", "n", 25, ["plane_figure", "two-dimensional_figure"],
     "a two-dimensional shape", [("@", "shape")]),
    ("circle", "n", 25, ["circle"], 'ellipse in which the two axes are of equal length; "draw a circle"',
     [("@", "plane_figure"), ("+", "v_draw")]),
    ("square", "n", 25, ["square", "foursquare"], "a plane rectangle with four equal sides", [("@", "plane_figure")]),
    ("triangle", "n", 25, ["triangle", "trigon", "trilateral"], "a three-sided polygon", [("@", "plane_figure")]),
    ("star", "n", 25, ["star"], "a plane figure with 5 or more points", [("@", "plane_figure")]),
    ("heart", "n", 25, ["heart", "heart_shape"], "a plane figure with rounded sides curving inward at the top",
     [("@", "plane_figure")]),
    ("hexagon", "n", 25, ["hexagon"], "a six-sided polygon", [("@", "plane_figure")]),
    ("pentagon", "n", 25, ["pentagon"], "a five-sided polygon", [("@", "plane_figure")]),
    ("diamond", "n", 25, ["diamond", "rhombus", "rhomb", "lozenge"],
     "a parallelogram with four equal sides", [("@", "plane_figure")]),
    ("ring", "n", 25, ["ring", "annulus", "halo"], "a toroidal shape", [("@", "plane_figure")]),
    ("crescent", "n", 25, ["crescent"], "any shape resembling the curved shape of the moon in its first or last quarter",
     [("@", "plane_figure")]),
    ("mobius", "n", 25, ["Mobius_strip"], "a continuous closed surface with only one side",
     [("@", "plane_figure")]),
    ("cross", "n", 6, ["cross"], "a marking that consists of lines that cross each other", []),
    ("arrow", "n", 6, ["arrow", "pointer"], "a mark to indicate a direction", []),
    ("traffic_sign", "n", 6, ["traffic_sign"], "a sign visible from the roadway", [("~", "stop_sign")]),
    ("stop_sign", "n", 6, ["stop_sign"], "a red octagonal traffic sign telling drivers to stop",
     [("@", "traffic_sign")]),
    ("traffic_light", "n", 6, ["traffic_light", "traffic_signal", "stoplight"],
     "a visual signal to control the flow of traffic at intersections", []),
    ("smiley", "n", 6, ["smiley", "smiley_face", "smilie"], "a round yellow face that smiles", []),
    ("house", "n", 6, ["house"], "a dwelling that serves as living quarters for one or more families", []),
    ("snowman", "n", 6, ["snowman"], "a figure of a person made of packed snow", []),
    ("polka_dot", "n", 25, ["polka_dot"], "a dot in a pattern of evenly spaced dots", []),
    ("stripe", "n", 25, ["stripe", "streak", "bar"], "a narrow marking of a different color",
     [("+", "v_stripe")]),
    ("sun", "n", 17, ["sun", "Sun"], "the star that is the source of light and heat for the planets", []),
    ("sky", "n", 17, ["sky"], "the atmosphere and outer space as viewed from the earth", []),
    ("night_sky", "n", 17, ["night_sky"], "the sky as seen at night", []),
    ("tree", "n", 20, ["tree"], "a tall perennial woody plant", []),
    ("flower", "n", 20, ["flower", "bloom", "blossom"], "reproductive organ of angiosperm plants", []),
    ("grass", "n", 20, ["grass"], "narrow-leaved green herbage", []),
    ("sand", "n", 27, ["sand"], "a loose material consisting of grains of rock", []),
    ("night", "n", 28, ["night", "nighttime", "dark"], "the time after sunset and before sunrise", []),
    *[(f"n_{c}", "n", 7, [c, c + "ness"] if c not in ("pink", "orange") else [c],
       f"the quality or state of the chromatic color {c}", []) for c in list(COLORS) + ["gray"]],
    ("color_wheel", "n", 6, ["color_wheel", "colour_wheel"], "a circle of colors", []),
    ("a_red", "a", 0, ["red", "reddish", "ruddy", "blood-red"], "having any of numerous bright or strong colors "
     'reminiscent of the color of blood; "a red rose"', [("&", "s_scarlet")]),
    ("s_scarlet", "s", 0, ["scarlet", "vermilion", "orange-red"], "of a color at the end of the spectrum",
     [("&", "a_red")]),
    *[(f"a_{c}", "a", 0, [c], f"of the color {c}", []) for c in COLORS if c != "red"],
    ("a_striped", "a", 0, ["striped", "stripy"], "marked or decorated with stripes", [("+", "stripe")]),
    ("a_dotted", "a", 0, ["dotted", "flecked", "speckled"], "having a pattern of dots", []),
    ("a_checkered", "a", 0, ["checkered", "checked", "chequered"], "having a pattern of squares", []),
    ("a_round", "a", 0, ["round", "circular"], "having a circular shape", []),
    ("a_bright", "a", 0, ["bright"], "emitting or reflecting light readily", []),
    ("a_galore", "s", 0, ["galore(ip)", "aplenty(ip)"], 'in great numbers; "red circles galore"',
     [("&", "a_round")]),
    ("v_draw", "v", 36, ["draw", "depict"], "represent by making a drawing of", [("+", "circle")]),
    ("v_paint", "v", 36, ["paint"], "make a painting of", []),
    ("v_stripe", "v", 35, ["stripe", "streak"], "mark with stripes", [("+", "stripe")]),
    ("v_dot", "v", 35, ["dot", "stud", "constellate"], "scatter or intersperse like dots", []),
    ("v_light_up", "v", 43, ["light_up", "shine"], "become lighted or bright", []),
    ("r_brightly", "r", 2, ["brightly", "bright"], "with brightness", [("\\", "a_bright")]),
    ("r_at_night", "r", 2, ["at_night", "nighttime", "by_night"], "during the night", []),
    ("r_in_the_round", "r", 2, ["in_the_round"], "with the audience all around", []),
]
_WN_FILE = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}


def _write_wordnet(w: World) -> None:
    d = w.wordnet_dir
    d.mkdir(parents=True, exist_ok=True)
    header = "".join(f"  {i} {line}  \n" for i, line in enumerate(_LICENSE, 1))
    pos_of = {s[0]: s[1] for s in _SYNSETS}

    def line(s, offsets):
        key, pos, lex, lemmas, gloss, ptrs = s
        words = " ".join(f"{lemma} 0" for lemma in lemmas)
        ps = "".join(f" {sym} {offsets.get(t, 0):08d} {'a' if pos_of[t] == 's' else pos_of[t]} 0000"
                     for sym, t in ptrs)
        frames = " 01 + 08 00" if pos == "v" else ""
        return f"00000000 {lex:02d} {pos} {len(lemmas):02x} {words} {len(ptrs):03d}{ps}{frames} | {gloss}  \n"

    offsets: dict[str, int] = {}
    for final in (False, True):       # offsets are fixed width, so one pass finds them all
        for name in ("noun", "verb", "adj", "adv"):
            text, pos = header, len(header.encode())
            for s in (s for s in _SYNSETS if _WN_FILE[s[1]] == name):
                offsets[s[0]] = pos
                ln = line(s, offsets)
                ln = f"{pos:08d}" + ln[8:]
                text += ln
                pos += len(ln.encode())
            if final:
                (d / f"data.{name}").write_text(text, encoding="utf-8")
    index: dict[str, dict[str, list[int]]] = {}
    for s in _SYNSETS:
        for lemma in s[3]:
            lem = re.sub(r"\(\w+\)$", "", lemma).lower()
            index.setdefault(_WN_FILE[s[1]], {}).setdefault(lem, []).append(offsets[s[0]])
    for name, lemmas in index.items():
        pos = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}[name]
        rows = [f"{lem} {pos} {len(offs)} 0 {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs) + "  \n"
                for lem, offs in sorted(lemmas.items())]
        (d / f"index.{name}").write_text(header + "".join(rows), encoding="utf-8")
    w.wordnet_lemmas = {name: sorted({re.sub(r"\(\w+\)$", "", lem) for s in _SYNSETS
                                      if _WN_FILE[s[1]] == name for lem in s[3]})
                        for name in ("noun", "verb", "adj", "adv")}


