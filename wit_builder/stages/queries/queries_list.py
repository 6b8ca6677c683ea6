"""The queries stage's list as SQL over the counts: per source the keys and spellings
(case rules), bigram PMI, title views through redirects, WordNet lemmas; thresholds,
the blocklist, merging by key, priority and the --max-entries cap; and the summary.
`cfg` is the stage's `queries.Config` (not imported: helpers never import the stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wit_builder.errors import WitError
from wit_builder.sql import literal

SOURCES = ("wiki_unigram", "wiki_bigram", "wiki_title", "wordnet")
# A word: letters, digits and marks, with single ' or - between them (docs/queries.md).
WORD_RE = r"[\p{L}\p{N}\p{M}]+(?:['-][\p{L}\p{N}\p{M}]+)*"
NAMESPACES = ("Talk|User|User talk|Wikipedia|Wikipedia talk|WP|File|File talk|Image|MediaWiki|"
              "MediaWiki talk|Template|Template talk|Help|Help talk|Category|Category talk|Portal|"
              "Portal talk|Draft|Draft talk|TimedText|TimedText talk|Module|Module talk|Special|Media")


def select(con, cfg: Any, tables: dict[str, list[str]], titles: list[str], dest: Path) -> dict[str, Any]:
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


def _summary(con, cfg: Any, order: list[str], n_cand: int) -> dict[str, Any]:
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
