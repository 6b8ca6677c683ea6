"""Build the query list from Wikipedia, as CLIP did: every word seen at least --min-freq
times, bigrams with high pointwise mutual information, titles of articles with at least
--min-views page views, and WordNet synsets. Counting reads the raw dump in parallel
under Ray and resumes from its finished chunks; thresholds, merging and the
--max-entries cap are SQL over the counts. Rules: docs/queries.md.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, storage, wikitext, wordnet
from .config import to_dict
from .errors import WitError
from .io import expand_inputs, file_fingerprint
from .stage import WORK_DIR, StageContext, StageOutput, StageResult, run_stage
from .sql import literal

SOURCES = ("wiki_unigram", "wiki_bigram", "wiki_title", "wordnet")
REPO_QUERIES = Path(__file__).resolve().parents[1] / "queries"
# A word: letters, digits and marks, with single ' or - between them (docs/queries.md).
WORD_RE = r"[\p{L}\p{N}\p{M}]+(?:['-][\p{L}\p{N}\p{M}]+)*"
NAMESPACES = ("Talk|User|User talk|Wikipedia|Wikipedia talk|WP|File|File talk|Image|MediaWiki|"
              "MediaWiki talk|Template|Template talk|Help|Help talk|Category|Category talk|Portal|"
              "Portal talk|Draft|Draft talk|TimedText|TimedText talk|Module|Module talk|Special|Media")


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
    min_freq: int = field(default=100, metadata={"help": "keep words seen at least this often"})
    min_bigram_count: int = field(default=1, metadata={"help": "keep bigrams seen at least this often"})
    min_pmi: float = field(default=30.0, metadata={
        "help": "keep bigrams with log2(p(xy)/(p(x)p(y))) at least this (MetaCLIP: 30)"})
    min_views: int = field(default=70, metadata={"help": "keep article titles with at least "
                                                 "this many page views, summed over --pageviews"})
    max_entries: int = field(default=500_000, metadata={"help": "cap on the list's size"})
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
    workers: int = field(default=0, metadata={"help": "Ray tasks counting at once (0: all CPUs)"})
    chunk_mb: float = field(default=8.0, metadata={
        "help": "MB of input file per counting task (compressed MB for .bz2)"})


# ---------------------------------------------------------------- inputs

def _wiki_sources(cfg: Config) -> list[dict[str, Any]]:
    """One entry per input: kind, path (or hf name), fingerprint."""
    out = []
    for src in cfg.wiki:
        if src.startswith("hf:"):
            parts = src.split(":")
            if len(parts) not in (2, 3) or not parts[1]:
                raise WitError(f"--wiki {src}: expected hf:NAME:CONFIG, e.g. hf:wikimedia/wikipedia:20231101.en")
            out.append({"kind": "hf", "path": src, "name": parts[1],
                        "config": parts[2] if len(parts) == 3 else None, "fingerprint": [src]})
            continue
        for path in expand_inputs([src], "Wikipedia dump or article", "--wiki"):
            kind = wikitext.check_input(path)
            out.append({"kind": kind, "path": str(path), "fingerprint": file_fingerprint([path])[0]})
    seen: set[str] = set()   # a file named twice (a folder and a file in it) counts once
    return [s for s in out if not (s["fingerprint"][0] in seen or seen.add(s["fingerprint"][0]))]


def _blocklist(cfg: Config) -> Path | None:
    if cfg.blocklist == "none":
        return None
    path = (REPO_QUERIES / "blocklist.txt" if cfg.blocklist == "default"
            else storage.location(cfg.blocklist, "--blocklist"))
    if not path.is_file():
        raise WitError(f"--blocklist {cfg.blocklist}: no such file (one entry a line, or none)")
    return path


def check(cfg: Config) -> None:
    """The flag values' own mistakes, found before anything runs."""
    bad = [s for s in cfg.priority if s not in SOURCES]
    if bad or len(set(cfg.priority)) != len(cfg.priority):
        raise WitError(f"--priority {' '.join(cfg.priority)}: give each of {', '.join(SOURCES)} "
                       "at most once, highest priority first")
    for name in ("min_freq", "min_bigram_count", "min_views", "max_entries"):
        if getattr(cfg, name) < 1:
            raise WitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.chunk_mb <= 0:
        raise WitError(f"--chunk-mb {cfg.chunk_mb}: must be positive")
    if not (cfg.wiki or cfg.unigram_counts):
        raise WitError("give --wiki (a dump, article files or hf:NAME:CONFIG) or --unigram-counts")
    if cfg.bigram_counts and not (cfg.wiki or cfg.unigram_counts):
        raise WitError("--bigram-counts needs unigram counts (--wiki or --unigram-counts) for PMI")


