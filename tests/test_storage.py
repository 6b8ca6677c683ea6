"""The storage layer and the stage commit on a real S3 API (moto's server on loopback)."""
from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wit_builder import storage
from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.records import records
from wit_builder.build.stage import StageOutput, committed, read_record, run_stage
from wit_builder.errors import WitError


def numbers_stage(build, n=10, force=False):
    def work(ctx):
        out = ctx.output("numbers")
        pq.write_table(pa.table({"x": list(range(n))}), out / "part-00000.parquet")
        return StageOutput(rows=n, summary={"max": n - 1})
    return run_stage(build, "numbers", {"n": n}, work, outputs=["numbers"],
                     views={"numbers": "numbers/*.parquet"}, force=force)


def test_local_paths_and_file_urls_are_one_location(tmp_path):
    assert storage.location(f"file://{tmp_path}/b") == storage.location(tmp_path / "b")
    assert not storage.is_remote(storage.location("relative/dir"))
    assert str(storage.location("relative/dir")).startswith("/")


def test_unknown_scheme_names_the_package(tmp_path):
    with pytest.raises(WitError, match="no filesystem for nosuch://"):
        storage.location("nosuch://bucket/x")


def test_stage_commits_to_a_run_scoped_prefix_and_collects_the_old_one(s3_build, capsys):
    first = numbers_stage(s3_build, n=3)
    rec = read_record(storage.location(s3_build), "numbers")
    assert rec["outputs"] == {"numbers": f"numbers/{first.run_id}"}
    assert rec["views"] == {"numbers": f"numbers/{first.run_id}/*.parquet"}
    assert numbers_stage(s3_build, n=3).skipped
    second = numbers_stage(s3_build, n=4)
    build = storage.location(s3_build)
    assert [p.name for p in (build / "numbers").iterdir()] == [second.run_id]
    assert str(committed(s3_build, "numbers")).startswith("s3://")
    assert catalog.query(s3_build, "SELECT count(*) AS n FROM numbers").to_pylist() == [{"n": 4}]
    assert cli.main(["sql", "SELECT max(x) AS m FROM numbers", "--out", s3_build]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "3"
    assert [r["stage"] for r in records(s3_build)] == ["numbers"]


def test_missing_bucket_and_bad_credentials_are_one_line(s3_server, monkeypatch, capsys):
    assert cli.main(["sql", "SELECT 1", "--out", "s3://no-such-bucket-here/b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no-such-bucket-here does not exist" in err
    url = s3_server.bucket("creds") + "/b"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    code = subprocess.run([sys.executable, "-m", "wit_builder.app.cli", "sql", "SELECT 1", "--out", url,
                           "--storage-options", '{"config_kwargs": {"retries": {"max_attempts": 1}}}'],
                          capture_output=True, text=True, timeout=120, env={
                              **__import__("os").environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert code.returncode == 2 and "Traceback" not in code.stderr
    assert "cannot reach the store" in code.stderr and "AWS_ENDPOINT_URL" in code.stderr


def test_bad_storage_options_name_the_flag(capsys):
    assert cli.main(["sql", "SELECT 1", "--storage-options", "{nope", "--out", "/tmp/x"]) == 2
    assert "--storage-options" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_commit_collects_what_killed_runs_left(where, build, request):
    url = str(build) if where == "local" else request.getfixturevalue("s3_build")
    root = storage.location(url)
    numbers_stage(url, n=2)
    # what a run killed mid-commit and a run with other settings leave behind
    storage.write_bytes(root / "numbers" / "0123456789ab" / "part-00000.parquet", b"half")
    storage.write_bytes(root / "_work" / "numbers-ffffffffffffffff" / "chunk-0.done", b"1")
    storage.write_bytes(root / "_work" / "other-0000000000000000" / "keep.me", b"1")
    res = numbers_stage(url, n=5)
    assert [p.name for p in (root / "numbers").iterdir()] == [res.run_id]
    assert [p.name for p in (root / "_work").iterdir()] == ["other-0000000000000000"]
    assert catalog.query(url, "SELECT count(*) AS n FROM numbers").to_pylist() == [{"n": 5}]


HOLD = """
import sys, time
from wit_builder.build import lock
lock.acquire(sys.argv[1], "wit-build fetch")
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_one_build_one_writer(where, build, request, capsys):
    """A second command on a build another command is writing is refused with a message
    naming the first; a killed holder's lock does not block the next command."""
    import signal
    url = str(build) if where == "local" else request.getfixturevalue("s3_build")
    numbers_stage(url, n=3)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(WitError, match=r"in use by another wit command \(wit-build fetch, pid"):
            numbers_stage(url, n=4)
        assert cli.main(["curate", "--out", url]) == 2
        assert "in use by another wit command" in capsys.readouterr().err
        assert catalog.query(url, "SELECT count(*) AS n FROM numbers").to_pylist() == [{"n": 3}]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert numbers_stage(url, n=4).rows == 4  # the killed holder's lock was stale
    if where == "s3":  # another machine's lock holds until its heartbeat is old
        from wit_builder.build import lock
        path = storage.location(url) / lock.LOCK_NAME
        rec = {"token": "x", "host": "another-machine", "pid": 1, "command": "wit-build fetch",
               "started": 0, "heartbeat": __import__("time").time()}
        storage.write_json(path, rec)
        with pytest.raises(WitError, match="on another-machine"):
            numbers_stage(url, n=5)
        storage.write_json(path, {**rec, "heartbeat": rec["heartbeat"] - lock.STALE_S - 1})
        assert numbers_stage(url, n=5).rows == 5
    assert not (storage.location(url) / "_lock.json").exists()
