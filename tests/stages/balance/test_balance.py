"""Balancing: the per-query cap on a skewed pool, determinism, MetaCLIP mode, statistics."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tests.stages.match.test_match import write_pool_file, write_queries
from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed
from wit_builder.errors import WitError
from wit_builder.stages.balance import balance
from wit_builder.stages.match import match
from wit_builder.stages.pool import pool

K = 150            # per-query cap used throughout
_MASK = (1 << 64) - 1


# ----------------------------------------------------------------------------------
# A straightforward reference of the rules, in plain Python integers.

def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def ref_priority(seed: int, uid: str, q: int) -> int:
    salt = _mix(((q + 1) * 0x9E3779B97F4A7C15 + (seed & _MASK) * 0xD1B54A32D192ED03) & _MASK)
    return _mix(int(uid[:16], 16) ^ salt) >> 1


def ref_cap(matches: dict[str, list[int]], k: int, seed: int) -> dict[str, int]:
    """uid -> selected_by: the rarest query claims; each query keeps its k lowest priorities."""
    counts = Counter(q for qs in matches.values() for q in qs)
    claims: dict[int, list[tuple[int, str]]] = {}
    for uid, qs in matches.items():
        q = min(qs, key=lambda q: (counts[q], q))
        claims.setdefault(q, []).append((ref_priority(seed, uid, q), uid))
    return {uid: q for q, c in claims.items() for _, uid in sorted(c)[:k]}


def ref_metaclip(matches: dict[str, list[int]], t: int, seed: int) -> dict[str, int]:
    """uid -> selected_by under MetaCLIP's rule with hash coins."""
    counts = Counter(q for qs in matches.values() for q in qs)
    out = {}
    for uid, qs in matches.items():
        wins = [q for q in qs if ref_priority(seed, uid, q) / 2.0 ** 63 < min(1.0, t / counts[q])]
        if wins:
            out[uid] = min(wins, key=lambda q: (counts[q], q))
    return out


# ----------------------------------------------------------------------------------
# A heavily skewed world: one query in most captions, a few heads, a long tail.

QUERIES = ["photo", "red", "circle", "red circle", "blue"] + [f"rare{i}" for i in range(20)]


