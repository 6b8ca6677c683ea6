"""Hostile servers, hostile SQL, broken inputs (issue #14): each met as a careless or
hostile user would meet it, checking the message, the exit status and that nothing
written before is lost."""
from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.fetch import Sample, encode, make_fetch, picture, write_selected
from wit_builder.app import cli
from wit_builder.build import catalog
from wit_builder.build.stage import committed
from wit_builder.demo import imageserver
from wit_builder.stages.fetch import fetch
from wit_builder.stages.fetch.netguard import DEADLINE_FACTOR, Fetcher, Policy, address_problem
from wit_builder.stages.pool import pool

SCENE = "1-red-circle-plain-white-0"
GOOD = [f"1-{c}-{t}-plain-white-{i}" for i, (c, t) in enumerate(
    (c, t) for c in ("red", "blue") for t in ("circle", "star", "square"))]


def wit(*argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------------
# 1. A slow server costs one image, not a shard.

@pytest.mark.parametrize("drip", imageserver.DRIPS)
def test_a_dripping_server_is_cut_off_at_the_deadline(drip):
    timeout = 1.0
    fetcher = Fetcher(Policy(timeout=timeout, retries=0, allow_private_network=True))
    with imageserver.serve() as srv:
        path = f"/drip/{drip}/img/{SCENE}.jpg"
        start = time.monotonic()
        data, status, error = fetcher.fetch(srv.url(path))
        took = time.monotonic() - start
        # the same thread and host serve the next image at once
        assert fetcher.fetch(srv.url(f"/img/{SCENE}.jpg"))[1] == "success"
        deadline = time.monotonic() + 5
        while not srv.held(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        held = srv.held(path)
    fetcher.close()
    assert (data, status) == (None, "timeout")
    assert f"{DEADLINE_FACTOR} x --timeout" in error and "connect to last byte" in error
    assert DEADLINE_FACTOR * timeout - 0.2 <= took < 3 * timeout, took
    assert held and held[0] < 3 * timeout + 0.5, held   # the server saw the client leave


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return key, cert


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs the openssl command")
def test_a_tls_server_dripping_headers_meets_the_same_deadline(tmp_path):
    key, cert = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve_one():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                for _ in range(600):   # at most 60 s
                    if stop.wait(0.1):
                        break
                    tls.sendall(b"z")
        except OSError:   # the client hung up (or refused the handshake)
            pass

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    fetcher = Fetcher(Policy(timeout=1.0, retries=0, allow_private_network=True))
    trusting = ssl.create_default_context(cafile=str(cert))   # trust our own certificate
    trusting.sslsocket_class = fetcher._tls.sslsocket_class   # the deadline-keeping socket
    fetcher._tls = trusting
    start = time.monotonic()
    try:
        _, status, error = fetcher.fetch(f"https://127.0.0.1:{port}/img.jpg")
    finally:
        stop.set()
        t.join(10)
        listener.close()
    took = time.monotonic() - start
    assert status == "timeout" and "connect to last byte" in error, error
    assert took < 3.0, took


@pytest.mark.slow
def test_a_dripping_url_costs_its_shard_nothing(build, ray_cluster):
    """--timeout 2: each dripping URL ends as `timeout` within 3x the timeout and every good
    image in its shard (one shard holds them all) is stored."""
    timeout = 2.0
    with imageserver.serve() as srv:
        good = [srv.url(f"/img/{s}.jpg") for s in GOOD]
        drips = {d: srv.url(f"/drip/{d}/img/{GOOD[0]}.jpg") for d in imageserver.DRIPS}
        uids = write_selected(build, good[:3] + list(drips.values()) + good[3:])
        start = time.monotonic()
        res = fetch.run(fetch.Config(image_size=32, timeout=timeout, retries=0, threads=4,
                                     fetch_shard_size=len(uids), shards_in_flight=1,
                                     allow_private_network=True, per_host_rps=0), build)
        wall = time.monotonic() - start
        time.sleep(0.5)
        held = {d: srv.held(u) for d, u in drips.items()}
    rows = pq.read_table(committed(build, "fetch") / "status").to_pylist()
    assert sorted(r["uid"] for r in rows) == sorted(uids)
    by_url = {r["url"]: r for r in rows}
    assert res.summary["shards"] == 1
    assert all(by_url[u]["status"] == "success" for u in good), [by_url[u]["error"] for u in good]
    for d, url in drips.items():
        assert by_url[url]["status"] == "timeout", (d, by_url[url]["error"])
        assert held[d] and max(held[d]) < 3 * timeout, (d, held[d])
    print(f"drip held (s): {held}; fetch wall {wall:.1f} s")


# ----------------------------------------------------------------------------------
# 2. Bad URLs and addresses hidden in IPv6 forms.

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/a b.jpg", "http://127.0.0.1/a\x00b.jpg", "http://127.0.0.1/a.jpg\r\nX-Evil: 1",
    "http://127.0.0.1/a\nb.jpg", "http://exa\x00mple.com/a.jpg", "http://example.com/\x7f.jpg"])
