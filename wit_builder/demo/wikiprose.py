"""The generated world's Wikipedia prose and markup: the concept vocabulary, the sentence
templates, and the page generator behind `wit_builder.demo.wikiworld`'s dump writer.

Prose sentences are generated as (plain, wikitext) token pairs, so the plain-text word
counts are known exactly (`Wiki` tallies them); the rest of a page is markup a parser
must remove or text whose fate depends on the parser (`page_text`, `talk_text`).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from wit_builder.demo.drawing import COLORS
from wit_builder.demo.worldspec import Size

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
FILLER = [
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
FILLER_TITLES = ["Geometry", "Heraldry", "Tessellation", "Color theory", "Folk art", "Harrow Ford",
                  "Port Elsmere", "Marta Quill", "Oskar Vell", "Brackwater", "Kestrel Bay",
                  "Möbius strip", "Weaving", "Pottery", "Mural", "Guild", "Chapel of Tansy",
                  "Ollington Bridge", "Printmaking", "Calligraphy"]
_SEE_ALSO = ["Geometry", "Heraldry", "Tessellation", "Folk art", "Printmaking"]


def plural_of(thing: str) -> str:
    return thing + ("es" if thing.endswith(("s", "x")) else "s")


def title_case(word: str) -> str:
    return word[0].upper() + word[1:]


def _tokens(text: str) -> list[str]:
    """Plain-text tokenisation behind wiki_counts: runs of letters or digits."""
    return re.findall(r"[^\W_]+", text)


class Wiki:
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
        plain = plural_of(word) if plural else word
        r = self.rng.random()
        if word in ADJECTIVES or r < .45:
            wiki = plain if r < .8 else (f"'''{plain}'''" if r < .9 else f"''{plain}''")
        elif plural and r < .7:
            wiki = f"[[{word}]]{plain[len(word):]}"          # link trail: [[circle]]s
        elif r < .8:
            wiki = f"[[{title_case(word)}|{plain}]]"
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
        plain[0], wiki[0] = title_case(plain[0]), title_case(wiki[0])
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


def prose_plan(sz: Size, rng: np.random.Generator) -> list[tuple[str, dict[str, list[str]]]]:
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


def page_text(wk: Wiki, title: str, sentences: list[str], concept_page: bool, n: int) -> str:
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


def talk_text(wk: Wiki, title: str, concept: str) -> str:
    sig = "[[User:Alba|Alba]] ([[User talk:Alba|talk]]) 10:02, 3 March 2021 (UTC)"
    return (f"{{{{WikiProject Visual arts|class=C}}}}\n== Merge proposal ==\n"
            f"Should the {concept} article say more about {wk.trap(TALK_ONLY_WORD, 3)}? {sig}\n"
            f":I agree, a {concept} deserves a section on {wk.trap(TALK_ONLY_WORD, 3)}. ~~~~\n")
