"""The build directory, its catalog, stage plumbing and the CLI around them."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import StageOutput, committed, read_record, run_stage
from wit_builder.errors import WitError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def numbers_stage(build, n=10, force=False, calls=None):
    """A small real stage: writes n rows of Parquet under numbers/."""
    def work(ctx):
        if calls is not None:
            calls.append(ctx.params)
        out = ctx.output("numbers")
        pq.write_table(pa.table({"x": list(range(n)), "sq": [i * i for i in range(n)]}),
                       out / "part-00000.parquet")
        return StageOutput(rows=n, summary={"max": n - 1})
    return run_stage(build, "numbers", {"n": n}, work, outputs=["numbers"],
                     views={"numbers": "numbers/*.parquet"}, force=force)


def sql(build, query, *extra, capsys):
    code = cli.main(["sql", query, "--out", str(build), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_catalog_round_trip(build, capsys):
    res = numbers_stage(build, n=10)
    assert res.rows == 10 and not res.skipped
    code, out, _ = sql(build, "SELECT sum(sq) AS total FROM numbers", capsys=capsys)
    assert code == 0 and "285" in out
    stages = catalog.query(build, "SELECT stage, rows, status, parameters FROM stages").to_pylist()
    assert stages == [{"stage": "numbers", "rows": 10, "status": "done", "parameters": '{"n":10}'}]


def test_moved_build_directory_still_answers(build, tmp_path, capsys):
    numbers_stage(build, n=5)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(build, moved)
    shutil.rmtree(build)
    code, out, err = sql(moved, "SELECT count(*) AS n FROM numbers", capsys=capsys)
    assert code == 0, err
    assert out.splitlines()[2].strip() == "5"


def test_write_statements_are_refused(build, capsys):
    numbers_stage(build)
    for statement in ["DROP VIEW numbers", "CREATE TABLE t AS SELECT 1",
                      "SELECT 1; DELETE FROM numbers", "COPY numbers TO 'x.csv'",
                      "ATTACH 'other.duckdb'"]:
        code, out, err = sql(build, statement, capsys=capsys)
        assert code == 2, statement
        assert "read-only" in err and "Traceback" not in err
    code, out, _ = sql(build, "SELECT count(*) FROM numbers", capsys=capsys)
    assert code == 0 and "10" in out


def test_sql_output_formats(build, tmp_path, capsys):
    numbers_stage(build, n=3)
    q = "SELECT x, sq FROM numbers ORDER BY x"
    assert sql(build, q, "--format", "csv", capsys=capsys)[1].splitlines() == ['"x","sq"', "0,0", "1,1", "2,4"]
    lines = sql(build, q, "--format", "json", capsys=capsys)[1].splitlines()
    assert [json.loads(line) for line in lines][2] == {"x": 2, "sq": 4}
    out = tmp_path / "r.parquet"
    assert sql(build, q, "--format", "parquet", "--output", str(out), capsys=capsys)[0] == 0
    assert pq.read_table(out).column("sq").to_pylist() == [0, 1, 4]
    code, _, err = sql(build, q, "--format", "parquet", capsys=capsys)
    assert code == 2 and "--output" in err


def test_same_parameters_skip_force_reruns(build):
    calls = []
    first = numbers_stage(build, calls=calls)
    again = numbers_stage(build, calls=calls)
    assert again.skipped and again.run_id == first.run_id and len(calls) == 1
    forced = numbers_stage(build, force=True, calls=calls)
    assert not forced.skipped and forced.run_id != first.run_id and len(calls) == 2
    changed = numbers_stage(build, n=4, calls=calls)
    assert not changed.skipped and changed.rows == 4 and len(calls) == 3


def test_downstream_reruns_when_upstream_reruns(build):
    numbers_stage(build)

    def work(ctx):
        out = ctx.output("doubled")
        pq.write_table(pa.table({"y": [1]}), out / "part-0.parquet")
        return StageOutput(rows=1)

    kw = dict(outputs=["doubled"], views={"doubled": "doubled/*.parquet"}, inputs=("numbers",))
    a = run_stage(build, "doubled", {}, work, **kw)
    assert run_stage(build, "doubled", {}, work, **kw).skipped
    numbers_stage(build, force=True)
    b = run_stage(build, "doubled", {}, work, **kw)
    assert not b.skipped and b.run_id != a.run_id


def test_missing_upstream_is_a_clear_error(build):
    with pytest.raises(WitError, match="run wit-build numbers first"):
        run_stage(build, "doubled", {}, lambda ctx: StageOutput(0), outputs=["doubled"],
                  views={}, inputs=("numbers",))


KILLABLE = textwrap.dedent("""
    import sys, time, pyarrow as pa, pyarrow.parquet as pq
    from wit_builder.build.stage import run_stage, StageOutput
    def work(ctx):
        out = ctx.output("numbers")
        pq.write_table(pa.table({"x": [1]}), out / "part-00000.parquet")
        (ctx.work / "chunk-0.done").write_text("1")
        print("half-written", flush=True)
        time.sleep(60)
        return StageOutput(rows=1)
    run_stage(sys.argv[1], "numbers", {"n": 10}, work, outputs=["numbers"],
              views={"numbers": "numbers/*.parquet"})
