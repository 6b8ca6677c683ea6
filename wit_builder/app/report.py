"""`wit-build report`: an HTML data card with PNG plots, readable offline.

Sections appear when their data exists: stages, per-query counts before and after
balancing, drop reasons, image sizes, success rate by domain, per-host fetch figures
(requests, 429s, robots.txt refusals, DNS failure rate), training curves,
evaluation results, and the figures of a build with several balancing arms
(wit_builder.app.arms: benchmarks/exp_balance.py saves them into the build it made). The HTML references only files beside it in `reports/`.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
from pathlib import Path
from typing import Any

from wit_builder import storage
from wit_builder.app import arms
from wit_builder.build import catalog
from wit_builder.errors import WitError

QUERIES = {
    # every query with a match, before (pairs whose caption matches it) and after
    # balancing (pairs it was selected for); the query's text where the build has it
    "per_query": """
        SELECT m.query_id, {query_text} AS query, m.matches AS before, coalesce(s.n, 0) AS after
        FROM match_counts m {query_join} LEFT JOIN
             (SELECT selected_by AS query_id, count(*) AS n FROM selected GROUP BY 1) s
        USING (query_id) WHERE m.matches > 0 ORDER BY before DESC, m.query_id""",
    "drop_reasons": """
        SELECT coalesce(drop_reason, 'kept') AS reason, count(*) AS samples
        FROM samples GROUP BY 1 ORDER BY 2 DESC, 1""",
    # the size of the image as downloaded: what the filters judge (stored ones are all
    # --image-size)
    "sizes": """SELECT coalesce(original_width, width) AS width, coalesce(original_height, height)
                AS height FROM samples WHERE status = 'success' AND coalesce(original_width, width) > 0""",
    "domains": """
        SELECT regexp_extract(url, '^[a-z]+://([^/:?#]+)', 1) AS domain, count(*) AS samples,
               avg(CASE WHEN status = 'success' THEN 1.0 ELSE 0.0 END) AS success_rate
        FROM samples GROUP BY 1 ORDER BY samples DESC, 1 LIMIT 25""",
    # fetch's per-host figures: the hosts that failed most, and the build's totals
    "hosts": """
        SELECT host, sum(requests) AS requests, sum(success) AS success,
               sum(rate_limited) AS "429s", sum(robots_disallowed) AS robots_refusals,
               sum(dns_error) AS dns_errors, sum(failed) AS failed
        FROM hosts GROUP BY host ORDER BY failed DESC, requests DESC, host LIMIT 20""",
    "host_totals": """
        SELECT count(*) AS hosts, sum(requests) AS requests, sum(r429) AS responses_429,
               sum(robots) AS robots_refusals,
               round(count(*) FILTER (WHERE dns > 0) / greatest(count(*), 1), 4) AS dns_failure_rate
        FROM (SELECT host, sum(requests) AS requests, sum(rate_limited) AS r429,
                     sum(robots_disallowed) AS robots, sum(dns_error) AS dns FROM hosts GROUP BY 1)""",
    "stages": "SELECT stage, status, rows, seconds, finished FROM stages ORDER BY finished",
    "pairs_matched": "SELECT count(*) AS n FROM matches WHERE len(query_ids) > 0",
    "pairs_selected": "SELECT count(*) AS n FROM selected",
    "capped": "SELECT count(*) FILTER (WHERE claimed > selected) AS n FROM balance_counts",
    "kept": """SELECT count(*) AS samples, count(*) FILTER (WHERE status = 'success') AS downloaded,
                      count(*) FILTER (WHERE keep) AS kept FROM samples""",
    "published": "SELECT count(DISTINCT shard) AS shards, count(*) AS samples FROM shards",
}
NEEDS = {"per_query": {"match_counts", "selected"}, "drop_reasons": {"samples"},
         "sizes": {"samples"}, "domains": {"samples"}, "stages": {"stages"},
         "hosts": {"hosts"}, "host_totals": {"hosts"},
         "pairs_matched": {"matches"}, "pairs_selected": {"selected"},
         "capped": {"balance_counts"}, "kept": {"samples"}, "published": {"shards"}}


def _fetch(build: Path, name: str, views: set[str]) -> list[dict[str, Any]] | None:
    if not NEEDS[name] <= views:
        return None
    sql = QUERIES[name]
    if name == "per_query":
        known = "queries" in views
        sql = sql.format(query_text="q.query" if known else "NULL",
                         query_join="LEFT JOIN queries q USING (query_id)" if known else "")
    try:
        return catalog.query(build, sql).to_pylist()
    except WitError:
        return None  # a column this build's stages do not write: leave the section out


def _one(build: Path, name: str, views: set[str]) -> dict[str, Any]:
    rows = _fetch(build, name, views)
    return rows[0] if rows else {}


def eval_results(build: Path, train_dir: str | None) -> tuple[dict[str, Any], Path] | None:
    """The newest evaluation results: reports/eval.json (a recipe's [eval] step) or
    eval.json beside the checkpoint (`wit-train eval` writes it there)."""
    found = [p for p in (build / "reports" / "eval.json", _train_dir(build, train_dir) / "eval.json")
             if p.exists()]
    if not found:
        return None
    newest = max(found, key=_mtime)
    try:
        return json.loads(newest.read_text()), newest
    except json.JSONDecodeError as e:
        raise WitError(f"{newest}: not valid JSON ({e}); rerun `wit-train eval`") from None


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_per_query(rows, path: Path, cap: int | None = None) -> None:
    """Rank-frequency curves before and after balancing (each sorted on its own)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("before", "matched (before balancing)"), ("after", "selected (after)")):
        counts = sorted((r[key] for r in rows if r[key] > 0), reverse=True)
        ax.plot(range(1, len(counts) + 1), counts, label=label, lw=1.5)
    if cap:
        ax.axhline(cap, color="gray", ls="--", lw=1, label=f"--per-query {cap:,}")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("query rank"), ax.set_ylabel("pairs")
    ax.set_title("Pairs per query: head and tail")
    ax.legend(), fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def plot_bars(labels, values, path: Path, title: str, xlabel: str, fmt="{:,}") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color="#4C72B0")
    ax.set_yticks(range(len(labels)), labels), ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, " " + fmt.format(v), va="center", fontsize=8)
    ax.set_xlabel(xlabel), ax.set_title(title)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def plot_sizes(rows, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist([min(r["width"], r["height"]) for r in rows], bins=40, color="#55A868")
    ax.set_xlabel("shorter side of the original image (px)"), ax.set_ylabel("images")
    ax.set_title("Image sizes as downloaded")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)