def test_urls_with_spaces_or_control_characters_are_bad_urls(url):
    # never sent: the check comes before any connection (and private addresses are refused)
    data, status, error = Fetcher(Policy(timeout=1, retries=3)).fetch(url)
    assert (data, status) == (None, "bad_url") and "percent-encode" in error


@pytest.mark.parametrize("ip, problem", [
    ("2002:7f00:1::1", "loopback (6to4 of 127.0.0.1)"),
    ("2002:a00:1::", "private (6to4 of 10.0.0.1)"),
    ("2002:c0a8:101::5", "private (6to4 of 192.168.1.1)"),
    ("2002:a9fe:a9fe::", "link-local (6to4 of 169.254.169.254)"),
    ("fec0::1", "site-local"), ("feff:ffff::1", "site-local"),
    ("64:ff9b::a9fe:a9fe", "link-local (NAT64 of 169.254.169.254)"),
    ("::ffff:10.0.0.1", "private"),
    ("2002:808:808::1", None), ("64:ff9b::808:808", None), ("2606:4700::1111", None)])
def test_ipv4_inside_ipv6_forms_is_judged_by_the_ipv4(ip, problem):
    assert address_problem(ip) == problem


# ----------------------------------------------------------------------------------
# 3. Read-only SQL is read-only.

HOSTILE_CAPTION = "a red circle \x1b[2J\x1b]0;pwned\x07 \u202eevil"


@pytest.fixture
def samples_build(build):
    jpg = encode(picture(1, 64, 48))
    make_fetch(build, [Sample(f"http://example.com/{i}.jpg", f"caption {i}", jpg) for i in range(4)]
               + [Sample("http://example.com/x.jpg", HOSTILE_CAPTION, jpg)], shards=1)
    return build


def count_samples(build) -> int:
    return catalog.query(build, "SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]


@pytest.mark.parametrize("statement", [
    "EXPLAIN ANALYZE COPY (SELECT * FROM samples) TO '{status}/evil.parquet'",
    "EXPLAIN ANALYZE COPY (SELECT * FROM samples) TO '{tmp}/evil.parquet'",
    "EXPLAIN (FORMAT json) COPY (SELECT * FROM samples) TO '{status}/evil.parquet'",
    "EXPLAIN -- a comment\n ANALYZE /* another /* nested */ */ COPY samples TO '{status}/evil.csv'",
    "EXPLAIN ANALYZE INSTALL httpfs", "EXPLAIN ANALYZE LOAD httpfs",
    "EXPLAIN ANALYZE SET enable_external_access = true",
    "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", "EXPLAIN ANALYZE CHECKPOINT",
    "SELECT 1; EXPLAIN ANALYZE COPY samples TO '{status}/evil.parquet'",
    "CREATE TABLE t AS PIVOT samples ON status USING count(*)",
    "EXPLAIN ANALYZE CREATE TABLE t AS PIVOT samples ON status USING count(*)",
    "WITH s AS (SELECT * FROM samples) INSERT INTO t PIVOT s ON status USING count(*)",
    "INSTALL httpfs", "SET threads = 1", "CALL pragma_version()"])
def test_writes_hidden_in_explain_and_pivot_are_refused(samples_build, tmp_path, statement, capsys):
    status = committed(samples_build, "fetch") / "status"
    before = sorted(p.name for p in status.iterdir())
    sql = statement.format(status=status, tmp=tmp_path)
    code, out, err = wit("sql", sql, "--out", samples_build, capsys=capsys)
    assert code == 2 and err.startswith("error:") and "read-only" in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in status.iterdir()) == before
    assert not (tmp_path / "evil.parquet").exists()
    assert count_samples(samples_build) == 5


