"""Benchmark `wit-build queries`: MB of wikitext per second per core, dump to counts.

Generates (once, cached in benchmarks/out/) a MediaWiki XML dump of ~64 MB of wikitext
with the markup mix of real articles (infoboxes, nested templates, refs with cite
templates, tables, file links, categories, links, entities, non-ASCII text), then in
the same run measures:

- baseline: one Python process, bz2 stream -> Counter over a regex split (`\\w+`) of the
  whole XML: no markup stripping, no namespaces, no bigrams;
- wit: `wit-build queries` counting (bz2 split at block boundaries, pages, markup
  stripping, words and bigrams, Parquet per chunk) under Ray on every core, and with
  one worker.

    .venv/bin/python benchmarks/bench_queries.py [--mb 64] [--out benchmarks/out]
"""
from __future__ import annotations

import argparse
import bz2
import itertools
import json
import os
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

SYL = ["ka", "lo", "mi", "ne", "ra", "to", "su", "ve", "bi", "do", "fa", "gu", "pe", "zo", "ri",
       "an", "el", "or", "us", "im", "é", "ö", "ñ"]
COMMON = ("the of and in a to was is for on as by with he at from his an were are which this also be "
          "or had first one their its new after who they have her she two been other when there all "
          "during into school time may years more most only over city some world would where later up "
          "such used many can state about national out known university united then made").split()


class Vocabulary:
    def __init__(self, rnd: random.Random, size: int = 200_000):
        words = COMMON + ["".join(rnd.choice(SYL) for _ in range(rnd.randint(1, 4))) for _ in range(size)]
        self.words = words
        self.cum = list(itertools.accumulate(1 / (i + 1) ** 1.05 for i in range(len(words))))
        self.rnd = rnd

    def take(self, n: int) -> list[str]:
        return self.rnd.choices(self.words, cum_weights=self.cum, k=n)


def sentence(v: Vocabulary) -> str:
    rnd, out = v.rnd, []
    for w in v.take(rnd.randint(6, 28)):
        r = rnd.random()
        out.append(f"[[{w.capitalize()} (thing)|{w}]]" if r < 0.04 else f"[[{w}]]" if r < 0.07 else
                   f"'''{w}'''" if r < 0.08 else f"''{w}''" if r < 0.09 else w)
    s = " ".join(out)
    s = s[0].upper() + s[1:] + rnd.choice([".", ".", ".", ",", ";", "&nbsp;—"])
    if rnd.random() < 0.25:
        s += ('<ref name="r%d">{{cite web |url=https://example.org/%d |title=%s |work=%s '
              '|access-date=2001-01-01}}</ref>' % (rnd.randint(1, 9), rnd.randint(1, 10 ** 6),
                                                  " ".join(v.take(4)), " ".join(v.take(2))))
    elif rnd.random() < 0.05:
        s += '<ref name="r%d" />' % rnd.randint(1, 9)
    if rnd.random() < 0.05:
        s += " {{convert|%d|km|mi|abbr=on}}" % rnd.randint(1, 999)
    return s


def article(v: Vocabulary, i: int) -> str:
    rnd = v.rnd
    parts = ["{{Short description|%s}}\n{{Infobox settlement\n| name = %s\n| image = %s.jpg\n"
             "| population = {{formatnum:%d}}\n| area = {{convert|%d|km2}}\n| coordinates = "
             "{{coord|%d|N|%d|E|display=title}}\n}}" % (" ".join(v.take(5)), " ".join(v.take(2)),
                                                       v.take(1)[0], rnd.randint(1, 10 ** 6),
                                                       rnd.randint(1, 999), rnd.randint(0, 89),
                                                       rnd.randint(0, 179))]
    for _ in range(rnd.randint(2, 7)):
        parts.append("== %s ==" % " ".join(v.take(2)).title())
        for _ in range(rnd.randint(1, 4)):
            parts.append(" ".join(sentence(v) for _ in range(rnd.randint(2, 7))))
        if rnd.random() < 0.25:
            parts.append("[[File:%s %d.jpg|thumb|upright|A [[%s]] near %s]]" % (v.take(1)[0], i, v.take(1)[0],
                                                                                 " ".join(v.take(3))))
        if rnd.random() < 0.15:
            rows = "\n|-\n".join("| %s || %d || {{flag|%s}}" % (" ".join(v.take(2)), rnd.randint(1, 999),
                                                              v.take(1)[0]) for _ in range(6))
            parts.append('{| class="wikitable sortable"\n! Name !! Value !! Flag\n|-\n' + rows + "\n|}")
        if rnd.random() < 0.2:
            parts.append("\n".join("* " + " ".join(v.take(6)) for _ in range(4)))
    parts.append("<!-- maintenance note -->\n== References ==\n{{Reflist}}\n== External links ==\n"
                 "* [https://example.org/%d Official site]\n{{Authority control}}\n" % i
                 + "\n".join("[[Category:%s]]" % " ".join(v.take(2)).title() for _ in range(3)))
    return "\n\n".join(parts)