def run(cfg: Config, build: str | Path, force: bool = False) -> StageResult:
    """Count, threshold, merge and cap; writes queries/queries.parquet."""
    check(cfg)
    sources = _wiki_sources(cfg)
    wn = wordnet.find(cfg.wordnet)
    tables = {flag: expand_inputs(getattr(cfg, flag), "count table", "--" + flag.replace("_", "-"))
              for flag in ("unigram_counts", "bigram_counts")}
    pageviews = expand_inputs(cfg.pageviews, "pageviews", "--pageviews")
    blocklist = _blocklist(cfg)
    params = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "chunk_mb")}
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
    from . import cluster
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


# ---------------------------------------------------------------- other inputs


def _open_text(path):
    import bz2
    import gzip
    if storage.is_remote(path):   # the store's file, (de)compressed by its suffix
        return path.fs.open(path.path, "rt", compression="infer", encoding="utf-8", errors="replace")
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else open
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _first_bad_line(path: Path, fields: int) -> tuple[int, str]:
    import re
    pattern = re.compile(r"^\s*(\S+(?:\s+\S+)*?)\s+(\d+)\s*$")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            m = pattern.match(line)
            if line.strip() and (not m or len(m.group(1).split()) != fields):
                return lineno, line.rstrip("\n")
    return 0, ""


def _load_count_table(con, path: Path, fields: int, dest: Path) -> None:
    """Check a count table and write it as Parquet in the counting layout."""
    import duckdb
    lines = (f"read_csv({literal(path)}, columns={{'line': 'VARCHAR'}}, delim='\x01', quote='', "
             "escape='', header=false, auto_detect=false)")
    parsed = (f"SELECT regexp_extract(line, '^\\s*(.*?)\\s+([0-9]+)\\s*$', ['gram', 'count']) AS m "
              f"FROM {lines} WHERE trim(line) <> ''")
    shape = f"len(string_split_regex(trim(m.gram), '\\s+')) = {fields} AND m.count <> ''"
    try:
        bad = con.execute(f"SELECT count(*) FROM ({parsed}) WHERE NOT ({shape})").fetchall()[0][0]
        if bad:
            lineno, line = _first_bad_line(path, fields)
            want = "word<TAB>count" if fields == 1 else "word1 word2<TAB>count"
            raise WitError(f"{path}: line {lineno}: expected '{want}' (a space may stand for the "
                           f"tab), got {line[:80]!r}; fix the line and rerun (counts finished so "
                           "far are kept)")
        cols = ("trim(m.gram) AS word" if fields == 1 else
                "split_part(regexp_replace(trim(m.gram), '\\s+', ' ', 'g'), ' ', 1) AS word1, "
                "split_part(regexp_replace(trim(m.gram), '\\s+', ' ', 'g'), ' ', 2) AS word2")
        con.execute(f"COPY (SELECT {cols}, sum(m.count::BIGINT) AS count FROM ({parsed}) "
                    f"GROUP BY ALL) TO {literal(dest)} (FORMAT parquet)")
    except duckdb.Error as e:
        raise WitError(f"{path}: cannot read this count table ({str(e).splitlines()[0]})") from None


