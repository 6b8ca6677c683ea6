"""Build the query list from Wikipedia, as CLIP did: every word seen at least --min-freq
times, bigrams with high pointwise mutual information, titles of articles with at least
--min-views page views, and WordNet synsets. Counting reads the raw dump in parallel
under Ray and resumes from its finished chunks; thresholds, merging and the
--max-entries cap are SQL over the counts. Rules: docs/queries.md.

Here: the stage's Config, check and run, the counting under Ray and the work that ties
the parts together; beside it queries_input (the --wiki sources, blocklist, count tables
and pageviews) and queries_list (the list as SQL, and its summary).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.build import catalog
from wit_builder.build.stage import WORK_DIR, StageContext, StageOutput, StageResult, run_stage
from wit_builder.config import above, at_least, check_fields, output_settings
from wit_builder.errors import WitError
from wit_builder.io import expand_inputs, file_fingerprint
from wit_builder.stages.queries import wikitext, wordnet
from wit_builder.stages.queries.queries_input import (
    blocklist_file,
    load_count_table,
    load_pageviews,
    wiki_sources,
)
from wit_builder.stages.queries.queries_list import SOURCES, select


@dataclass
class Config:
    wiki: list[str] = field(default_factory=list, metadata={
        "metavar": "SRC", "help": "Wikipedia to count: MediaWiki XML dumps (pages-articles*.xml.bz2, "
        "multistream too, or .xml), Parquet/JSONL article files with title and text columns, "
        "or hf:NAME:CONFIG (e.g. hf:wikimedia/wikipedia:20231101.en)"})
    unigram_counts: list[str] = field(default_factory=list, metadata={
        "metavar": "FILE", "help": "ready word counts, one 'word<TAB>count' (or 'word count') a line"})
    bigram_counts: list[str] = field(default_factory=list, metadata={
        "metavar": "FILE", "help": "ready bigram counts, one 'word1 word2<TAB>count' a line"})
    pageviews: list[str] = field(default_factory=list, metadata={
        "metavar": "FILE", "help": "Wikimedia pageviews dumps (pageviews-*.gz or pageviews "
        "complete); without them article titles are left out"})
    wordnet: str = field(default="auto", metadata={
        "metavar": "DIR", "help": "WordNet in Princeton format (data.noun …); auto looks in "
        "/usr/share/wordnet and NLTK data folders; none leaves WordNet out"})
    min_freq: int = field(default=100, metadata={"check": at_least(1), "help": "keep words seen at least this often"})
    min_bigram_count: int = field(default=1, metadata={"check": at_least(1), "help": "keep bigrams seen at least this often"})
    min_pmi: float = field(default=30.0, metadata={
        "help": "keep bigrams with log2(p(xy)/(p(x)p(y))) at least this (MetaCLIP: 30)"})
    min_views: int = field(default=70, metadata={"check": at_least(1), "help": "keep article titles with at least "
                                                 "this many page views, summed over --pageviews"})
    max_entries: int = field(default=500_000, metadata={"check": at_least(1), "help": "cap on the list's size"})
    priority: list[str] = field(default_factory=lambda: ["wordnet", "wiki_unigram", "wiki_title",
                                                         "wiki_bigram"], metadata={
        "metavar": "SOURCE", "help": "which sources stay first when there are more than "
        "--max-entries candidates; within a source the most frequent/viewed stay"})
    all_lemmas: bool = field(default=False, metadata={
        "help": "take every lemma of a WordNet synset, not only its first"})
    case: str = field(default="sensitive", metadata={
        "choices": ["sensitive", "fold", "lower"], "help": "sensitive: each spelling is its own "
        "entry (MetaCLIP); fold: spellings differing in case are one entry written as most "
        "often seen; lower: one entry, written in lower case"})
    pageviews_domain: str = field(default="en", metadata={
        "help": "wiki of the pageviews lines to read (en = English Wikipedia, desktop and mobile)"})
    blocklist: str = field(default="default", metadata={
        "metavar": "FILE", "help": "entries never to emit, one a line; default: queries/blocklist.txt; none"})
    workers: int = field(default=0, metadata={"check": at_least(0, "0: all CPUs"), "help": "Ray tasks counting at once (0: all CPUs)",
                                              "output": False})
    chunk_mb: float = field(default=8.0, metadata={"check": above(0),
        "help": "MB of input file per counting task (compressed MB for .bz2)", "output": False})


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs: each field's own
    check (bounds, on the field), then the rules that need several."""
    check_fields(cfg)
    bad = [s for s in cfg.priority if s not in SOURCES]
    if bad or len(set(cfg.priority)) != len(cfg.priority):
        raise WitError(f"--priority {' '.join(cfg.priority)}: give each of {', '.join(SOURCES)} "
                       "at most once, highest priority first")
    if not (cfg.wiki or cfg.unigram_counts):
        raise WitError("give --wiki (a dump, article files or hf:NAME:CONFIG) or --unigram-counts")
    if cfg.bigram_counts and not (cfg.wiki or cfg.unigram_counts):
        raise WitError("--bigram-counts needs unigram counts (--wiki or --unigram-counts) for PMI")


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Count, threshold, merge and cap; writes queries/queries.parquet."""
    check(cfg)
    sources = wiki_sources(cfg)
    wn = wordnet.find(cfg.wordnet)
    tables = {flag: expand_inputs(getattr(cfg, flag), "count table", "--" + flag.replace("_", "-"))
              for flag in ("unigram_counts", "bigram_counts")}
    pageviews = expand_inputs(cfg.pageviews, "pageviews", "--pageviews")
    blocklist = blocklist_file(cfg)
    params = output_settings(cfg)
    params.update(
        wiki=[s["fingerprint"] for s in sources], count_version=wikitext.COUNT_VERSION,
        wordnet=file_fingerprint(sorted(p for p in wn.rglob("data.*") if p.is_file()) if wn.is_dir()
                                 else [wn]) if wn else None,
        unigram_counts=file_fingerprint(tables["unigram_counts"]),
        bigram_counts=file_fingerprint(tables["bigram_counts"]),
        pageviews=file_fingerprint(pageviews),
        blocklist=file_fingerprint([blocklist]) if blocklist else None)
    inputs = dict(sources=sources, wordnet=wn, pageviews=pageviews, blocklist=blocklist, **tables)
    return run_stage(build, "queries", params, lambda ctx: _work(ctx, cfg, inputs),
                     outputs=["queries"], views={"queries": "queries/*.parquet"}, force=force)


# ---------------------------------------------------------------- counting

def _store(build, source: dict[str, Any], chunk_bytes: int):
    """Finished chunk counts of one input live here, keyed by the input's fingerprint, so
    a rerun resumes them even when thresholds or other inputs changed."""
    key = json.dumps([source["fingerprint"], wikitext.COUNT_VERSION, chunk_bytes])
    return build / WORK_DIR / "queries-counts" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _chunk_done(stats: dict[str, Any]) -> None:
    """Called in the driver after each chunk is counted (a hook for progress and tests)."""


def _hf_chunks(source: dict[str, Any], chunk_bytes: int):
    """(spec, table) per chunk of a `datasets` dataset streamed by name."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    try:
        ds = datasets.load_dataset(source["name"], source["config"], split="train", streaming=True)
    except Exception as e:  # noqa: BLE001 - network, missing dataset: all the user's to fix
        raise WitError(f"--wiki {source['path']}: cannot load the dataset ({type(e).__name__}: "
                       f"{str(e)[:200]})") from None
    batches, size, index = [], 0, 0
    for batch in ds.with_format("arrow").iter(batch_size=1000):
        if "title" not in batch.column_names or "text" not in batch.column_names:
            raise WitError(f"--wiki {source['path']}: the dataset has no title and text columns "
                           f"(it has {', '.join(batch.column_names)})")
        batches.append(batch.select(["title", "text"]))
        size += pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0
        if size >= chunk_bytes:
            yield {"kind": "arrow", "path": source["path"], "index": index}, pa.concat_tables(batches)
            batches, size, index = [], 0, index + 1
    if batches:
        yield {"kind": "arrow", "path": source["path"], "index": index}, pa.concat_tables(batches)