""")


def test_killed_stage_is_redone_not_skipped(build):
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(build)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half-written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_record(build, "numbers") is None
    assert not (build / "numbers").exists()           # nothing that looks finished
    assert list((build / "_tmp").glob("numbers-*"))   # the temporaries are left behind
    res = numbers_stage(build, n=10)
    assert not res.skipped and res.rows == 10
    assert not list((build / "_tmp").glob("numbers-*"))
    assert catalog.query(build, "SELECT count(*) AS n FROM numbers").to_pylist() == [{"n": 10}]


def test_malformed_parquet_is_a_clear_error(build, capsys):
    numbers_stage(build)
    (committed(build, "numbers") / "part-00000.parquet").write_bytes(b"PAR1 this is not parquet")
    code, _, err = sql(build, "SELECT * FROM numbers", capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert "part-00000.parquet" in err


def test_bad_build_directory_is_a_clear_error(tmp_path, capsys):
    code, _, err = sql(tmp_path / "nope", "SELECT 1", capsys=capsys)
    assert code == 2 and "no catalog here" in err and "--out" in err
    assert cli.main(["stats", "--out", str(tmp_path / "nope")]) == 2
    assert cli.main(["catalog", "rebuild", "--out", str(tmp_path / "nope")]) == 2
    assert "no such build directory" in capsys.readouterr().err


def test_catalog_rebuild_recreates_views(build, capsys):
    numbers_stage(build, n=7)
    (build / "catalog.duckdb").unlink()
    assert cli.main(["catalog", "rebuild", "--out", str(build)]) == 0
    assert "numbers" in capsys.readouterr().out
    assert catalog.query(build, "SELECT count(*) AS n FROM numbers").to_pylist() == [{"n": 7}]


def test_stats_lists_each_stage(build, capsys):
    numbers_stage(build, n=7)
    assert cli.main(["stats", "--out", str(build)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("numbers")][0]
    assert "done" in line and " 7 " in line


def _console(name, *args):
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    out = _console("wit-build", "--help")
    assert out.returncode == 0
    for command in ["sql", "stats", "catalog"] + [n for n in cli.pipeline.STAGES
                                                   if cli.pipeline.available(n)]:
        assert command in out.stdout
    train = _console("wit-train", "--help")
    if train.returncode == 0:
        assert "eval" in train.stdout


def test_user_mistake_exits_2_without_traceback(tmp_path):
    out = _console("wit-build", "sql", "SELEC nonsense", "--out", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.startswith("error:")
    verbose = _console("wit-build", "sql", "SELECT 1", "--out", str(tmp_path / "x"), "--verbose")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_output_piped_into_head_stops_quietly(build):
    """`wit-build sql ... | head` is how people peek at a big result: no traceback."""
    numbers_stage(build, n=3)
    query = "SELECT range AS x FROM range(300000)"
    for fmt, head in [("table", ["x", "------"]), ("csv", ['"x"', "0"]), ("json", ['{"x": 0}', '{"x": 1}'])]:
        out = subprocess.run(f"'{BIN / 'wit-build'}' sql '{query}' --out '{build}' --max-rows "
                             f"300000 --format {fmt} | head -2", shell=True, capture_output=True,
                             text=True, timeout=120)
        assert [line.strip() for line in out.stdout.splitlines()] == head, fmt
        assert out.stderr == "", fmt


def test_ray_session_starts_and_joins(ray_cluster):
    import ray

    from wit_builder.build.cluster import cpus, ensure_ray
    ensure_ray()  # joins the running session instead of starting another
    assert ray.is_initialized() and cpus() >= 1
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42


def test_stopping_a_private_ray_kills_its_idle_autoscaler_first(tmp_path):
    """cluster.shutdown stops the autoscaler monitor of a Ray the command started before
    ray.shutdown (which would stop it last, after the GCS, and wait for it), and every
    process that Ray started is gone afterwards."""
    script = textwrap.dedent("""
        import json, sys
        import ray
        from ray._private import ray_constants, worker
        from wit_builder.build import cluster
        cluster.ensure_ray(num_cpus=1)
        assert ray.get(ray.remote(lambda: 7).remote()) == 7
        node = worker._global_node
        monitor = [i.process for i in node.all_processes[ray_constants.PROCESS_TYPE_MONITOR]]
        started = [i.process for infos in node.all_processes.values() for i in infos]
        seen = {}
        real = ray.shutdown
        def shutdown(*a, **k):
            seen["monitor_alive"] = [p.poll() is None for p in monitor]
            real(*a, **k)
        ray.shutdown = shutdown
        cluster.shutdown()
        seen["left"] = [p.pid for p in started if p.poll() is None]
        print(json.dumps(seen))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                         cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "",
                                            "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"monitor_alive": [False], "left": []}
    assert "autoscaler failed" not in out.stderr
