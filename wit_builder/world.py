"""The small real world every stage's tests and the offline demo run on.

`make_world(out_dir, size, seed, base_url)` writes, under out_dir:

    enwiki-pages-articles.xml.bz2            MediaWiki export (+ a multistream copy and index)
    wordnet/data.{noun,verb,adj,adv}          Princeton WordNet format (+ index.*)
    pageviews-20240101-000000                 Wikimedia hourly pageviews format
    pool/pool.parquet, pool/pool.tsv          url, caption, source_id, license
    pool/truth.parquet                        what each pool row is (scene, kind, expectation)
    eval/<class>/*.jpg, eval/classnames.txt   held-out ImageFolder + zero-shot prompts
    world.json                                the World below, for World.load(out_dir)

Everything is a deterministic function of (size, seed). The concepts are things the
image server (`wit_builder.imageserver`) can draw, so a caption's words are true of
its image. docs/world.md describes the contents and what to expect from them.
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from wit_builder.errors import WitError
from wit_builder.imageserver import (BACKGROUNDS, COLORS, DEFAULT_PX, TEXTURES, THINGS, Scene,
                                     draw_scene, encode)

UNSERVED_BASE_URL = "http://127.0.0.1:9"  # the discard port: refused at once, never leaves the host
EVAL_SEED_BASE = 1_000_000                # pool layouts use seeds below, eval layouts above
PAGEVIEWS_NAME = "pageviews-20240101-000000"


@dataclass(frozen=True)
class Size:
    pool_rows: int
    filler_pages: int
    wiki_scale: int      # mentions of the most frequent concept; rank r gets wiki_scale / r
    talk_pages: int
    eval_per_class: int
    min_freq: int        # a threshold that splits the concepts into frequent and rare
    pageview_min: int


SIZES = {
    "test": Size(pool_rows=300, filler_pages=8, wiki_scale=150, talk_pages=3, eval_per_class=3,
                 min_freq=15, pageview_min=2000),
    "small": Size(1200, 20, 300, 6, 8, 25, 2000),
    "demo": Size(4000, 60, 800, 12, 20, 60, 2000),
}

# Concept words in the order of their frequency in the wiki (rank 1 first).
WIKI_RANK = ["red", "circle", "blue", "square", "star", "green", "triangle", "white", "black",
             "heart", "yellow", "house", "sun", "tree", "cross", "sky", "night", "flower", "diamond",
             "orange", "ring", "purple", "brown", "grass", "hexagon", "pink", "arrow", "striped",
             "stop sign", "traffic light", "sand", "gray", "dotted", "crescent", "pentagon",
             "checkered", "smiley face", "snowman"]
ADJECTIVES = set(COLORS) | {"gray", "striped", "dotted", "checkered"}
SCENE_NOUNS = {"sky", "night", "grass", "sand"}
CONCEPTS = tuple(WIKI_RANK)
MARKUP_ONLY_WORDS = {"plugh": "template", "xyzzy": "ref", "frobnitz": "comment"}
TALK_ONLY_WORD = "quux"
PROMPTS = ["a photo of a {}.", "a drawing of a {}.", "a picture of a {}.",
           "an image showing a {}.", "a {} on a plain background."]


@dataclass
class World:
    """Paths of what make_world wrote, and the facts tests check results against."""
    root: Path
    size: str
    seed: int
    base_url: str
    wiki_dump: Path
    wiki_multistream: Path
    wiki_multistream_index: Path
    wordnet_dir: Path
    pageviews: Path
    pool_parquet: Path
    pool_tsv: Path
    truth: Path
    eval_dir: Path
    image_px: int = DEFAULT_PX
    slow_seconds: float = 3.0
    min_freq: int = 0
    pageview_min: int = 0
    classnames: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    wiki_counts: dict[str, int] = field(default_factory=dict)
    wiki_bigram_counts: dict[str, int] = field(default_factory=dict)
    frequent_concepts: list[str] = field(default_factory=list)
    rare_concepts: list[str] = field(default_factory=list)
    markup_only_words: dict[str, str] = field(default_factory=dict)
    talk_only_words: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    talk_titles: list[str] = field(default_factory=list)
    pageviews_en: dict[str, int] = field(default_factory=dict)
    popular_titles: list[str] = field(default_factory=list)
    wordnet_lemmas: dict[str, list[str]] = field(default_factory=dict)
    pool_kinds: dict[str, int] = field(default_factory=dict)
    thing_counts: dict[str, int] = field(default_factory=dict)

    def save(self) -> None:
        d = {k: (str(v.relative_to(self.root)) if isinstance(v, Path) and k != "root" else v)
             for k, v in asdict(self).items() if k != "root"}
        (self.root / "world.json").write_text(json.dumps(d, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, root: str | Path) -> "World":
        """The World that make_world wrote under `root`."""
        root = Path(root)
        f = root / "world.json"
        if not f.exists():
            raise WitError(f"{f} not found: create the world with make_world({str(root)!r}) first")
        d = json.loads(f.read_text())
        paths = {k for k, t in cls.__annotations__.items() if t == "Path"} - {"root"}
        return cls(root=root, **{k: (root / v if k in paths else v) for k, v in d.items()})


def make_world(out_dir: str | Path, size: str = "small", seed: int = 0,
               base_url: str | None = None) -> World:
    """Write the world of `size` ("test", "small", "demo") under out_dir.

    Pool URLs start with `base_url` (an image server's, e.g. `serve().base_url`); without
    it they point at UNSERVED_BASE_URL and `write_pool(world, base_url)` fixes them later.
    """
    if size not in SIZES:
        raise WitError(f"unknown world size {size!r}: choose one of {', '.join(SIZES)}")
    sz, root = SIZES[size], Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    w = World(root=root, size=size, seed=seed, base_url=base_url or UNSERVED_BASE_URL,
              wiki_dump=root / "enwiki-pages-articles.xml.bz2",
              wiki_multistream=root / "enwiki-pages-articles-multistream.xml.bz2",
              wiki_multistream_index=root / "enwiki-pages-articles-multistream-index.txt.bz2",
              wordnet_dir=root / "wordnet", pageviews=root / PAGEVIEWS_NAME,
              pool_parquet=root / "pool" / "pool.parquet", pool_tsv=root / "pool" / "pool.tsv",
              truth=root / "pool" / "truth.parquet", eval_dir=root / "eval",
              min_freq=sz.min_freq, pageview_min=sz.pageview_min, prompts=list(PROMPTS),
              concepts=list(CONCEPTS), markup_only_words=dict(MARKUP_ONLY_WORDS),
              talk_only_words=[TALK_ONLY_WORD])
    _write_wiki(w, sz, rng)
    _write_pageviews(w, rng)
    _write_wordnet(w)
    _write_eval(w, sz, rng)
    _make_pool_truth(w, sz, rng)
    write_pool(w, w.base_url)
    return w


# ---------------------------------------------------------------------------
# Wikipedia: prose sentences are generated as (plain, wikitext) token pairs, so the
# plain-text word counts are known exactly. Everything else on a page is markup a
# parser must remove (templates, refs, comments) or text whose fate depends on the
# parser (headings, tables, captions, lists); words of the latter are left out of
# wiki_counts.

_T_TEMPLATES = [  # {t}: a thing (singular), {T}: a thing (plural), {a}: an adjective, {s}: a scene noun
    "the {t} is a common motif in the folk art of the valley",
    "a {t} appears on the seal of the old guild",
    "early travellers described a {t} carved above the gate",
    "pupils at the village school learn to draw a {t} with chalk",
    "the museum keeps a painted {t} from the first festival",
    "scholars argue that the {t} stood for the river and the harvest",
    "the festival banner shows a single {t} in the middle",
    "one of the oldest coins carries a {t} on the reverse",
    "many potters of the region decorated their bowls with {T}",
    "a {a} {t} was painted on the door of the town hall",
    "the guild adopted a {a} {t} as its emblem",
    "weavers often placed a {a} {t} at the corner of a rug",
    "in old prints a {t} often stands next to a {t}",
    "the mural shows {T} beneath the {s}",
    "a {t} under the {s} is a favourite subject of the painters",
]
_A_TEMPLATES = [
    "the colour {a} was rare and costly in the early period",
    "dyers made {a} cloth from plants that grew by the river",
    "the costumes of the dancers were mostly {a}",
    "according to the archive the old flag was {a} and {a}",
    "the walls of the chapel were once {a}",
]
_S_TEMPLATES = [
    "painters of the valley liked to show the {s} in the evening",
    "the {s} plays a part in many of the local songs",
    "children were told stories about the {s}",
]
_FILLER = [
    "in {year} the council of {place} approved a new charter",
    "the archive in {place} holds letters written in {year}",
    "{person} wrote about the valley in {year}",
    "the first bridge over the river was built in {year}",
    "trade with {place} grew quickly after {year}",
    "the old road to {place} is still used by farmers",
    "{person} later moved to {place} and opened a workshop",
    "the population of the valley doubled between {year} and {year}",
    "most of the early records were lost in a fire",
    "the guild met every spring in the hall at {place}",
]
_PLACES = ["Harrow Ford", "Port Elsmere", "Tansy", "Brackwater", "Ollington", "Kestrel Bay"]
_PEOPLE = ["Marta Quill", "Oskar Vell", "Ines Darrow", "Tomas Brell", "Agathe Lunn"]
_FILLER_TITLES = ["Geometry", "Heraldry", "Tessellation", "Color theory", "Folk art", "Harrow Ford",
                  "Port Elsmere", "Marta Quill", "Oskar Vell", "Brackwater", "Kestrel Bay",
                  "Möbius strip", "Weaving", "Pottery", "Mural", "Guild", "Chapel of Tansy",
                  "Ollington Bridge", "Printmaking", "Calligraphy"]
_SEE_ALSO = ["Geometry", "Heraldry", "Tessellation", "Folk art", "Printmaking"]


def _plural(thing: str) -> str:
    return thing + ("es" if thing.endswith(("s", "x")) else "s")


def _title(word: str) -> str:
    return word[0].upper() + word[1:]


def _tokens(text: str) -> list[str]:
    """Plain-text tokenisation behind wiki_counts: runs of letters or digits."""
    return re.findall(r"[^\W_]+", text)


class _Wiki:
    """Builds pages; tallies the plain text of prose and the words of parser-dependent text."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.prose: Counter[str] = Counter()
        self.bigrams: Counter[str] = Counter()
        self.aside: set[str] = set()
        self.traps: Counter[str] = Counter()

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def concept(self, word: str, plural: bool = False) -> tuple[str, str]:
        """(plain, wikitext) of one concept mention, linked or emphasised at random."""
        plain = _plural(word) if plural else word
        r = self.rng.random()
        if word in ADJECTIVES or r < .45:
            wiki = plain if r < .8 else (f"'''{plain}'''" if r < .9 else f"''{plain}''")
        elif plural and r < .7:
            wiki = f"[[{word}]]{plain[len(word):]}"          # link trail: [[circle]]s
        elif r < .8:
            wiki = f"[[{_title(word)}|{plain}]]"
        else:
            wiki = f"[[{plain}]]"
        return plain, wiki

    def sentence(self, template: str, fills: dict[str, list[str]]) -> str:
        """Fill a template; tally its plain text; return its wikitext."""
        plain, wiki = [], []
        for tok in template.split():
            slot = re.fullmatch(r"\{([tTas])\}", tok)
            if slot:
                word = fills[slot[1]].pop(0)
                p, w = self.concept(word, plural=slot[1] == "T")
            elif tok in ("{year}", "{place}", "{person}"):
                p = str(int(self.rng.integers(1500, 1950))) if tok == "{year}" else \
                    self.pick(_PLACES if tok == "{place}" else _PEOPLE)
                w = f"[[{p}]]" if tok != "{year}" and self.rng.random() < .3 else p
            else:
                p = w = tok
            plain.append(p)
            wiki.append(w)
        for i in range(len(plain) - 1):       # a / an before a vowel
            if plain[i] == "a" and plain[i + 1][0] in "aeiou":
                plain[i] = wiki[i] = "an"
        plain[0], wiki[0] = _title(plain[0]), _title(wiki[0])
        toks = _tokens(" ".join(plain))
        self.prose.update(toks)
        self.bigrams.update(f"{a} {b}" for a, b in zip(toks, toks[1:]))
        return " ".join(wiki) + "."

    def aside_text(self, text: str) -> str:
        self.aside.update(_tokens(text))
        return text

    def trap(self, word: str, n: int = 2) -> str:
        self.traps[word] += n
        return " ".join([word] * n)


def _prose_plan(sz: Size, rng: np.random.Generator) -> list[tuple[str, dict[str, list[str]]]]:
    """(template, fills) for every concept sentence: the concept counts follow Zipf."""
    mentions = []
    for rank, word in enumerate(WIKI_RANK, 1):
        kind = "a" if word in ADJECTIVES else ("s" if word in SCENE_NOUNS else "t")
        mentions += [(kind, word)] * max(2, round(sz.wiki_scale / rank))
        if kind == "t":
            mentions += [("T", word)] * max(1, round(sz.wiki_scale / rank / 8))
    queue = [mentions[i] for i in rng.permutation(len(mentions))]
    pools = {"t": _T_TEMPLATES, "T": _T_TEMPLATES, "a": _A_TEMPLATES, "s": _S_TEMPLATES}
    plan = []
    while queue:
        kind, word = queue.pop()
        options = [t for t in pools[kind] if "{" + kind + "}" in t]
        template = options[int(rng.integers(len(options)))]
        fills: dict[str, list[str]] = {k: [] for k in "tTas"}
        fills[kind].append(word)
        slots = re.findall(r"\{([tTas])\}", template)
        slots.remove(kind)
        taken = []
        for slot in slots:   # the template's other slots take later mentions of that kind
            j = next((i for i in range(len(queue) - 1, -1, -1)
                      if queue[i][0] == slot and queue[i][1] not in fills[slot]), None)
            if j is None:    # none left: give them back and use a one-slot template
                queue += taken
                single = [t for t in pools[kind] if re.findall(r"\{([tTas])\}", t) == [kind]]
                template = single[int(rng.integers(len(single)))]
                fills = {k: [] for k in "tTas"} | {kind: [word]}
                break
            taken.append(queue.pop(j))
            fills[slot].append(taken[-1][1])
        plan.append((template, fills))
    return plan


def _page_text(wk: _Wiki, title: str, sentences: list[str], concept_page: bool, n: int) -> str:
    """The wikitext of one article around its prose sentences."""
    rng = wk.rng
    head = [f"{{{{Short description|{wk.trap('plugh', 1)} page}}}}"]
    if concept_page:
        head.append("{{Infobox shape\n| name = " + title + f"\n| image = Emblem {n}.svg\n"
                    f"| motto = {{{{nowrap|{wk.trap('plugh')}}}}}\n}}}}")
    paras, i, named = [], 0, False
    while i < len(sentences):
        k = int(rng.integers(2, 6))
        chunk = sentences[i:i + k]
        i += k
        text = " ".join(chunk)
        if rng.random() < .6:   # a named ref: defined once, then reused as <ref name=... />
            text += f'<ref name="k{n}" />' if named else \
                f'<ref name="k{n}">Kessler, A. (1911). \'\'{wk.trap("xyzzy", 1)} atlas\'\'. ' \
                f'Harrow Press. {wk.trap("xyzzy", 1)}.</ref>'
            named = True
        if rng.random() < .3:
            text += f"<ref>{{{{cite web |url=https://example.org/{n} |title={wk.trap('plugh', 1)}}}}}</ref>"
        if rng.random() < .3:
            text += f"{{{{citation needed|date=May 2020|reason={wk.trap('plugh', 1)}}}}}"
        paras.append(text)
    body = []
    headings = ["History", "Symbolism", "Usage", "Construction", "Variants"]
    for j, para in enumerate(paras):
        if j and j % 2 == 0:
            level = "==" if j % 4 == 2 else "==="
            body.append(f"{level} {wk.aside_text(headings[(j // 2) % len(headings)])} {level}")
        body.append(para)
        if j == 1:
            body.append(f"[[File:Emblem {n}.svg|thumb|220px|{wk.aside_text('Diagram of the emblem')}]]")
            body.append(f"<!-- {wk.trap('frobnitz')}: keep this paragraph short -->")
        if j == 2:
            body.append('{| class="wikitable"\n|+ ' + wk.aside_text("Properties") + "\n! "
                        + wk.aside_text("Name !! Sides !! Year") + "\n|-\n| "
                        + wk.aside_text(f"Emblem {n}&nbsp;A || {n % 9} || {1800 + n}") + "\n|}")
    if len(paras) > 3:
        body.append("<gallery>\nEmblem 1.svg|" + wk.aside_text("First emblem") + "\n</gallery>")
    tail = ["== See also =="] + [f"* [[{wk.aside_text(t)}]]" for t in _SEE_ALSO[: 2 + n % 3]]
    tail += ["", "== References ==", "{{Reflist}}", "", "== External links ==",
             f"* [https://example.org/archive/{n} {wk.aside_text('Official archive')}]", "",
             f"<!-- {wk.trap('frobnitz')} -->", "__NOTOC__", f"{{{{DEFAULTSORT:{title}}}}}",
             f"[[Category:{wk.aside_text('Plane figures' if concept_page else 'Valley topics')}]]"]
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n\n" + "\n".join(tail) + "\n"


def _talk_text(wk: _Wiki, title: str, concept: str) -> str:
    sig = "[[User:Alba|Alba]] ([[User talk:Alba|talk]]) 10:02, 3 March 2021 (UTC)"
    return (f"{{{{WikiProject Visual arts|class=C}}}}\n== Merge proposal ==\n"
            f"Should the {concept} article say more about {wk.trap(TALK_ONLY_WORD, 3)}? {sig}\n"
            f":I agree, a {concept} deserves a section on {wk.trap(TALK_ONLY_WORD, 3)}. ~~~~\n")


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
    wk = _Wiki(rng)
    concept_titles = [_title(c) for c in WIKI_RANK]
    filler_titles = [_FILLER_TITLES[i % len(_FILLER_TITLES)] + ("" if i < len(_FILLER_TITLES) else f" ({i})")
                     for i in range(sz.filler_pages)]
    titles = concept_titles + filler_titles
    # Every concept page opens with its own concept; the rest of the prose is shared out.
    plan = _prose_plan(sz, rng)
    leads: dict[str, str] = {}
    rest = []
    for template, fills in plan:
        words = fills["t"] + fills["a"] + fills["s"]
        own = next((x for x in words if _title(x) in concept_titles and _title(x) not in leads), None)
        if own is not None and len(words) == 1:
            leads[_title(own)] = wk.sentence(template, fills)
        else:
            rest.append(wk.sentence(template, fills))
    n_filler = max(len(rest), len(titles))
    rest += [wk.sentence(_FILLER[int(rng.integers(len(_FILLER)))], {}) for _ in range(n_filler)]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    share = np.array_split(np.arange(len(rest)), len(titles))
    pages: list[tuple[str, int, str, str | None]] = []
    for n, (title, idx) in enumerate(zip(titles, share)):
        sentences = ([leads[title]] if title in leads else []) + [rest[i] for i in idx]
        pages.append((title, 0, _page_text(wk, title, sentences, title in concept_titles, n), None))
    redirects = {}
    for c in WIKI_RANK[:12]:
        src = _plural(_title(c)) if c not in ADJECTIVES else f"{_title(c)} (colour)"
        redirects[src] = _title(c)
    redirects["Smiley"] = "Smiley face"
    for j, (src, dst) in enumerate(redirects.items()):
        word = "#redirect" if j % 5 == 4 else "#REDIRECT"
        pages.append((src, 0, f"{word} [[{dst}]]\n\n{{{{Redirect category shell|\n{{{{R from "
                               f"{'plural' if src.endswith('s') else 'alternative name'}}}}}\n}}}}\n", dst))
    talk = [f"Talk:{t}" for t in concept_titles[:sz.talk_pages]]
    pages += [(t, 1, _talk_text(wk, t, WIKI_RANK[i]), None) for i, t in enumerate(talk)]
    while wk.traps[TALK_ONLY_WORD] < 3 * sz.min_freq:   # enough that counting talk pages shows
        t = f"{talk[len(talk) % sz.talk_pages]}/Archive {len(talk)}"
        pages.append((t, 1, _talk_text(wk, t, "flower"), None))
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
        views[_title(c)] = int(60000 / rank ** 1.3)
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


# ---------------------------------------------------------------------------
# Scenes, captions and the pool.

_BAD_PAIRS = {("white", "white"), ("black", "black"), ("black", "night"), ("green", "grass"),
              ("yellow", "sand"), ("brown", "sand"), ("blue", "night"), ("white", "sky"),
              ("orange", "sand")}
_BG_WEIGHTS = {"white": .35, "sky": .15, "grass": .12, "black": .1, "night": .1, "sand": .1, "gray": .08}


def _zipf(n: int, s: float) -> np.ndarray:
    p = 1 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _sample_scene(rng: np.random.Generator, seed: int, thing: str | None = None) -> Scene:
    things, colors = list(THINGS), list(COLORS)
    thing = thing or things[rng.choice(len(things), p=_zipf(len(things), 1.15))]
    bgs = list(_BG_WEIGHTS)
    while True:
        color = THINGS[thing] or colors[rng.choice(len(colors), p=_zipf(len(colors), .8))]
        bg = bgs[rng.choice(len(bgs), p=list(_BG_WEIGHTS.values()))]
        if (color, bg) not in _BAD_PAIRS and BACKGROUNDS[bg] != COLORS[color]:
            break
    count = int(rng.choice([1, 2, 3, 4, 5], p=[.45, .2, .15, .1, .1]))
    texture = "plain" if THINGS[thing] else str(rng.choice(TEXTURES, p=[.55, .2, .15, .1]))
    return Scene(thing, color, count, texture, bg, seed)


_NUMBERS = ["one", "two", "three", "four", "five"]
_BG_PHRASES = {"white": ["on a white background", "on white", "isolated on white"],
               "black": ["on a black background", "on black"],
               "gray": ["on a gray background", "on gray"],
               "sky": ["against a blue sky", "in the sky", "under a clear sky"],
               "grass": ["on the grass", "on green grass", "in the grass"],
               "sand": ["on the sand", "on sand", "in the sand"],
               "night": ["at night", "in the night sky", "against the night sky"]}
_TEX_ADJ = {"striped": ["striped"], "dotted": ["dotted", "polka dot"], "checkered": ["checkered"]}
_TEX_WITH = {"striped": ["with stripes"], "dotted": ["with dots", "with polka dots"],
             "checkered": ["with a checkered pattern"]}
_PREFIXES = ["", "", "", "A photo of ", "clip art: ", "Stock picture #{n} - ", "Here you can see ",
             "vector icon of ", "my kid drew ", "Illustration: ", "Picture of ", "Image: "]
_SUFFIXES = ["", "", ".", "!", " :)", ", free download", " | HD wallpaper", " (2019)"]


def caption_of(scene: Scene, rng: np.random.Generator) -> str:
    """A sentence saying what the scene shows, worded at random (every word is true)."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    n = scene.count
    words = [pick(["a", "a", "one", "a single"]) if n == 1 else
             (str(n) if rng.random() < .2 else _NUMBERS[n - 1])]
    tex_after = None
    if scene.texture != "plain" and rng.random() < .9:
        if rng.random() < .5:
            words.append(pick(_TEX_ADJ[scene.texture]))
        else:
            tex_after = pick(_TEX_WITH[scene.texture])
    if rng.random() < (.3 if THINGS[scene.thing] else .9):
        words.append(scene.color)
    words.append(scene.thing if n == 1 else _plural(scene.thing))
    if tex_after:
        words.append(tex_after)
    if rng.random() < .7:
        if rng.random() < .3:
            words[-1] += ","
        words.append(pick(_BG_PHRASES[scene.background]))
    text = " ".join(words)
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    text = pick(_PREFIXES).format(n=int(rng.integers(100, 9999))) + text + pick(_SUFFIXES)
    r = rng.random()
    return text.upper() if r < .03 else (_title(text) if r < .3 else text)


def mentions_of(caption: str) -> list[str]:
    """The concept words a caption mentions (singular or plural, any case)."""
    return [c for c in CONCEPTS if re.search(rf"\b{re.escape(c)}(?:e?s)?\b", caption, re.I)]


# kind -> (share of the pool, what a fetch/curate should make of it). Each kind gets at
# least one row; "ok" takes what is left.
KINDS: dict[str, tuple[float, str]] = {
    "ok": (0, "ok"), "png": (.04, "ok"), "webp": (.04, "ok"), "redirect": (.01, "ok"),
    "exact_dup": (.03, "drop"), "near_dup_resized": (.02, "drop"), "near_dup_quality": (.02, "drop"),
    "eval_leak": (.004, "drop"), "tiny_1px": (.005, "drop"), "tiny_8px": (.005, "drop"),
    "short_caption": (.015, "drop"), "no_concept": (.015, "ok"),
    "flaky_429": (.01, "retry"), "slow": (.004, "slow"), "truncated": (.005, "broken"),
    "http_404": (.02, "fail"), "http_500": (.01, "fail"), "http_429": (.005, "fail"),
    "html": (.003, "fail"), "html_as_image": (.004, "fail"), "bomb": (.002, "fail"),
    "redirect_loop": (.003, "fail"), "noai": (.003, "fail"), "noimageai": (.003, "fail"),
    "no_url": (.005, "fail"), "non_http": (.005, "fail"),
}
_NON_HTTP = ["ftp://127.0.0.1/pub/{spec}.jpg", "file:///etc/passwd", "data:image/gif;base64,R0lGODlhAQABAAAAACw=",
             "mailto:someone@example.org", "javascript:void(0)", "//127.0.0.1:9/img/{spec}.jpg"]
_SHORT = ["{thing}", "{color} {thing}", "a {thing}"]
_NO_CONCEPT = ["IMG_2031.JPG", "untitled", "my holiday photos", "click to enlarge", "DSC 0042",
               "Photo by our staff, all rights reserved", "image", "Lorem ipsum dolor sit amet"]


def _make_pool_truth(w: World, sz: Size, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = sz.pool_rows
    counts = {k: max(1, round(share * n)) for k, (share, _) in KINDS.items() if k != "ok"}
    counts["ok"] = n - sum(counts.values())
    seeds = iter(rng.permutation(EVAL_SEED_BASE)[:n].tolist())
    rows: list[dict] = []

    def add(kind, scene, path, caption=None, dup_of=None):
        caption = caption_of(scene, rng) if caption is None and scene else caption
        rows.append({"kind": kind, "expect": KINDS[kind][1], "path": path, "caption": caption,
                     "scene": scene.spec if scene else None, "thing": scene.thing if scene else None,
                     "color": scene.color if scene else None, "count": scene.count if scene else None,
                     "texture": scene.texture if scene else None,
                     "background": scene.background if scene else None, "dup_of": dup_of})

    for _ in range(counts["ok"]):
        s = _sample_scene(rng, next(seeds))
        add("ok", s, s.path())
    originals = list(range(len(rows)))
    eval_specs = sorted(p.stem for p in w.eval_dir.glob("*/*.jpg"))
    eval_scenes = {p.stem: p.parent.name for p in w.eval_dir.glob("*/*.jpg")}
    for kind, k in counts.items():
        for j in range(k if kind != "ok" else 0):
            s = _sample_scene(rng, next(seeds))
            if kind in ("png", "webp"):
                add(kind, s, s.path(kind))
            elif kind in ("exact_dup", "near_dup_resized", "near_dup_quality"):
                i = originals[int(rng.integers(len(originals)))]
                s = Scene.parse(rows[i]["scene"])
                path = {"exact_dup": f"/mirror/{j}{s.path()}", "near_dup_resized": s.path(px=w.image_px * 3 // 4),
                        "near_dup_quality": s.path(quality=30)}[kind]
                add(kind, s, path, dup_of=i)
            elif kind == "eval_leak":
                spec = eval_specs[int(rng.integers(len(eval_specs)))]
                s = Scene.parse(spec)
                add(kind, s, s.path())
                assert eval_scenes[spec] == s.thing
            elif kind == "tiny_1px":
                add(kind, s, s.path(px=1))
            elif kind == "tiny_8px":
                add(kind, s, s.path(px=8))
            elif kind == "short_caption":
                add(kind, s, s.path(), _SHORT[j % len(_SHORT)].format(thing=s.thing, color=s.color))
            elif kind == "no_concept":
                add(kind, s, s.path(), _NO_CONCEPT[j % len(_NO_CONCEPT)])
            else:
                path = {"redirect": f"/redirect{s.path()}", "flaky_429": f"/flaky/1{s.path()}",
                        "slow": f"/slow/{w.slow_seconds:g}{s.path()}", "truncated": f"/truncated{s.path()}",
                        "http_404": f"/status/404{s.path()}", "http_500": f"/status/500{s.path()}",
                        "http_429": f"/status/429{s.path()}", "html": f"/html/{s.spec}.jpg",
                        "html_as_image": f"/html-as-image/{s.spec}.jpg",
                        "bomb": f"/bomb/30000x30000/{s.spec}.png", "redirect_loop": f"/loop/{j}/a",
                        "noai": f"/robots/noai{s.path()}", "noimageai": f"/robots/noimageai{s.path()}",
                        "no_url": None if j % 2 == 0 else "",
                        "non_http": _NON_HTTP[j % len(_NON_HTTP)].format(spec=s.spec)}[kind]
                add(kind, s, path)
    order = rng.permutation(len(rows))
    remap = {int(old): new for new, old in enumerate(order)}
    rows = [rows[i] for i in order]
    for r in rows:
        r["dup_of"] = remap[r["dup_of"]] if r["dup_of"] is not None else None
        r["mentions"] = mentions_of(r["caption"] or "")
    for i, r in enumerate(rows):
        r["row"] = i
        r["source_id"] = f"src-{w.seed}-{i:06d}"
        r["license"] = [None, "cc-by-4.0", "cc0-1.0", "cc-by-sa-4.0"][int(rng.integers(4))]
    w.truth.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), w.truth)
    w.pool_kinds = dict(Counter(r["kind"] for r in rows))
    w.thing_counts = dict(Counter(r["thing"] for r in rows if r["thing"]).most_common())


def write_pool(world: World, base_url: str) -> tuple[Path, Path]:
    """(Re)write the pool's Parquet and TSV with image URLs on `base_url`; returns both paths.

    Rows whose truth path is not a server path (non-http URLs, empty URLs) keep it as is.
    Also records base_url in the truth table (`url` column) and world.json.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = base_url.rstrip("/")
    truth = pq.read_table(world.truth)
    urls = [base + p if p and p.startswith("/") and not p.startswith("//") else p
            for p in truth.column("path").to_pylist()]
    if "url" in truth.column_names:
        truth = truth.drop_columns(["url"])
    truth = truth.append_column("url", pa.array(urls, pa.string()))
    pq.write_table(truth, world.truth)
    pool = pa.table({"url": pa.array(urls, pa.string()), "caption": truth.column("caption"),
                     "source_id": truth.column("source_id"), "license": truth.column("license")})
    pq.write_table(pool, world.pool_parquet)
    with open(world.pool_tsv, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        out.writerow(pool.column_names)
        for row in zip(*(pool.column(c).to_pylist() for c in pool.column_names)):
            out.writerow(["" if v is None else v for v in row])
    world.base_url = base
    world.save()
    return world.pool_parquet, world.pool_tsv


# ---------------------------------------------------------------------------
# Held-out evaluation images: ImageFolder layout, one class per thing.

def _write_eval(w: World, sz: Size, rng: np.random.Generator) -> None:
    w.classnames = sorted(THINGS)
    seed = EVAL_SEED_BASE + 1000 * w.seed
    for thing in w.classnames:
        d = w.eval_dir / thing
        d.mkdir(parents=True, exist_ok=True)
        for _ in range(sz.eval_per_class):
            s = _sample_scene(rng, seed, thing)
            seed += 1
            (d / f"{s.spec}.jpg").write_bytes(encode(draw_scene(s, w.image_px), "jpg"))
    (w.eval_dir / "classnames.txt").write_text("\n".join(w.classnames) + "\n")
    (w.eval_dir / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (w.eval_dir / "zeroshot.json").write_text(json.dumps({"classnames": w.classnames, "templates": PROMPTS}, indent=1))


__all__ = ["World", "make_world", "write_pool", "caption_of", "mentions_of", "SIZES", "KINDS",
           "CONCEPTS", "UNSERVED_BASE_URL", "EVAL_SEED_BASE"]