def count_chunk(spec: dict[str, Any], table=None) -> dict[str, Any]:
    """Ray task: count one chunk into the build (wikitext.count_chunk); a WitError comes
    back as {"error": message}, so the other chunks go on and their counts are kept."""
    try:
        return wikitext.count_chunk(spec, table)
    except WitError as e:
        return {"error": str(e)}


def _finished(store) -> set[str]:
    """Names of the chunks of a store whose counts are written (their .json, written last)."""
    return {p.name[:-len(".json")] for p in store.glob("chunk-*.json")} if store.exists() else set()


def _count(ctx: StageContext, cfg: Config, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Count every wiki source under Ray (finished chunks are reused); returns the stores
    and the stats of every chunk."""
    import ray

    from wit_builder.build import cluster
    chunk_bytes = max(1, int(cfg.chunk_mb * (1 << 20)))
    stores, plans, finished = [], [], []
    for src in sources:
        store = _store(ctx.build, src, chunk_bytes)
        stores.append(store)
        finished.append(_finished(store))
        if src["kind"] in ("xml", "xml.bz2"):
            wikitext.check_dump(storage.location(src["path"]))   # fail fast on a file that is no dump
        if src["kind"] != "hf":
            plans.append(wikitext.plan_chunks(storage.location(src["path"]), src["kind"], chunk_bytes))
        else:
            plans.append(None)
    done_before = sum(map(len, finished))
    todo = sum(len(p) for p in plans if p is not None) - done_before

    def units():
        for src, store, plan, done in zip(sources, stores, plans, finished):
            for item in plan if plan is not None else _hf_chunks(src, chunk_bytes):
                spec, table = item if isinstance(item, tuple) else (item, None)
                name = f"chunk-{spec['index']:05d}"
                if name in done:
                    continue
                spec["out"] = str(store / name)
                yield spec, ray.put(table) if table is not None else None

    fresh: list[dict[str, Any]] = []
    errors: list[str] = []

    def counted(stats: dict[str, Any]) -> None:
        if "error" in stats:
            errors.append(stats["error"])
            return
        fresh.append(stats)
        _chunk_done(stats)

    cluster.ensure_ray()
    t0 = time.time()   # counting time, without starting Ray
    cluster.run_units(count_chunk, units(), "queries: counting", total=max(todo, 0) or None,
                      done=done_before, in_flight=cfg.workers or cluster.cpus(),
                      on_result=counted, unit="chunk")
    seconds = time.time() - t0
    if errors:
        more = f" ({len(errors) - 1} more chunk(s) failed too)" if len(errors) > 1 else ""
        raise WitError(f"{errors[0]}{more}")
    marks = [p for s in stores for p in sorted(s.glob("chunk-*.json"), key=str)]
    stats = [json.loads(b) for b in storage.read_all(marks)]
    for src, store in zip(sources, stores):
        mine = [s for s in stats if s["path"] == src["path"]]
        if not sum(s["articles"] for s in mine):
            n = {k: sum(s[k] for s in mine) for k in ("pages", "other_namespaces", "redirects")}
            raise WitError(f"--wiki {src['path']}: no namespace-0 articles found (pages read: "
                           f"{n['pages']:,}; in other namespaces: {n['other_namespaces']:,}; "
                           f"redirects: {n['redirects']:,}); is it the pages-articles dump?")
    return {"stores": stores, "stats": stats, "chunks_counted": len(fresh), "chunks_reused": done_before,
            "seconds": seconds, "wikitext_mb": sum(s["wikitext_bytes"] for s in stats) / 1e6,
            "counted_mb": sum(s["wikitext_bytes"] for s in fresh) / 1e6}


# ---------------------------------------------------------------- the work

def _work(ctx: StageContext, cfg: Config, inputs: dict[str, Any]) -> StageOutput:
    con = catalog.scratch(ctx.scratch, keep_order=False, remote=ctx.build)
    try:
        # DuckDB reads the count tables and pageviews where they are (paths or URLs).
        storage.register(con, *inputs["pageviews"], *inputs["unigram_counts"],
                         *inputs["bigram_counts"])
        summary = _build(ctx, cfg, inputs, con)
    finally:
        con.close()
    # Finished: chunk counts of these inputs (and of inputs since replaced) are not needed.
    storage.remove(ctx.build / WORK_DIR / "queries-counts")
    return StageOutput(rows=summary["entries"], summary=summary)


def _build(ctx: StageContext, cfg: Config, inputs: dict[str, Any], con) -> dict[str, Any]:
    """Read every input, count, select; returns the summary."""
    import pyarrow as pa
    # Cheap inputs first: a bad count table, WordNet or pageviews file fails in seconds.
    tables = {"words": [], "bigrams": []}
    for flag, kind, fields in (("unigram_counts", "words", 1), ("bigram_counts", "bigrams", 2)):
        for i, path in enumerate(inputs[flag]):
            dest = ctx.scratch / f"table-{i}.{kind}.parquet"
            load_count_table(con, path, fields, dest)
            tables[kind].append(str(dest))
    notes = []
    wn = inputs["wordnet"]
    lemmas = wordnet.lemmas(wn, cfg.all_lemmas) if wn else []
    if not wn:
        notes.append("WordNet not found (--wordnet auto looked in /usr/share/wordnet and NLTK data "
                     "folders): left out" if cfg.wordnet == "auto" else "WordNet left out (--wordnet none)")
    con.register("wn_in", pa.table({"lemma": pa.array([x[0] for x in lemmas], pa.string()),
                                    "synset": pa.array([x[1] for x in lemmas], pa.string())}))
    load_pageviews(con, inputs["pageviews"], cfg.pageviews_domain, ctx.scratch)
    if not inputs["pageviews"]:
        notes.append("no --pageviews: article titles left out")
    blocked = []
    if inputs["blocklist"]:
        blocked = [ln.strip() for ln in inputs["blocklist"].read_text(encoding="utf-8").splitlines()
                   if ln.strip() and not ln.startswith("#")]
    con.register("blocked_in", pa.table({"entry": pa.array(blocked, pa.string())}))

    counted = _count(ctx, cfg, inputs["sources"]) if inputs["sources"] else \
        {"stores": [], "stats": [], "chunks_counted": 0, "chunks_reused": 0, "seconds": 0.0,
         "wikitext_mb": 0.0, "counted_mb": 0.0}
    for s in counted["stores"]:
        tables["words"].append(str(s / "*.words.parquet"))
        tables["bigrams"].append(str(s / "*.bigrams.parquet"))
    titles = [str(s / "*.titles.parquet") for s in counted["stores"]]
    stats = counted["stats"]
    n = {k: sum(s.get(k, 0) for s in stats) for k in ("pages", "articles", "redirects",
                                                      "other_namespaces", "tokens", "cpu_seconds")}
    mb, secs = counted["wikitext_mb"], counted["seconds"]
    summary: dict[str, Any] = {}
    if stats:
        summary["read"] = (f"{n['articles']:,} articles, {mb:,.1f} MB of wikitext, {n['tokens']:,} words; "
                           f"skipped {n['redirects']:,} redirects and {n['other_namespaces']:,} pages "
                           "in other namespaces")
        summary["counting"] = (f"{counted['chunks_counted']:,} chunks in {secs:,.1f} s "
                               f"({counted['counted_mb'] / max(secs, 1e-9):,.1f} MB/s), "
                               f"{counted['chunks_reused']:,} reused from an earlier run")
    summary.update(select(con, cfg, tables, titles, ctx.output("queries") / "queries.parquet"))
    if notes:
        summary["notes"] = notes
    summary["input"] = {
        "pages": n["pages"], "articles": n["articles"], "redirects_skipped": n["redirects"],
        "other_namespaces_skipped": n["other_namespaces"], "words": n["tokens"],
        "wikitext_mb": round(mb, 3), "chunks_counted": counted["chunks_counted"],
        "chunks_reused": counted["chunks_reused"], "counting_seconds": round(secs, 3),
        "counting_cpu_seconds": round(n["cpu_seconds"], 3)}
    return summary