def skewed_captions(n: int = 3000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    caps = []
    for i in range(n):
        words = ["photo"] if rng.random() < 0.85 else []
        r = rng.random()
        if r < 0.3:
            words += ["red", "circle"]
        elif r < 0.45:
            words += ["red"]
        elif r < 0.55:
            words += ["blue"]
        if rng.random() < 0.1:
            words.append(f"rare{rng.integers(0, 20)}")   # ~15 captions per rare query
        rng.shuffle(words)
        caps.append(" ".join(words + [f"x{i}"]) + ("." if i % 3 else ""))
    return caps


def selection(build) -> dict[str, int]:
    t = catalog.query(build, "SELECT uid, selected_by FROM selected")
    return dict(zip(t.column("uid").to_pylist(), t.column("selected_by").to_pylist()))


def matches_of(build) -> dict[str, list[int]]:
    t = catalog.query(build, "SELECT uid, query_ids FROM matches")
    return dict(zip(t.column("uid").to_pylist(), t.column("query_ids").to_pylist()))


@pytest.fixture(scope="module")
def skewed(tmp_path_factory, ray_cluster):
    """Two builds of the same pool: 1 part and 1 worker, 3 parts and 2 workers."""
    root = tmp_path_factory.mktemp("skewed")
    src = write_pool_file(root / "pool.parquet", skewed_captions())
    builds = []
    for parts, workers in ((1, 1), (3, 2)):
        b = root / f"build-{parts}"
        b.mkdir()
        write_queries(b, QUERIES)
        pool.run(pool.Config(pool=[str(src)], pool_parts=parts), b)
        match.run(match.Config(workers=workers), b)
        builds.append(b)
    return builds


@pytest.mark.slow
def test_cap_holds_and_equals_the_reference_rule(skewed):
    b = skewed[0]
    res = balance.run(balance.Config(per_query=K, seed=7), b)
    m = matches_of(b)
    got = selection(b)
    assert got == ref_cap(m, K, seed=7)
    per_query = Counter(got.values())
    assert max(per_query.values()) <= K
    counts = Counter(q for qs in m.values() for q in qs)
    assert counts[0] > 10 * K                                   # "photo" really is huge
    # Every pair matching a query with at most K matches is kept (the tail is whole).
    tail = {u for u, qs in m.items() if min(counts[q] for q in qs) <= K}
    assert tail and tail <= set(got)
    rows = catalog.query(b, "SELECT uid, url, text, query_ids, selected_by FROM selected").to_pylist()
    pool_rows = {r["uid"]: r for r in catalog.query(b, "SELECT uid, url, text FROM pool").to_pylist()}
    for r in rows:
        assert (r["url"], r["text"]) == (pool_rows[r["uid"]]["url"], pool_rows[r["uid"]]["text"])
        assert r["query_ids"] == m[r["uid"]] and r["selected_by"] in r["query_ids"]
    s = res.summary
    assert s["pairs_matched"] == len(m) and s["pairs_selected"] == len(got) == res.rows
    assert s["queries_over_cap_before"] == sum(c > K for c in counts.values())
    assert s["queries_over_cap_after"] == 0
    assert s["per_query_before"]["max"] == counts[0] and s["per_query_after"]["max"] <= K
    assert s["tail_share_before"] == round(len(tail) / len(m), 4)
    assert s["tail_share_after"] == round(len(tail) / len(got), 4)
    assert s["pairs_per_text_before"] == s["pairs_per_text_after"] == 1.0
    bc = {r["query_id"]: r for r in catalog.query(b, "SELECT * FROM balance_counts").to_pylist()}
    assert {q: r["matches"] for q, r in bc.items() if r["matches"]} == dict(counts)
    assert {q: r["selected"] for q, r in bc.items() if r["selected"]} == dict(per_query)
    assert sum(r["claimed"] for r in bc.values()) == len(m)


@pytest.mark.slow
def test_same_selection_with_any_workers_partitions_and_reruns(skewed):
    one, three = skewed
    for b in skewed:
        balance.run(balance.Config(per_query=K, seed=3), b)
    assert len(list(committed(three, "pool").glob("part-*.parquet"))) == 3
    first = selection(one)
    assert selection(three) == first
    balance.run(balance.Config(per_query=K, seed=3), one, force=True)
    assert selection(one) == first
    balance.run(balance.Config(per_query=K, seed=4), one)
    other = selection(one)
    assert other != first and Counter(other.values()) == Counter(first.values())


@pytest.mark.slow
def test_metaclip_mode_matches_its_rule_and_expected_count(skewed):
    b = skewed[1]
    res = balance.run(balance.Config(per_query=K, seed=11, mode="metaclip"), b)
    m = matches_of(b)
    got = selection(b)
    assert got == ref_metaclip(m, K, seed=11)
    counts = Counter(q for qs in m.values() for q in qs)
    p_keep = [1 - math.prod(1 - min(1.0, K / counts[q]) for q in qs) for qs in m.values()]
    expected, sd = sum(p_keep), math.sqrt(sum(p * (1 - p) for p in p_keep))
    assert abs(len(got) - expected) <= 4 * sd + 1, (len(got), expected, sd)
    assert res.summary["mode"] == "metaclip" and res.summary["pairs_selected"] == len(got)


def test_metaclip_coins_are_uniform_over_many_seeds(tmp_path):
    # The stage's per-part function on one file, many seeds: kept counts follow the
    # binomial law of MetaCLIP's rule (mean and spread), not just one lucky seed.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.io import uid_of
    rng = np.random.default_rng(5)
    n, counts = 4000, np.array([4000, 1200, 300, 50])
    lists = [sorted(set(rng.choice(4, rng.integers(1, 3), p=[.5, .3, .15, .05]).tolist()))
             for _ in range(n)]
    src = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uid": [uid_of(f"http://u/{i}", "t") for i in range(n)],
                             "query_ids": pa.array(lists, pa.list_(pa.int32()))}), src)
    p = np.array([1 - math.prod(1 - min(1.0, 100 / counts[q]) for q in qs) for qs in lists])
    kept = []
    for seed in range(20):
        balance.candidates(str(src), str(tmp_path / f"c{seed}.parquet"), counts, 100, seed, "metaclip")
        kept.append(pq.read_table(tmp_path / f"c{seed}.parquet").column("selected_by").is_valid()
                    .to_numpy(zero_copy_only=False).sum())
    mean, var = p.sum(), (p * (1 - p)).sum()
    assert abs(np.mean(kept) - mean) <= 4 * math.sqrt(var / len(kept))
    assert 0.5 * var <= np.var(kept, ddof=1) <= 2.0 * var


def test_cutoff_shortcut_never_changes_the_result():
    # Priorities bunched at the top of the range defeat the "skip far-away candidates"
    # shortcut; the query must then be redone in full and still get the exact k-th.
    import duckdb
    con = duckdb.connect()
    n, k = 5000, 40
    con.execute(f"""CREATE TABLE cand AS SELECT
        (i % 2)::INTEGER AS selected_by,
        CASE WHEN i % 2 = 0 THEN 9223372036854775807 - i * 1000   -- adversarial
             ELSE (hash(i) >> 1)::BIGINT END AS priority,          -- uniform-looking
        printf('%016x', i) AS uid
        FROM range({n}) t(i)""")
    balance._cutoffs(con, k)
    got = dict(con.execute("SELECT query_id, priority FROM cutoff").fetchall())
    want = dict(con.execute(f"""SELECT selected_by, priority FROM (SELECT selected_by, priority,
        row_number() OVER (PARTITION BY selected_by ORDER BY priority, uid) AS rn FROM cand)
        WHERE rn = {k}""").fetchall())
    assert got == want and len(got) == 2


def test_bad_settings_and_missing_stages(build):
    with pytest.raises(WitError, match="--per-query 0: must be at least 1"):
        balance.run(balance.Config(per_query=0), build)
    with pytest.raises(WitError, match="--mode 'fair'"):
        balance.run(balance.Config(mode="fair"), build)
    with pytest.raises(WitError, match="match stage has not finished"):
        balance.run(balance.Config(), build)


@pytest.mark.slow
def test_cli_prints_before_and_after(skewed, capsys):
    assert cli.main(["balance", "--per-query", str(K), "--seed", "9", "--out", str(skewed[0])]) == 0
    out = capsys.readouterr().out
    assert "[balance]" in out and "queries_over_cap_after: 0" in out
    assert "per_query_before: {'max':" in out and "tail_share_after:" in out
    assert cli.main(["balance", "--memory-limit", "lots", "--out", str(skewed[0])]) == 2
    assert "--memory-limit 'lots'" in capsys.readouterr().err
