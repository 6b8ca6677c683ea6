"""The queries stage's inputs other than counting: the --wiki sources and their
fingerprints, the blocklist, ready count tables (--unigram-counts, --bigram-counts)
checked and written in the counting layout, and pageviews dumps summed per title.
`cfg` is the stage's `queries.Config` (not imported: helpers never import the stage)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.errors import WitError
from wit_builder.io import expand_inputs, file_fingerprint
from wit_builder.sql import literal
from wit_builder.stages.queries import wikitext

REPO_QUERIES = Path(__file__).resolve().parents[3] / "queries"


def wiki_sources(cfg: Any) -> list[dict[str, Any]]:
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


def blocklist_file(cfg: Any) -> Path | None:
    if cfg.blocklist == "none":
        return None
    path = (REPO_QUERIES / "blocklist.txt" if cfg.blocklist == "default"
            else storage.location(cfg.blocklist, "--blocklist"))
    if not path.is_file():
        raise WitError(f"--blocklist {cfg.blocklist}: no such file (one entry a line, or none)")
    return path


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


def load_count_table(con, path: Path, fields: int, dest: Path) -> None:
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


def load_pageviews(con, files: list, domain: str, work: Path) -> None:
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
