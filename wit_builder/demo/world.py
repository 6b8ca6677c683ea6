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
image server (`wit_builder.demo.imageserver`) can draw, so a caption's words are true of
its image. docs/world.md describes the contents and what to expect from them.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from wit_builder.demo.drawing import BACKGROUNDS, COLORS, TEXTURES, THINGS, Scene, draw_scene, encode
from wit_builder.demo.wikiprose import (  # noqa: F401
    ADJECTIVES,
    CONCEPTS,
    MARKUP_ONLY_WORDS,
    SCENE_NOUNS,
    TALK_ONLY_WORD,
    WIKI_RANK,
)
from wit_builder.demo.wikiprose import plural_of as _plural
from wit_builder.demo.wikiprose import title_case as _title
from wit_builder.demo.wikiworld import _write_pageviews, _write_wiki, _write_wordnet
from wit_builder.demo.worldspec import SIZES, Size, World  # noqa: F401 (the world's types, here too)
from wit_builder.errors import WitError

UNSERVED_BASE_URL = "http://127.0.0.1:9"  # the discard port: refused at once, never leaves the host
EVAL_SEED_BASE = 1_000_000                # pool layouts use seeds below, eval layouts above
PAGEVIEWS_NAME = "pageviews-20240101-000000"


PROMPTS = ["a photo of a {}.", "a drawing of a {}.", "a picture of a {}.",
           "an image showing a {}.", "a {} on a plain background."]


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