def test_pivot_and_other_queries_run(samples_build, capsys):
    for q in ["PIVOT samples ON status USING count(*)", "EXPLAIN ANALYZE PIVOT samples ON status USING count(*)",
              "PIVOT (WITH s AS (SELECT * FROM samples) SELECT * FROM s) ON status USING count(*)",
              "EXPLAIN (FORMAT json) SELECT 1", "EXPLAIN ANALYZE (SELECT count(*) FROM samples)",
              "SUMMARIZE samples", "DESCRIBE samples", "FROM samples LIMIT 1"]:
        code, out, err = wit("sql", q, "--out", samples_build, capsys=capsys)
        assert code == 0, (q, err)
    code, out, _ = wit("sql", "PIVOT (SELECT status FROM samples) ON status USING count(*)",
                       "--out", samples_build, capsys=capsys)
    assert out.splitlines()[0].split() == ["success"] and out.splitlines()[2].split() == ["5"]


def test_sql_reads_only_the_build_and_loads_no_extension(samples_build, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labels.csv").write_text("uid,label\n" + "".join(
        f"{u},label{i}\n" for i, u in enumerate(catalog.query(
            samples_build, "SELECT uid FROM samples ORDER BY uid")["uid"].to_pylist())))
    for q in ["SELECT * FROM read_text('/etc/hostname')", f"SELECT * FROM '{mine}/labels.csv'",
              f"SELECT * FROM glob('{samples_build}/../*')",
              f"SELECT * FROM read_text('{samples_build}/../../../etc/hostname')"]:
        code, out, err = wit("sql", q, "--out", samples_build, capsys=capsys)
        assert code == 2 and err.startswith("error:") and "--allow-files" in err, (q, err)
    # files the build holds are readable by their names relative to it (docs/world.md)
    (samples_build / "world").mkdir()
    (samples_build / "world" / "truth.csv").write_text("k\n1\n2\n")
    code, out, err = wit("sql", "SELECT sum(k) AS s FROM 'world/truth.csv'", "--out", samples_build,
                         capsys=capsys)
    assert code == 0 and out.splitlines()[2].strip() == "3", err
    settings = catalog.query(samples_build, "SELECT current_setting('autoload_known_extensions') AS l, "
                             "current_setting('autoinstall_known_extensions') AS i, "
                             "current_setting('enable_external_access') AS e").to_pylist()
    assert settings == [{"l": False, "i": False, "e": False}]
    # --allow-files lets a user join their own files, by absolute or relative name
    q = (f"SELECT count(*) AS n FROM samples JOIN '{mine}/labels.csv' USING (uid)")
    code, out, err = wit("sql", q, "--allow-files", mine, "--out", samples_build, capsys=capsys)
    assert code == 0 and out.splitlines()[2].strip() == "5", err
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, out, err = wit("sql", "SELECT count(*) AS n FROM 'mine/labels.csv'", "--allow-files",
                             "mine/labels.csv", "--out", samples_build, capsys=capsys)
    finally:
        os.chdir(cwd)
    assert code == 0 and out.splitlines()[2].strip() == "5", err
    code, _, err = wit("sql", "SELECT 1", "--allow-files", tmp_path / "nope", "--out",
                       samples_build, capsys=capsys)
    assert code == 2 and "--allow-files" in err and "no such file" in err
    # the catalog is writable again for the stages that come next in the same process
    assert "samples" in catalog.refresh(samples_build)


def test_sql_on_an_s3_build_reads_only_that_build(s3_server, capsys):
    from wit_builder import storage
    from wit_builder.build.stage import StageOutput, run_stage
    url = s3_server.bucket("hardening-sql") + "/build"
    other = s3_server.bucket("hardening-other")
    storage.write_bytes(storage.location(other) / "secret.csv", b"a\n1\n")

    def work(ctx):
        pq.write_table(pa.table({"x": [1, 2, 3]}), ctx.output("numbers") / "part-0.parquet")
        return StageOutput(rows=3)
    run_stage(url, "numbers", {}, work, outputs=["numbers"], views={"numbers": "numbers/*.parquet"})
    code, out, err = wit("sql", "SELECT sum(x) AS s FROM numbers", "--out", url, capsys=capsys)
    assert code == 0 and out.splitlines()[2].strip() == "6", err
    code, out, err = wit("sql", f"SELECT * FROM read_csv('{other}/secret.csv')", "--out", url,
                         capsys=capsys)
    assert code == 2 and err.startswith("error:") and "--allow-files" in err, err