def plot_training(log: Path, path: Path) -> bool:
    records = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    records = [r for r in records if "loss" in r and "step" in r]
    if not records:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="loss")
    ax.set_xlabel("step"), ax.set_ylabel("contrastive loss"), ax.set_title("Training")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)
    return True


def _table(rows: list[dict[str, Any]], limit: int = 30) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>"
                   for r in rows[:limit])
    return f"<table><tr>{head}</tr>{body}</table>"


def _train_dir(build, train_dir: str | None):
    return storage.location(train_dir, "--train-dir") if train_dir else build / "train"


def _mtime(p) -> float:
    if not storage.is_remote(p):
        return p.stat().st_mtime_ns / 1e9
    info = p.fs.info(p.path)
    when = info.get("LastModified") or info.get("updated") or info.get("mtime") or 0
    return when.timestamp() if hasattr(when, "timestamp") else float(when or 0)


def write_report(build: str | Path, train_dir: str | None = None):
    """Write reports/index.html and its PNGs; returns where the HTML is (a URL for a
    remote build: the report is drawn in a local folder and put into the build)."""
    build = storage.location(build)
    remote = storage.is_remote(build)
    if not remote and not catalog.db_path(build).exists():
        raise WitError(f"--out {build}: no catalog here; run some stages first")
    out = storage.cache_dir("reports", hashlib.sha256(str(build).encode()).hexdigest()[:16]) \
        if remote else build / "reports"
    out.mkdir(parents=True, exist_ok=True)
    con = catalog.connect(build, read_only=True)
    try:
        views = set(catalog.list_views(con))
    finally:
        con.close()
    parts: list[str] = []
    facts: dict[str, Any] = {}

    stages = _fetch(build, "stages", views)
    if stages:
        parts.append("<h2>Stages</h2>" + _table(stages))
        old = [r["stage"] for r in stages if r.get("status") == "stale"]
        if old:  # made from upstream runs that were replaced: the figures below may disagree
            parts.append(f"<p><b>Stale:</b> {html.escape(', '.join(old))} were made from an upstream "
                         "run that has since been replaced; rerun them before trusting the "
                         "figures below.</p>")
    per_query = _fetch(build, "per_query", views)
    if per_query is not None:
        from wit_builder.build.stage import read_record
        balance = read_record(build, "balance") or {}
        cap = balance.get("params", {}).get("per_query") if balance.get("params", {}).get("mode", "cap") == "cap" else None
        plot_per_query(per_query, out / "per_query.png", cap)
        facts.update(queries_matched=len(per_query),
                     pairs_matched=_one(build, "pairs_matched", views).get("n"),
                     pairs_selected=_one(build, "pairs_selected", views).get("n"))
        capped = _one(build, "capped", views)
        if capped:  # queries that lost pairs to the cap (claimed more than they kept)
            facts["queries_capped"] = capped["n"]
        table = [{"query": r["query"] if r["query"] is not None else r["query_id"],
                  "matched": r["before"], "selected": r["after"]} for r in per_query]
        parts.append("<h2>Per-query counts</h2><img src='per_query.png' alt='per-query counts'>"
                     "<p>Most matched queries:</p>" + _table(table, 15))
    kept = _one(build, "kept", views)
    if kept:
        facts.update(samples=kept["samples"], downloaded=kept["downloaded"], kept=kept["kept"])
    published = _one(build, "published", views)
    if published:
        facts.update(shards=published["shards"], published=published["samples"])
    drops = _fetch(build, "drop_reasons", views)
    if drops:
        plot_bars([r["reason"] for r in drops], [r["samples"] for r in drops],
                  out / "drop_reasons.png", "Kept and dropped samples", "samples")
        parts.append("<h2>Drop reasons</h2><img src='drop_reasons.png' alt='drop reasons'>")
    sizes = _fetch(build, "sizes", views)
    if sizes:
        plot_sizes(sizes, out / "sizes.png")
        parts.append("<h2>Image sizes (as downloaded)</h2><img src='sizes.png' alt='image sizes'>")
    domains = _fetch(build, "domains", views)
    if domains:
        plot_bars([r["domain"] or "?" for r in domains], [r["success_rate"] for r in domains],
                  out / "domains.png", "Download success rate by domain", "success rate", "{:.0%}")
        parts.append("<h2>Success rate by domain</h2><img src='domains.png' alt='domains'>"
                     + _table(domains, 25))
    totals = _one(build, "host_totals", views)
    if totals.get("hosts"):
        facts.update({k: v for k, v in totals.items()})
        parts.append("<h2>Hosts</h2><p>Requests per host, with 429 answers, robots.txt "
                     "refusals and DNS failures; the hosts that failed most first:</p>"
                     + _table(_fetch(build, "hosts", views) or [], 20))
    log = _train_dir(build, train_dir) / "log.jsonl"
    if log.exists() and plot_training(storage.download_file(log, out / "log.jsonl"),
                                      out / "training.png"):
        parts.append("<h2>Training</h2><img src='training.png' alt='training curves'>")
    found = eval_results(build, train_dir)
    if found:
        results, source = found
        facts["eval_results"] = str(source)
        zs = results.get("zero_shot")
        if zs:
            facts.update(zero_shot_accuracy=zs.get("accuracy"), chance=zs.get("chance"))
            per_class = zs.get("per_class") or {}
            rows = [{"class": k, "accuracy": v} for k, v in per_class.items()]
            parts.append(f"<h2>Zero-shot classification</h2><p>accuracy "
                         f"{zs.get('accuracy', 0):.3f} on {zs.get('n')} images; chance "
                         f"{zs.get('chance', 0):.3f}</p>" + _table(rows, 50))
        if results.get("retrieval"):
            parts.append("<h2>Retrieval</h2>" + _table([results["retrieval"]]))
    experiment = arms.load(build)
    if experiment:  # a build with several balancing arms (benchmarks/exp_balance.py)
        if remote:  # drawn in a local folder: the plot comes along
            storage.download_file(storage.child(build, "reports", arms.PLOT), out / arms.PLOT)
        body, arm_facts = arms.report_section(experiment)
        parts.append(body)
        facts.update(arm_facts)
    if not parts:
        raise WitError(f"--out {build}: nothing to report yet; run some stages first")
    facts_html = _table([{"fact": k, "value": v} for k, v in facts.items()]) if facts else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>wit data card</title><style>"
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
        "font-size:13px;text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>wit data card</h1><p>Build directory: {html.escape(str(build))}</p>"
        + facts_html + "".join(parts) + "</body></html>")
    path = out / "index.html"
    path.write_text(page)
    (out / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
    if remote:
        (out / "log.jsonl").unlink(missing_ok=True)
        storage.upload_dir(out, build / "reports")
        return build / "reports" / "index.html"
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-dir", help="training run directory (default: OUT/train)")


def main(args: argparse.Namespace) -> int:
    path = write_report(getattr(args, "out", "wit-data"), args.train_dir)
    print(f"wrote {path}")
    return 0