def _load_pageviews(con, files: list, domain: str, work: Path) -> None:
    """Table pv(title, views): views summed per title over every file."""
    import duckdb
    con.execute("CREATE TABLE pv (title VARCHAR, views BIGINT)")
    for i, path in enumerate(files):
        with _open_text(path) as f:
            first = next((line for line in f if line.strip()), "")
        n = len(first.split())
        if n not in (4, 6):
            raise WitError(f"--pageviews {path}: not a Wikimedia pageviews file (lines should be "
                           "'domain title views bytes', or the 6 fields of pageviews complete); "
                           f"the first line is {first[:80]!r}")
        if path.name.lower().endswith(".bz2"):   # DuckDB reads plain and gzip text only
            plain = work / f"pageviews-{i}.txt"
            with _open_text(path) as src, open(plain, "w", encoding="utf-8") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            path_read = plain
        else:
            path_read = path
        if n == 4:
            cols = "{'domain': 'VARCHAR', 'title': 'VARCHAR', 'views': 'BIGINT', 'bytes': 'VARCHAR'}"
        else:
            cols = ("{'domain': 'VARCHAR', 'title': 'VARCHAR', 'page_id': 'VARCHAR', "
                    "'access': 'VARCHAR', 'views': 'BIGINT', 'hourly': 'VARCHAR'}")
        # "en" is the desktop site, "en.m" the mobile one; pageviews complete says "en.wikipedia"
        domains = [domain, domain + ".m", domain + ".wikipedia", domain + ".m.wikipedia"]
        try:
            con.execute("INSERT INTO pv SELECT replace(title, '_', ' '), sum(views) FROM read_csv("
                        f"{literal(path_read)}, columns={cols}, delim=' ', quote='', escape='', "
                        "header=false, auto_detect=false, null_padding=false) "
                        f"WHERE domain IN ({', '.join(map(literal, domains))}) GROUP BY 1")
        except duckdb.Error as e:
            msg = " ".join(str(e).splitlines()[:2])
            raise WitError(f"--pageviews {path}: {msg}; fix or remove the line") from None


# ---------------------------------------------------------------- the list

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
            _load_count_table(con, path, fields, dest)
            tables[kind].append(str(dest))
    notes = []
    wn = inputs["wordnet"]
    lemmas = wordnet.lemmas(wn, cfg.all_lemmas) if wn else []
    if not wn:
        notes.append("WordNet not found (--wordnet auto looked in /usr/share/wordnet and NLTK data "
                     "folders): left out" if cfg.wordnet == "auto" else "WordNet left out (--wordnet none)")
    con.register("wn_in", pa.table({"lemma": pa.array([x[0] for x in lemmas], pa.string()),
                                    "synset": pa.array([x[1] for x in lemmas], pa.string())}))
    _load_pageviews(con, inputs["pageviews"], cfg.pageviews_domain, ctx.scratch)
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
    summary.update(_select(con, cfg, tables, titles, ctx.output("queries") / "queries.parquet"))
    if notes:
        summary["notes"] = notes
    summary["input"] = {
        "pages": n["pages"], "articles": n["articles"], "redirects_skipped": n["redirects"],
        "other_namespaces_skipped": n["other_namespaces"], "words": n["tokens"],
        "wikitext_mb": round(mb, 3), "chunks_counted": counted["chunks_counted"],
        "chunks_reused": counted["chunks_reused"], "counting_seconds": round(secs, 3),
        "counting_cpu_seconds": round(n["cpu_seconds"], 3)}
    return summary


