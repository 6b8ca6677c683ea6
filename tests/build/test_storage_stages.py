"""queries -> pool -> match -> balance with the build and every input in S3 (moto's server
on loopback): the same query list and the same selection as a local build of the world."""
from __future__ import annotations

import gzip
import shutil

import pyarrow.parquet as pq
import pytest

from wit_builder import storage
from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed, read_record
from wit_builder.demo.world import make_world

pytestmark = pytest.mark.usefixtures("ray_cluster")
STAGES = ("queries", "pool", "match", "balance")


@pytest.fixture(scope="module", autouse=True)
def local_cache(tmp_path_factory):
    """Staging, scratch and catalogs of the remote builds in a folder of the test's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The test world, with a gzipped TSV of its pool and a blocklist of one concept."""
    w = make_world(tmp_path_factory.mktemp("world"), size="test", seed=0)
    with open(w.pool_tsv, "rb") as f, gzip.open(w.root / "pool.tsv.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    (w.root / "blocklist.txt").write_text(f"# never a query\n{w.frequent_concepts[0]}\n")
    return w


@pytest.fixture(scope="module")
def inputs(world, s3_server):
    """Where each input is: local paths, and the same files uploaded to s3://inputs/world/."""
    base = s3_server.bucket("inputs") + "/world"
    fs = storage.location(base).fs
    for f in world.root.rglob("*"):
        if f.is_file() and "eval" not in f.relative_to(world.root).parts:
            fs.put_file(str(f), f"inputs/world/{f.relative_to(world.root).as_posix()}")

    def where(root: str) -> dict[str, str]:
        return {"wiki": f"{root}/{world.wiki_dump.name}", "wordnet": f"{root}/wordnet",
                "pageviews": f"{root}/{world.pageviews.name}", "blocklist": f"{root}/blocklist.txt",
                "pool": [f"{root}/pool/{world.pool_parquet.name}", f"{root}/pool.tsv.gz"]}
    return {"local": where(str(world.root)), "s3": where(base)}


def commands(world, src: dict, out: str) -> list[list[str]]:
    """The four stages' command lines, inputs from `src`, the build at `out`."""
    return [
        ["queries", "--wiki", src["wiki"], "--wordnet", src["wordnet"], "--pageviews",
         src["pageviews"], "--blocklist", src["blocklist"], "--min-freq", str(world.min_freq),
         "--min-views", str(world.pageview_min), "--chunk-mb", "0.002", "--out", out],
        ["pool", "--pool", *src["pool"], "--pool-parts", "3", "--out", out],
        ["match", "--workers", "2", "--batch-size", "100", "--out", out],
        ["balance", "--per-query", "20", "--seed", "5", "--out", out],
    ]


def build_all(world, src: dict, out: str, capsys) -> str:
    for argv in commands(world, src, out):
        assert cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def local(world, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "wit-data"
    for argv in commands(world, inputs["local"], str(out)):
        assert cli.main(argv) == 0
    return out


def answers(build) -> dict:
    """What a user compares between two builds: the query list, the pool, the matches and
    the selection."""
    def q(sql):
        return catalog.query(build, sql).to_pylist()
    return {
        "queries": q("SELECT query_id, query, sources, wiki_count, pmi, pageviews FROM queries "
                     "ORDER BY query_id"),
        "pool": q("SELECT uid, url, text FROM pool ORDER BY uid"),
        "matches": q("SELECT uid, query_ids FROM matches ORDER BY uid"),
        "match_counts": q("SELECT * FROM match_counts ORDER BY query_id"),
        "selected": q("SELECT uid, url, text, query_ids, selected_by FROM selected ORDER BY uid"),
        "balance_counts": q("SELECT * FROM balance_counts ORDER BY query_id"),
    }


def test_s3_build_from_s3_inputs_equals_the_local_build(world, inputs, local, s3_build, capsys):
    build_all(world, inputs["s3"], s3_build, capsys)
    got, want = answers(s3_build), answers(local)
    assert len(want["queries"]) > 20 and len(want["selected"]) > 20
    assert world.frequent_concepts[0] not in {r["query"] for r in want["queries"]}  # blocklist read
    assert {r["query"] for r in want["queries"]} >= set(world.frequent_concepts[1:])
    assert got == want
    # The query list is the same file, byte for byte.
    with (committed(s3_build, "queries") / "queries.parquet").open("rb") as f:
        assert pq.read_table(f).equals(pq.read_table(committed(local, "queries") / "queries.parquet"))
    # Run-scoped outputs, the record names them, and the resume state is gone.
    root = storage.location(s3_build)
    for stage, output in (("queries", "queries"), ("pool", "pool"), ("match", "matches"),
                          ("balance", "selected")):
        rec = read_record(root, stage)
        assert rec["outputs"] == {output: f"{output}/{rec['run_id']}"}
        assert [p.name for p in (root / output).iterdir()] == [rec["run_id"]]
    assert not (root / "_work").exists()
    s = read_record(root, "queries")["summary"]["input"]
    assert s["chunks_counted"] > 3 and s["chunks_reused"] == 0
    assert read_record(root, "match")["summary"]["automata_built"] <= 2   # once per worker

    # A rerun of the same commands skips every stage.
    out = build_all(world, inputs["s3"], s3_build, capsys)
    assert [line.split("]")[0][1:] for line in out.splitlines() if line.startswith("[")] == \
        ["queries", "pool", "match", "balance"]
    assert out.count("already done with the same parameters") == 4

    # `wit-build sql` answers on the s3 build.
    assert cli.main(["sql", "SELECT count(*) AS n FROM selected", "--out", s3_build]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == str(len(want["selected"]))


def test_local_build_from_s3_inputs_equals_the_local_build(world, inputs, local, tmp_path, capsys):
    out = tmp_path / "mixed"
    build_all(world, inputs["s3"], str(out), capsys)
    assert answers(out) == answers(local)
    assert pq.read_table(committed(out, "queries") / "queries.parquet").equals(
        pq.read_table(committed(local, "queries") / "queries.parquet"))


def test_a_killed_match_resumes_from_its_parts_in_the_bucket(world, inputs, s3_build, capsys,
                                                            monkeypatch):
    """Parts finished before a kill are in the build, so a rerun (from any machine) keeps them."""
    from wit_builder.build import cluster
    for argv in commands(world, inputs["s3"], s3_build)[:2]:
        assert cli.main(argv) == 0
    root = storage.location(s3_build)
    real = cluster.run_units

    def stop_after_two(fn, units, desc, **kw):
        kw["in_flight"] = 1
        units = iter(units)
        real(fn, [next(units), next(units)], desc, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "run_units", stop_after_two)
    assert cli.main(commands(world, inputs["s3"], s3_build)[2]) == 130
    parts = list(root.glob("_work/match-*/parts/*.parquet"))
    assert len(parts) == 2 and read_record(root, "match") is None
    ran = []

    def count_units(fn, units, desc, **kw):
        units = list(units)
        ran.extend(units)
        return real(fn, units, desc, **kw)

    monkeypatch.setattr(cluster, "run_units", count_units)
    assert cli.main(commands(world, inputs["s3"], s3_build)[2]) == 0
    assert "[match]" in capsys.readouterr().out
    n_parts = len(list(committed(s3_build, "match", "matches").glob("part-*.parquet")))
    assert n_parts == 3 and len(ran) == 1   # --pool-parts 3: one row group each


@pytest.mark.parametrize("flag,value,what", [
    ("--pool", "nope.tsv", "no such object or prefix"),
    ("--pool", "nope/", "no such object or prefix"),
    ("--wiki", "nope.xml.bz2", "no such object or prefix"),
    ("--pageviews", "nope.gz", "no such object or prefix"),
    ("--wordnet", "nope", "no such folder"),
    ("--blocklist", "nope.txt", "no such file"),
])
def test_a_missing_object_is_one_error_line_naming_the_url(world, inputs, s3_server, s3_build,
                                                           capsys, flag, value, what):
    bucket = s3_server.bucket("inputs")
    url = f"{bucket}/{value}"
    if flag == "--pool":
        argv = ["pool", "--pool", url, "--out", s3_build]
    else:
        src = dict(inputs["s3"], **{flag[2:]: url})
        argv = commands(world, src, s3_build)[0]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {flag} {url}"), err
    assert what in err and "Traceback" not in err
    assert not storage.location(s3_build).exists() or read_record(storage.location(s3_build),
                                                                   argv[0]) is None


def test_a_missing_bucket_is_one_error_line(s3_server, s3_build, capsys):
    assert cli.main(["pool", "--pool", "s3://no-such-inputs/p.tsv", "--out", s3_build]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: --pool s3://no-such-inputs/p.tsv: the bucket no-such-inputs "
                          "does not exist")


def test_bad_files_in_the_bucket_are_named_by_their_url(world, inputs, s3_server, s3_build, capsys):
    """A task that finds the user's mistake on another machine reports it as one line."""
    bucket = s3_server.bucket("inputs")
    fs = storage.location(bucket).fs
    fs.pipe_file("inputs/bad/broken.parquet", b"not parquet at all")
    fs.pipe_file("inputs/bad/cut.xml.bz2", world.wiki_dump.read_bytes()[:-200])
    assert cli.main(["pool", "--pool", f"{bucket}/bad/broken.parquet", "--out", s3_build]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bucket}/bad/broken.parquet: not a readable Parquet file")
    src = dict(inputs["s3"], wiki=f"{bucket}/bad/cut.xml.bz2")
    assert cli.main(commands(world, src, s3_build)[0]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bucket}/bad/cut.xml.bz2: truncated: the file ends inside "
                          "the bz2 block") and "Traceback" not in err