def test_csv_of_a_list_column_and_output_mistakes(samples_build, tmp_path, capsys):
    code, out, err = wit("sql", "SELECT uid, query_ids FROM samples ORDER BY uid", "--format", "csv",
                         "--out", samples_build, capsys=capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == '"uid","query_ids"' and lines[1].endswith('"[0]"')
    code, out, err = wit("sql", "SELECT * FROM samples", "--format", "csv", "--out", samples_build,
                         capsys=capsys)
    assert code == 0 and len(out.splitlines()) == 6, err
    kept = tmp_path / "kept.csv"
    kept.write_text("mine\n")
    for args in (["--output", tmp_path / "no" / "such" / "r.csv"], ["--output", tmp_path]):
        code, out, err = wit("sql", "SELECT * FROM samples", "--format", "csv", *args,
                             "--out", samples_build, capsys=capsys)
        assert code == 2 and err.startswith("error: --output") and "Traceback" not in err, err
    assert not (tmp_path / "no").exists() and kept.read_text() == "mine\n"
    code, _, err = wit("sql", "SELECT * FROM samples", "--format", "parquet", "--output",
                       tmp_path / "missing" / "r.parquet", "--out", samples_build, capsys=capsys)
    assert code == 2 and "does not exist" in err


def test_terminal_control_sequences_in_captions_are_escaped(samples_build, capsys):
    code, out, err = wit("sql", "SELECT text AS \"t\x1b[31m\" FROM samples WHERE text LIKE 'a red%'",
                         "--out", samples_build, capsys=capsys)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in out and "\\u202eevil" in out and "t\\x1b[31m" in out
    # JSON output keeps the exact text, escaped by JSON itself
    code, out, _ = wit("sql", "SELECT text FROM samples WHERE text LIKE 'a red%'", "--format", "json",
                       "--out", samples_build, capsys=capsys)
    assert "\x1b" not in out and json.loads(out)["text"] == HOSTILE_CAPTION


# ----------------------------------------------------------------------------------
# 4. Every pool-input mistake is one error line naming the file (and the row).

def _rows(n: int, start: int = 0) -> bytes:
    return b"".join(b"http://example.com/%d.jpg\tcaption %d\n" % (i, i) for i in range(start, start + n))


_deep_json = (b'{"url": "http://example.com/1.jpg", "text": "ok"}\n{"url": "http://example.com/2.jpg", '
              b'"text": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
_gz = gzip.compress(b"url\ttext\n" + _rows(20_000))

POOL_MISTAKES = [
    ("header.tsv", b"url\ttext\xff\n" + _rows(3), "header.tsv line 1: not UTF-8 (byte 0xff"),
    ("first.csv", b"http://example.com/1.jpg,caf\xe9\n", "first.csv line 1: not UTF-8"),
    ("garbage.tsv", bytes(range(256)) * 20, "garbage.tsv: binary data"),
    ("utf16.tsv", "url\ttext\nhttp://example.com/1.jpg\tcap\n".encode("utf-16"), "utf16.tsv: UTF-16 text"),
    ("utf16.jsonl", '{"url": "http://example.com/1.jpg", "text": "c"}\n'.encode("utf-16-le"),
     "utf16.jsonl: UTF-16 text"),
    ("fake.tsv.gz", b"url\ttext\n" + _rows(3), "fake.tsv.gz: named .gz but not gzip data"),
    ("fake.parquet.gz", b"PAR1 not really", "fake.parquet.gz: named .gz but not gzip data"),
    ("cut.tsv.gz", _gz[:len(_gz) // 2], "cut.tsv.gz: the gzip data is cut short or corrupt"),
    ("deep.jsonl", _deep_json, "deep.jsonl line 2: JSON nested deeper than the reader's limit of 1000"),
    ("dup.tsv", b"url\ttext\ttext\n" + b"http://example.com/1.jpg\ta\tb\n", "dup.tsv line 1: the header "
     "names column 'text' twice"),
    ("dup.csv", b"url,text,url\nhttp://example.com/1.jpg,a,b\n", "column 'url' twice"),
    ("dup.jsonl", b'{"url": "http://example.com/1.jpg", "text": "a", "text": "b"}\n',
     "dup.jsonl line 1: the key 'text' appears twice"),
]


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("name, content, message", POOL_MISTAKES, ids=[m[0] for m in POOL_MISTAKES])
def test_pool_input_mistakes_are_one_line_and_keep_the_old_pool(build, tmp_path, name, content,
                                                                message, capsys):
    good = tmp_path / "good.tsv"
    good.write_bytes(b"url\ttext\n" + _rows(5))
    assert wit("pool", "--pool", good, "--out", build, capsys=capsys)[0] == 0
    before = catalog.query(build, "SELECT count(*) AS n FROM pool").to_pylist()
    bad = tmp_path / name
    bad.write_bytes(content)
    code, out, err = wit("pool", "--pool", bad, "--out", build, capsys=capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert catalog.query(build, "SELECT count(*) AS n FROM pool").to_pylist() == before == [{"n": 5}]


@pytest.mark.usefixtures("ray_cluster")
def test_a_bad_byte_or_a_huge_row_deep_in_a_large_tsv(build, tmp_path, capsys):
    big = tmp_path / "big.tsv"
    huge = b"http://example.com/huge.jpg\t" + b"x" * (3 * pool.BLOCK_BYTES) + b"\n"
    big.write_bytes(b"url\ttext\n" + _rows(200_000) + b"http://example.com/bad.jpg\tcaf\xe9\n"
                    + _rows(1000, 200_000) + huge + _rows(1000, 201_000))
    code, out, err = wit("pool", "--pool", big, "--out", build, capsys=capsys)
    assert code == 2 and f"{big} line 200002: not UTF-8 (byte 0xe9" in err, err
    assert "--skip-broken-rows" in err
    big.write_bytes(b"url\ttext\n" + _rows(200_000) + huge + _rows(1000, 200_000))
    code, out, err = wit("pool", "--pool", big, "--out", build, capsys=capsys)
    assert code == 2 and f"{big} line 200002: longer than the reader's limit of 8 MB" in err, err
    big.write_bytes(b"url\ttext\n" + _rows(200_000) + b"http://example.com/bad.jpg\tcaf\xe9\n"
                    + _rows(1000, 200_000) + huge + _rows(1000, 201_000))
    code, out, err = wit("pool", "--pool", big, "--skip-broken-rows", "--out", build, capsys=capsys)
    assert code == 0, err
    assert "broken_rows_skipped: 2" in out and "rows: 202,000" in out.replace("202000", "202,000")
    assert catalog.query(build, "SELECT count(*) AS n FROM pool").to_pylist() == [{"n": 202_000}]


@pytest.mark.usefixtures("ray_cluster")
def test_deep_and_duplicate_json_lines_are_skippable(build, tmp_path, capsys):
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(_deep_json + b'{"url": "http://example.com/3.jpg", "text": "a", "text": "b"}\n'
                  + b'{"url": "http://example.com/4.jpg", "text": "fine"}\n')
    code, out, err = wit("pool", "--pool", f, "--skip-broken-rows", "--out", build, capsys=capsys)
    assert code == 0, err
    assert "broken_rows_skipped: 2" in out
    assert catalog.query(build, "SELECT text FROM pool ORDER BY text").to_pylist() == [
        {"text": "fine"}, {"text": "ok"}]


# ----------------------------------------------------------------------------------
# 5. Recipes, build folders and disks that are not what they should be.

def test_a_recipe_that_is_not_text_or_names_no_stage(tmp_path, capsys):
    binary = tmp_path / "model.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing here yet\n[build]\nout = 'x'\n")
    for recipe, message in ((binary, "not a text file (byte 0 is not UTF-8)"),
                            (empty, "names no stage, so it would do nothing"),
                            (tmp_path, "is a folder; give a .toml file")):
        code, out, err = wit("run", recipe, "--out", tmp_path / "b", capsys=capsys)
        assert code == 2 and err.startswith(f"error: recipe {recipe}: ") and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.usefixtures("ray_cluster")
def test_out_that_is_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("my notes\n")
    good = tmp_path / "good.tsv"
    good.write_bytes(b"url\ttext\n" + _rows(5))
    for argv in (("pool", "--pool", good), ("stats",), ("sql", "SELECT 1")):
        code, out, err = wit("--out", f, *argv, capsys=capsys)
        assert code == 2 and err == f"error: --out {f}: is a file, not a build directory; give a " \
                                    "folder (it is created if missing)\n", err
    assert f.read_text() == "my notes\n"


@pytest.mark.slow
def test_a_full_disk_is_one_error_line_and_the_finished_pool_stays(tmp_path):
    """A real full disk: a 1 MB tmpfs in a mount namespace of its own (root only)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private tmpfs")
    small, big = tmp_path / "small.tsv", tmp_path / "big.tsv"
    small.write_bytes(b"url\ttext\n" + _rows(5))
    big.write_bytes(b"url\ttext\n" + b"".join(
        b"http://h%d.example.com/%x.jpg\t%x %x %x\n" % (i % 500, i * 7919, i * 31, i * 131, i * 977)
        for i in range(120_000)))
    disk = tmp_path / "disk"
    disk.mkdir()
    wit_build = [sys.executable, "-m", "wit_builder.app.cli", "--out", str(disk / "b")]
    script = "\n".join([
        f"mount -t tmpfs -o size=1m tmpfs {disk} || exit 99",
        f"{shlex.join(wit_build + ['pool', '--pool', str(small)])} >/dev/null || exit 98",
        f"{shlex.join(wit_build + ['--force', 'pool', '--pool', str(big)])} 2>{tmp_path}/err; echo $? >{tmp_path}/rc",
        f"{shlex.join(wit_build + ['sql', 'SELECT count(*) AS n FROM pool', '--format', 'csv'])} >{tmp_path}/after",
    ])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", err
    assert err.startswith("error: the disk is full") and "rerun the same command" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "after").read_text().split() == ['"n"', "5"]   # the first pool is intact


def test_a_bad_memory_limit_is_refused_before_the_first_stage(tmp_path, capsys):
    good = tmp_path / "good.tsv"
    good.write_bytes(b"url\ttext\n" + _rows(5))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[pool]\npool = ["{good}"]\n[balance]\nmemory_limit = "lots"\n')
    code, out, err = wit("run", recipe, "--out", tmp_path / "b", capsys=capsys)
    assert code == 2 and err == (f"error: recipe {recipe} [balance]: memory_limit = 'lots': not a "
                                 "size DuckDB understands (e.g. 4GB, 500MB)\n"), err
    assert not (tmp_path / "b").exists()  # the pool stage, first in the recipe, never ran
    code, out, err = wit("pool", "--pool", good, "--memory-limit", "12 parsecs", "--out",
                         tmp_path / "b", capsys=capsys)
    assert code == 2 and err.startswith("error: --memory-limit '12 parsecs': not a size"), err


@pytest.mark.usefixtures("ray_cluster")
def test_downstream_of_a_rerun_stage_shows_as_stale(build, tmp_path, capsys):
    from tests.stages.match.test_match import write_pool_file, write_queries
    from wit_builder.app import report
    from wit_builder.stages.balance import balance
    from wit_builder.stages.match import match
    write_queries(build, ["red fox", "blue car"])
    src = write_pool_file(tmp_path / "pool.parquet", ["a red fox", "a blue car", "red fox at dusk"])
    pool.run(pool.Config(pool=[str(src)]), build)
    match.run(match.Config(), build)
    balance.run(balance.Config(), build)
    code, out, _ = wit("stats", "--out", build, capsys=capsys)
    assert code == 0 and "stale" not in out
    # the pool reruns with other captions: match and balance were made from the old one
    src2 = write_pool_file(tmp_path / "pool2.parquet", ["a red fox"])
    pool.run(pool.Config(pool=[str(src2)]), build)
    code, out, _ = wit("stats", "--out", build, capsys=capsys)
    lines = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[1:5]}
    assert lines == {"queries": "done", "pool": "done", "match": "stale", "balance": "stale"}, out
    assert "match: pool reran after it; balance: match is stale" in out
    status = catalog.query(build, "SELECT stage, status FROM stages ORDER BY stage").to_pylist()
    assert status == [{"stage": "balance", "status": "stale"}, {"stage": "match", "status": "stale"},
                      {"stage": "pool", "status": "done"}, {"stage": "queries", "status": "done"}]
    assert "<b>Stale:</b> match, balance were made" in report.write_report(build).read_text()
    match.run(match.Config(), build)  # rerun in order: up to date again
    balance.run(balance.Config(), build)
    code, out, _ = wit("stats", "--out", build, capsys=capsys)
    assert "stale" not in out, out


@pytest.mark.usefixtures("ray_cluster")
def test_huge_captions_are_cut_and_counted(build, tmp_path, capsys):
    f = tmp_path / "long.jsonl"
    huge = "ä" * 3_000_000  # a 6 MB "caption"
    f.write_text(json.dumps({"url": "http://example.com/1.jpg", "text": huge}, ensure_ascii=False) + "\n"
                 + json.dumps({"url": "http://example.com/2.jpg", "text": "a short one"}) + "\n")
    code, out, err = wit("pool", "--pool", f, "--out", build, capsys=capsys)
    assert code == 0 and "captions_cut: 1" in out, (out, err)
    lengths = catalog.query(build, "SELECT length(text) AS n FROM pool ORDER BY n").to_pylist()
    assert lengths == [{"n": 11}, {"n": pool.MAX_CAPTION_CHARS}]
    code, out, err = wit("pool", "--pool", f, "--max-caption-chars", "5", "--out", build, capsys=capsys)
    assert code == 0 and "captions_cut: 2" in out
    assert catalog.query(build, "SELECT text FROM pool ORDER BY text").to_pylist() == [
        {"text": "a sho"}, {"text": "äääää"}]
    code, out, err = wit("pool", "--pool", f, "--max-caption-chars", "-1", "--out", build, capsys=capsys)
    assert code == 2 and "--max-caption-chars -1: must be at least 0 (0 = no limit)" in err


# ----------------------------------------------------------------------------------
# A JPEG whose header claims more rows than its scan holds


def _taller_header(data: bytes, height: int) -> bytes:
    """The same JPEG with its frame header claiming `height` rows."""
    from wit_builder.canonical import jpeg_frame
    assert jpeg_frame(data) is not None
    out, i = bytearray(data), 2
    for _ in range(64):
        marker, length = out[i + 1], int.from_bytes(out[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC2):
            out[i + 5:i + 7] = height.to_bytes(2, "big")
            return bytes(out)
        i += 2 + length
    raise AssertionError("no frame header")


def test_a_jpeg_claiming_more_rows_than_its_scan_is_not_stored_with_the_false_size():
    """libjpeg decodes the missing rows as mid-grey without an error; fetch's resizer
    and curate's decoder both refuse the image instead of recording 640 x 960."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    from tests.support.fetch import encode, picture
    from wit_builder.canonical import short_scan, signature_bytes
    from wit_builder.stages.fetch import i2d
    from wit_builder.stages.fetch.resizing import CvTap, Download, hashing_resizer
    good = encode(picture(7, 640, 480), quality=90)
    liar = _taller_header(good, 960)
    with Image.open(io.BytesIO(liar)) as im:
        assert im.size == (640, 960)  # what a header reader believes
    for target in (None, 128):  # full-size decode, and fetch's reduced decode
        tap, stored = CvTap(cv2, target, "border"), {}
        with i2d.patched(cv2=tap):
            resize = hashing_resizer(i2d.resizer(128, "border"), tap, stored)
            out, ok = resize(Download(0, liar)), resize(Download(1, good))
        assert out.img is None and "scan ends" in out.error and "960" in out.error, out.error
        assert ok.img is not None and ok.error is None and set(stored) == {1}
    facts = signature_bytes(liar)
    assert facts["phash"] is None and "scan ends" in facts["error"]
    assert signature_bytes(good)["error"] is None
    # a picture whose own background is the decoder's exact mid-grey (the demo world
    # draws such scenes) is a suspect to the one-row screen, and strict libjpeg clears it
    grey_floor = np.asarray(picture(8, 320, 240)).copy()
    grey_floor[-64:] = 128
    honest = encode(Image.fromarray(grey_floor), quality=90)
    pixels = cv2.imdecode(np.frombuffer(honest, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (pixels[-16:] == 128).all()  # the screen alone would have refused it
    assert short_scan(pixels, honest) is None and signature_bytes(honest)["error"] is None
    tap, stored = CvTap(cv2, 64, "border"), {}
    with i2d.patched(cv2=tap):
        kept = hashing_resizer(i2d.resizer(64, "border"), tap, stored)(Download(2, honest))
    assert kept.img is not None and kept.error is None and set(stored) == {2}