def _select(con, cfg: Config, tables: dict[str, list[str]], titles: list[str], dest: Path) -> dict[str, Any]:
    """Thresholds, merging, priority and cap as SQL; writes `dest`, returns the summary."""
    def K(col: str) -> str:
        return col if cfg.case == "sensitive" else f"lower({col})"

    def spelling(col: str, order: str) -> str:
        """The written form of a key: under fold, the first spelling in `order`."""
        return f"first({col} ORDER BY {order}, {col})" if cfg.case == "fold" else f"first({K(col)})"

    def files(globs: list[str], columns: str) -> str:
        """The Parquet files as a relation, or no rows with `columns` ("name TYPE, …")."""
        if not globs:
            return "(SELECT " + ", ".join(f"NULL::{c.split()[1]} AS {c.split()[0]}"
                                          for c in columns.split(", ")) + " WHERE false)"
        return f"read_parquet([{', '.join(map(literal, globs))}], union_by_name = true)"

    ex = con.execute
    ex(f"CREATE TABLE words AS SELECT word, sum(count)::BIGINT AS count "
       f"FROM {files(tables['words'], 'word VARCHAR, count BIGINT')} GROUP BY word")
    ex(f"CREATE TABLE wkeys AS SELECT {K('word')} AS key, {spelling('word', 'count DESC')} AS spelling, "
       "sum(count)::BIGINT AS count FROM words GROUP BY key")
    total = ex("SELECT coalesce(sum(count), 0) FROM words").fetchall()[0][0]
    # A bigram xy can reach the PMI threshold only if both words occur at most N / 2^pmi
    # times (c(xy) <= min(c(x), c(y))), and at least --min-bigram-count times.
    ex(f"CREATE TABLE bw AS SELECT key, count FROM wkeys WHERE count >= {cfg.min_bigram_count} "
       f"AND count <= {total} / pow(2, {cfg.min_pmi} - 1e-9)")
    ex(f"CREATE TABLE bsurf AS SELECT word1, word2, sum(count)::BIGINT AS count FROM "
       f"{files(tables['bigrams'], 'word1 VARCHAR, word2 VARCHAR, count BIGINT')} "
       f"WHERE {K('word1')} IN (SELECT key FROM bw) AND {K('word2')} IN (SELECT key FROM bw) GROUP BY ALL")
    pair = spelling("(word1 || ' ' || word2)", "count DESC")
    ex(f"CREATE TABLE bkeys AS SELECT b.key, b.spelling, b.count, log2(b.count) + log2({max(total, 1)}) "
       "- log2(u1.count) - log2(u2.count) AS pmi FROM ("
       f"  SELECT {K('word1')} || ' ' || {K('word2')} AS key, {K('word1')} AS k1, {K('word2')} AS k2, "
       f"  {pair} AS spelling, "
       "  sum(count)::BIGINT AS count FROM bsurf GROUP BY ALL) b "
       "JOIN bw u1 ON u1.key = b.k1 JOIN bw u2 ON u2.key = b.k2")
    # Titles: views of a redirect count for its target; only articles when the dump says
    # which titles are articles; a trailing "(disambiguation)" is dropped.
    ex(f"CREATE TABLE titles AS SELECT * FROM "
       f"{files(titles, 'title VARCHAR, redirect VARCHAR')}")
    has_articles = ex("SELECT count(*) FROM titles WHERE redirect IS NULL").fetchall()[0][0] > 0
    ex("CREATE TABLE redir AS SELECT title, first(split_part(redirect, '#', 1) ORDER BY redirect) AS target "
       "FROM titles WHERE redirect <> '' GROUP BY title")
    keep = ("t.title IN (SELECT title FROM titles WHERE redirect IS NULL)" if has_articles
            else f"NOT regexp_matches(t.title, '^({NAMESPACES}):')")
    ex("CREATE TABLE tviews AS SELECT title, sum(views)::BIGINT AS views FROM ("
       "  SELECT coalesce(r.target, p.title) AS title, p.views FROM pv p LEFT JOIN redir r USING (title)) t "
       f"WHERE {keep} GROUP BY title")
    ex(f"CREATE TABLE tkeys AS SELECT {K('q')} AS key, {spelling('q', 'views DESC')} AS spelling, "
       "sum(views)::BIGINT AS views FROM (SELECT trim(regexp_replace(title, '\\s*\\([^()]*\\)$', '')) AS q, "
       "views FROM tviews) WHERE q <> '' GROUP BY key")
    ex(f"CREATE TABLE wnkeys AS SELECT {K('lemma')} AS key, {spelling('lemma', 'synset')} AS spelling "
       "FROM wn_in GROUP BY key")
    word_ok = f"regexp_full_match(spelling, {literal(WORD_RE)})"
    ex(f"""CREATE TABLE cand AS
        SELECT key, spelling, 'wiki_unigram' AS source, count::DOUBLE AS score, 0.0 AS score2 FROM wkeys
          WHERE count >= {cfg.min_freq} AND {word_ok}
        UNION ALL SELECT key, spelling, 'wiki_bigram', count, pmi FROM bkeys
          WHERE count >= {cfg.min_bigram_count} AND pmi >= {cfg.min_pmi} - 1e-9
            AND regexp_full_match(spelling, {literal(WORD_RE + ' ' + WORD_RE)})
        UNION ALL SELECT key, spelling, 'wiki_title', views, 0.0 FROM tkeys WHERE views >= {cfg.min_views}
        UNION ALL SELECT w.key, w.spelling, 'wordnet', coalesce(u.count, b.count, 0), 0.0
          FROM wnkeys w LEFT JOIN wkeys u USING (key) LEFT JOIN bkeys b USING (key)""")
    order = cfg.priority + [s for s in SOURCES if s not in cfg.priority]
    prio = "[" + ", ".join(map(literal, order)) + "]"
    canon = "[" + ", ".join(map(literal, SOURCES)) + "]"
    ex(f"""CREATE TABLE ranked AS SELECT *, list_position({prio}, source) AS prio,
        row_number() OVER (PARTITION BY source ORDER BY score DESC, score2 DESC, spelling) AS source_rank
        FROM cand WHERE key NOT IN (SELECT {K('entry')} FROM blocked_in) AND spelling <> ''""")
    ex(f"""CREATE TABLE entries AS SELECT row_number() OVER (ORDER BY e.prio, e.source_rank, e.query) - 1
          AS query_id, e.*, coalesce(u.count, b.count) AS wiki_count, b.pmi, t.views AS pageviews
        FROM (SELECT key, first(spelling ORDER BY prio) AS query,
                list(source ORDER BY list_position({canon}, source)) AS sources,
                min(prio) AS prio, first(source ORDER BY prio) AS best,
                first(source_rank ORDER BY prio) AS source_rank FROM ranked GROUP BY key) e
        LEFT JOIN wkeys u USING (key) LEFT JOIN bkeys b USING (key) LEFT JOIN tkeys t USING (key)""")
    n_cand = ex("SELECT count(*) FROM entries").fetchall()[0][0]
    if n_cand == 0:
        top = ex("SELECT max(count) FROM wkeys").fetchall()[0][0] or 0
        raise WitError(f"no entries passed the thresholds: the most frequent word occurs {top:,} "
                       f"times (--min-freq {cfg.min_freq}); lower the thresholds or give more text")
    ex(f"COPY (SELECT query_id::INTEGER AS query_id, query, sources, wiki_count::BIGINT AS wiki_count, "
       f"pmi::DOUBLE AS pmi, pageviews::BIGINT AS pageviews FROM entries WHERE query_id < {cfg.max_entries} "
       f"ORDER BY query_id) TO {literal(dest)} (FORMAT parquet, COMPRESSION zstd)")
    return _summary(con, cfg, order, n_cand)