def make_dump(path: Path, mb: float, seed: int = 0) -> dict:
    """Write a bz2 pages-articles dump with about `mb` MB of wikitext."""
    rnd = random.Random(seed)
    v = Vocabulary(rnd)
    wikitext = pages = 0
    tmp = path.with_suffix(".tmp")
    with bz2.open(tmp, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" '
                'xml:lang="en">\n  <siteinfo>\n    <sitename>Wikipedia</sitename>\n  </siteinfo>\n')
        while wikitext < mb * 1e6:
            pages += 1
            if pages % 17 == 0:   # talk pages and redirects, as in a real dump
                ns, text = (1, "Talk text ~~~~") if pages % 2 else (0, "#REDIRECT [[Elsewhere]]")
            else:
                ns, text = 0, article(v, pages)
                wikitext += len(text.encode())
            f.write(f"  <page>\n    <title>Page {pages}</title>\n    <ns>{ns}</ns>\n    <id>{pages}</id>\n"
                    f"    <revision>\n      <id>{pages * 7}</id>\n      <model>wikitext</model>\n"
                    f"      <format>text/x-wiki</format>\n      <text bytes=\"{len(text)}\" "
                    f"xml:space=\"preserve\">{escape(text)}</text>\n    </revision>\n  </page>\n")
        f.write("</mediawiki>\n")
    tmp.rename(path)
    return {"pages": pages, "wikitext_bytes": wikitext}


def baseline(path: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, distinct words) for one process: bz2 stream -> Counter over
    re.findall(r"\\w+")."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    counts: Counter = Counter()
    word = re.compile(r"\w+")
    rest = ""
    with bz2.open(path, "rt", encoding="utf-8") as f:
        while piece := f.read(1 << 20):
            piece = rest + piece
            cut = piece.rfind("\n") + 1
            counts.update(word.findall(piece, 0, cut))
            rest = piece[cut:]
    counts.update(word.findall(rest))
    return time.perf_counter() - t0, time.process_time() - cpu0, len(counts)


def wit(path: Path, build: Path, workers: int, chunk_mb: float) -> dict:
    from wit_builder.stages.queries import queries
    shutil.rmtree(build, ignore_errors=True)
    t0 = time.perf_counter()
    res = queries.run(queries.Config(wiki=[str(path)], wordnet="none", workers=workers,
                                     chunk_mb=chunk_mb), build)
    return {"stage_seconds": time.perf_counter() - t0, **res.summary["input"], "entries": res.rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64, help="MB of wikitext to generate")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out"))
    ap.add_argument("--chunk-mb", type=float, default=2.0)
    ap.add_argument("--skip-one-worker", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest counts "
                    "(a shared machine makes single runs noisy)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dump = out / f"enwiki-bench-{args.mb:g}mb-pages-articles.xml.bz2"
    meta = dump.with_suffix(".json")
    if not dump.exists() or not meta.exists():
        print(f"generating {dump} ...", flush=True)
        t0 = time.perf_counter()
        meta.write_text(json.dumps(make_dump(dump, args.mb)))
        print(f"  {time.perf_counter() - t0:.0f} s", flush=True)
    info = json.loads(meta.read_text())
    mb = info["wikitext_bytes"] / 1e6
    print(f"dump: {dump.stat().st_size / 1e6:.1f} MB bz2, {mb:.1f} MB wikitext in {info['pages']:,} pages; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    base_s, base_cpu, base_words = min(baseline(dump) for _ in range(args.repeat))
    from wit_builder.build.cluster import cpus, ensure_ray
    ensure_ray()                       # started before timing: counting is what is measured

    def best(workers: int) -> dict:
        return min((wit(dump, out / "bench-build", workers, args.chunk_mb) for _ in range(args.repeat)),
                   key=lambda r: r["counting_seconds"])

    cores = cpus()
    runs = [("wit, all cores", cores, best(0))]
    if not args.skip_one_worker:
        runs.append(("wit, one worker", 1, best(1)))
    # Wall clock per core = MB / seconds / cores used. The machine may be shared, so the
    # CPU time the work itself took (MB per CPU-second) is shown too: it is what one
    # core does when it is not shared.
    rows = [("baseline: Counter(re.findall), one process", 1, base_s, base_cpu, base_s)]
    rows += [(name, c, r["counting_seconds"], r["counting_cpu_seconds"], r["stage_seconds"])
             for name, c, r in runs]
    print(f"\n{'':44s} {'cores':>5s} {'count s':>8s} {'MB/s':>7s} {'MB/s/core':>9s} "
          f"{'MB/cpu-s':>8s} {'stage s':>8s}")
    for name, c, count_s, cpu_s, stage_s in rows:
        print(f"{name:44s} {c:5d} {count_s:8.1f} {mb / count_s:7.1f} {mb / count_s / c:9.2f} "
              f"{mb / cpu_s:8.2f} {stage_s:8.1f}")
    per_core = mb / runs[0][2]["counting_seconds"] / cores
    per_cpu = mb / runs[0][2]["counting_cpu_seconds"]
    print(f"\nwit vs baseline, per core (wall): {per_core / (mb / base_s):.2f}x; per CPU-second: "
          f"{per_cpu / (mb / base_cpu):.2f}x (wit also strips markup, skips non-articles and "
          "counts bigrams)")
    print(f"target 5 MB/s/core: wall clock {per_core:.1f} ({'met' if per_core >= 5 else 'not met'}), "
          f"per CPU-second {per_cpu:.1f} ({'met' if per_cpu >= 5 else 'not met'}); "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    result = {"wikitext_mb": mb, "baseline_seconds": base_s, "baseline_cpu_seconds": base_cpu,
              "baseline_distinct": base_words, "cores": cores,
              "runs": {name: r for name, _, r in runs}, "load_average": os.getloadavg()[0]}
    (out / "bench_queries.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