def _summary(con, cfg: Config, order: list[str], n_cand: int) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    kept = f"query_id < {cfg.max_entries}"
    candidates = dict(rows("SELECT source, count(*) FROM ranked GROUP BY source"))
    per_source = dict(rows(f"SELECT s, count(*) FROM (SELECT unnest(sources) AS s FROM entries "
                           f"WHERE {kept}) GROUP BY s"))
    overlaps = {}
    for i, a in enumerate(SOURCES):
        for b in SOURCES[i + 1:]:
            n = rows(f"SELECT count(*) FROM entries WHERE list_contains(sources, {literal(a)}) "
                     f"AND list_contains(sources, {literal(b)})")[0][0]
            if n:
                overlaps[f"{a}+{b}"] = n
    entries = min(n_cand, cfg.max_entries)
    if n_cand > cfg.max_entries:
        dropped = dict(rows(f"SELECT best, count(*) FROM entries WHERE NOT ({kept}) GROUP BY best"))
        last = rows(f"SELECT query, best FROM entries WHERE query_id = {cfg.max_entries - 1}")[0]
        cap = (f"kept {entries:,} of {n_cand:,} candidates (--max-entries {cfg.max_entries:,}); "
               f"priority {' > '.join(order)}; dropped "
               + ", ".join(f"{s} {dropped[s]:,}" for s in order if s in dropped)
               + f"; last kept: {last[0]!r} ({last[1]})")
    else:
        cap = f"no cap needed: {n_cand:,} candidates <= --max-entries {cfg.max_entries:,}"
    examples = {s: [r[0] for r in rows(
        f"SELECT query FROM entries WHERE best = {literal(s)} AND {kept} ORDER BY source_rank LIMIT 5")]
        for s in SOURCES}
    return {"entries": entries, "entries_per_source": {s: per_source.get(s, 0) for s in SOURCES},
            "candidates": {s: candidates.get(s, 0) for s in SOURCES}, "overlaps": overlaps, "cap": cap,
            "examples": " | ".join(f"{s}: {', '.join(v)}" for s, v in examples.items() if v)}
